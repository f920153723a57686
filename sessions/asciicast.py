"""asciicast v2 for PTY and exec sessions, written through a :class:`RecordingWriter`.

Format (https://docs.asciinema.org/manual/asciicast/v2/): a JSON header line
``{"version": 2, "width", "height", "timestamp", ["title"], ["env"]}`` followed by one event per
line, ``[seconds_since_start, code, text]`` with code ``"o"`` (output), ``"i"`` (input, only if
the policy asks for it) or ``"r"`` (resize, ``"COLSxROWS"``). Each line is one
:meth:`RecordingWriter.write`, so every chunk ends at a line boundary and any prefix of chunks
(e.g. after a crash) is itself a valid ``.cast`` file that ``asciinema cat`` prints.

Bytes are decoded as UTF-8 with an incremental decoder per direction: a multi-byte character
split across reads is emitted whole with the later read; invalid bytes become U+FFFD.

Exec channels without a PTY (``lossless_binary=True``) carry arbitrary bytes (``cat fw.bin``):
there, output that is not UTF-8 text, or holds a NUL, is recorded exactly, as ``"b"`` events
whose text is the base64 of the bytes, announced once by a ``"m"`` marker. Players and
``asciinema cat`` skip ``"b"`` events (they show ``"o"`` only); :func:`output_bytes` gives back
the exact output stream. Lossless, and far cheaper than JSON-escaping binary (6 bytes per NUL).
Secrets: ``env`` is reduced to ``TERM`` and ``SHELL``; input (which may contain passwords typed
at prompts) is recorded only with ``record_input=True``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from collections.abc import Iterable, Mapping

import orjson

from sessions.clock import Clock
from sessions.errors import ValidationError
from sessions.recording import RecordingWriter

ENV_KEYS = ("TERM", "SHELL")


COALESCE_BYTES = 256 * 1024
BINARY_EVENT = "b"
BINARY_MARKER = 'binary output follows: exact bytes in base64 "b" events'


def _text_suffix_start(data: bytes, bad: int) -> int:
    """Where the NUL-free UTF-8 text at the end of ``data`` begins, after position ``bad``
    (it may end in an unfinished character); looks at the last 4 KiB at most."""
    i = max(bad + 1, len(data) - 4096, data.rfind(b"\x00") + 1)
    while i < len(data):
        try:
            codecs.utf_8_decode(data[i:], "strict", False)
        except UnicodeDecodeError as exc:
            i += exc.end  # past the invalid sequence
        else:
            return i
    return len(data)


def output_bytes(lines: Iterable[bytes | str]) -> bytes:
    """The exact output of a recording: ``"o"`` text as UTF-8 and ``"b"`` events decoded.

    ``lines`` are the ``.cast`` file's lines, header first. Raises ValueError on a malformed
    line or base64.
    """
    out = bytearray()
    for number, line in enumerate(lines):
        if number == 0 or not line.strip():
            continue
        event = json.loads(line)
        if not isinstance(event, list) or len(event) != 3 or not isinstance(event[2], str):
            raise ValueError(f"line {number + 1}: not an asciicast event")
        if event[1] == "o":
            out += event[2].encode()
        elif event[1] == BINARY_EVENT:
            try:
                out += base64.b64decode(event[2], validate=True)
            except binascii.Error as exc:
                raise ValueError(f"line {number + 1}: bad base64: {exc}") from None
    return bytes(out)


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
        lossless_binary: bool = False,
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
        self.lossless_binary = lossless_binary
        self._held = b""  # lossless mode: an incomplete UTF-8 character at the end of a read
        self._binary: bytearray = bytearray()  # lossless mode: held-back binary output
        self._binary_t = 0.0
        self._marked = False
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
        """Record terminal output (stdout and stderr of an exec) as ``"o"`` events (in
        lossless mode, output that is not NUL-free UTF-8 as base64 ``"b"`` events).

        With ``coalesce_s`` > 0, output is merged for up to that long (or
        :data:`COALESCE_BYTES`); call :meth:`flush_pending` when :attr:`pending` stays true (the
        channel recorder does, within 50 ms), so nothing waits longer before reaching the writer.
        """
        if self.lossless_binary:
            self._output_lossless(data)
            return
        self._text(self._out.decode(data))

    def _text(self, text: str) -> None:
        if not text:
            return
        self._flush_binary()  # keep the order: binary output held back comes first
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

    def _output_lossless(self, data: bytes) -> None:
        """Text head, binary middle, text tail: the text around binary stays playable."""
        data, self._held = self._held + data, b""
        nul = data.find(b"\x00")
        scope = data if nul < 0 else data[:nul]
        try:
            text, used = codecs.utf_8_decode(scope, "strict", False)
            bad = -1 if nul < 0 else used  # bytes from `used` to the NUL: an unfinished char
        except UnicodeDecodeError as exc:
            text, bad = scope[: exc.start].decode(), exc.start
        self._text(text)
        if bad < 0:
            self._held = data[used:]  # an unfinished character, completed by the next read
            return
        end = _text_suffix_start(data, bad)
        self._output_binary(data[bad:end])
        tail = data[end:]
        text, used = codecs.utf_8_decode(tail, "strict", False)  # valid by construction
        self._held = tail[used:]
        self._text(text)

    def _output_binary(self, data: bytes) -> None:
        self._flush_text()
        if not self._marked:
            self._marked = True
            self._event("m", BINARY_MARKER)
        t = self._now()
        if self._binary and (
            self._coalesce_s <= 0
            or t - self._binary_t > self._coalesce_s
            or len(self._binary) + len(data) > COALESCE_BYTES
        ):
            self._flush_binary()
        if not self._binary:
            self._binary_t = t
        self._binary += data
        if self._coalesce_s <= 0:
            self._flush_binary()

    def _flush_binary(self) -> None:
        if self._binary:
            encoded = binascii.b2a_base64(self._binary, newline=False).decode("ascii")
            self._binary = bytearray()
            self._line([self._binary_t, BINARY_EVENT, encoded])

    @property
    def pending(self) -> bool:
        """Output is held back for coalescing (call :meth:`flush_pending` soon)."""
        return bool(self._pending) or bool(self._binary)

    def flush_pending(self) -> None:
        """Write the held-back output as one event at the time of its first piece."""
        self._flush_binary()  # at most one kind is held back at a time
        self._flush_text()

    def _flush_text(self) -> None:
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
        """Emit what the decoders still hold (an incomplete character becomes U+FFFD, or in
        lossless mode its exact bytes).

        Call once before ``writer.close``; further output is still accepted.
        """
        self.output(b"")  # nothing new; keeps the order of what the decoder still holds
        if self._held:
            held, self._held = self._held, b""
            self._output_binary(held)
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
