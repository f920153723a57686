"""asciicast v2 for PTY and exec sessions, written through a :class:`RecordingWriter`.

Format (https://docs.asciinema.org/manual/asciicast/v2/): a JSON header line
``{"version": 2, "width", "height", "timestamp", ["title"], ["env"]}`` followed by one event per
line, ``[seconds_since_start, code, text]`` with code ``"o"`` (output), ``"i"`` (input, only if
the policy asks for it) or ``"r"`` (resize, ``"COLSxROWS"``). Each line is one
:meth:`RecordingWriter.write`, so every chunk ends at a line boundary and any prefix of chunks
(e.g. after a crash) is itself a valid ``.cast`` file that ``asciinema cat`` prints.

Bytes are decoded as UTF-8 with an incremental decoder per direction: a multi-byte character
split across reads is emitted whole with the later read; invalid bytes become U+FFFD.
Secrets: ``env`` is reduced to ``TERM`` and ``SHELL``; input (which may contain passwords typed
at prompts) is recorded only with ``record_input=True``.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping

import orjson

from sessions.clock import Clock
from sessions.errors import ValidationError
from sessions.recording import RecordingWriter

ENV_KEYS = ("TERM", "SHELL")


COALESCE_BYTES = 256 * 1024


class AsciicastRecorder:
    """Turns terminal I/O into asciicast v2 lines. Use from one thread (the event loop).

    The constructor writes the header. Event times are seconds since construction by the
    injected ``clock``, rounded to microseconds and never decreasing (a clock stepping back
    repeats the last time). :class:`~sessions.recording.RecordingError` from the writer
    propagates (strict mode: end the session).
    """

    def __init__(
        self,
        writer: RecordingWriter,
        width: int,
        height: int,
        *,
        record_input: bool = False,
        clock: Clock,
        title: str | None = None,
        env: Mapping[str, str] | None = None,
        coalesce_s: float = 0.0,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValidationError(
                f"asciicast: terminal size {width}x{height} is invalid", code="invalid_size"
            )
        self._writer = writer
        self._clock = clock
        self.record_input = record_input
        self._start = clock.now()
        self._last_t = 0.0
        self._out = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._coalesce_s = coalesce_s
        # Output arriving within coalesce_s of the first pending piece becomes one event:
        # bulk output (a download to the terminal) costs one JSON line per window, not per
        # packet. The caller emits what is pending with flush_pending() (see ``pending``).
        self._pending: list[str] = []
        self._pending_size = 0
        self._pending_t = 0.0
        self._in = codecs.getincrementaldecoder("utf-8")(errors="replace")
        header: dict[str, object] = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(self._start.timestamp()),
        }
        if title:
            header["title"] = title
        kept = {k: v for k, v in (env or {}).items() if k in ENV_KEYS}
        if kept:
            header["env"] = kept
        self._line(header)

    def output(self, data: bytes) -> None:
        """Record terminal output (stdout and stderr of an exec) as ``"o"`` events.

        With ``coalesce_s`` > 0, output is merged for up to that long (or
        :data:`COALESCE_BYTES`); call :meth:`flush_pending` when :attr:`pending` stays true (the
        channel recorder does, within 50 ms), so nothing waits longer before reaching the writer.
        """
        text = self._out.decode(data)
        if not text:
            return
        if self._coalesce_s <= 0:
            self._event("o", text)
            return
        t = self._now()
        if self._pending and (
            t - self._pending_t > self._coalesce_s
            or self._pending_size + len(text) > COALESCE_BYTES
        ):
            self.flush_pending()
        if not self._pending:
            self._pending_t = t
        self._pending.append(text)
        self._pending_size += len(text)

    @property
    def pending(self) -> bool:
        """Output is held back for coalescing (call :meth:`flush_pending` soon)."""
        return bool(self._pending)

    def flush_pending(self) -> None:
        """Write the held-back output as one ``"o"`` event at the time of its first piece."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._line([self._pending_t, "o", text])

    def input(self, data: bytes) -> None:
        """Record keyboard input as ``"i"`` events; a no-op unless ``record_input``."""
        if self.record_input:
            self.flush_pending()
            self._event("i", self._in.decode(data))

    def resize(self, width: int, height: int) -> None:
        """Record a window change as an ``"r"`` event ``"COLSxROWS"``."""
        if width > 0 and height > 0:
            self.flush_pending()
            self._event("r", f"{width}x{height}")

    def finish(self) -> None:
        """Emit what the decoders still hold (an incomplete character becomes U+FFFD).

        Call once before ``writer.close``; further output is still accepted.
        """
        self.output(b"")  # nothing new; keeps the order of what the decoder still holds
        tail = self._out.decode(b"", final=True)
        if tail:
            self._pending.append(tail)
            self._pending_size += len(tail)
            if len(self._pending) == 1:
                self._pending_t = self._now()
        self.flush_pending()
        if self.record_input:
            self._event("i", self._in.decode(b"", final=True))

    def close(self, reason: str) -> None:
        """:meth:`finish`, then ``writer.close(reason)`` (signed manifest; blocking disk I/O).

        Stop the writer's :class:`~sessions.recording.FlushTimer` first; from the event loop
        prefer ``await asyncio.to_thread(recorder.close, reason)``. Raises
        :class:`~sessions.recording.RecordingError` like the writer does.
        """
        self.finish()
        self._writer.close(reason)

    def _now(self) -> float:
        elapsed = (self._clock.now() - self._start).total_seconds()
        self._last_t = max(self._last_t, round(elapsed, 6))
        return self._last_t

    def _event(self, code: str, text: str) -> None:
        if not text:
            return
        self._line([self._now(), code, text])

    def _line(self, obj: object) -> None:
        # orjson: raw UTF-8 (not \uXXXX for every non-ASCII character), compact, and 10-20x
        # faster than json.dumps on bulk output, which is what recording costs per byte.
        self._writer.write(orjson.dumps(obj) + b"\n")
