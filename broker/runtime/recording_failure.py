"""What a recording failure means, shared by the terminal and forward recorders.

Strict (``record: strict``): the first failure is logged, reported (audit, storage state) and
ends the session through ``on_failure``; best effort: logged and reported, the session goes on
unrecorded. :meth:`FailurePolicy.evidence` is what ``session.ended`` lists for the recorder's
files: each one's final chain hash once closed cleanly, else ``incomplete`` and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sessions.recording import RecordingError, RecordingWriter
from sessions.session_end import recording_entry

log = logging.getLogger("conduit.recording")

# (recording id, error, strict, what it was doing): audit + storage state, set by the factory.
Report = Callable[[str, RecordingError, bool, str], None]


def reason_for(exc: BaseException) -> str:
    """What the vendor is told: the operating system's words (``No space left on device``)
    rather than the broker's paths; the full message goes to the log and the audit event."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


class FailurePolicy:
    """Shared by the recorders: what a write failure means (strict: end the session), and
    what the session's end records of them (:meth:`evidence`)."""

    def __init__(
        self,
        name: str,
        *,
        strict: bool,
        on_failure: Callable[[str], None],
        report: Report | None = None,
    ) -> None:
        self._name, self._strict, self._on_failure = name, strict, on_failure
        self._report = report
        self.broken = False
        self.closed = False
        self._done = asyncio.Event()  # set once closing has finished (cleanly or not)
        self._why: str | None = None  # why the recording is incomplete

    def _writers_of(self) -> list[RecordingWriter]:
        raise NotImplementedError

    async def evidence(self, wait_s: float) -> list[dict[str, Any]]:
        """Wait up to ``wait_s`` for closing to finish; then one ``session.ended`` entry
        per file: its final chain hash, or ``incomplete`` and why."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), wait_s)
        entries = []
        for writer in self._writers_of():
            clean = self._done.is_set() and writer.closed and writer.failed is None
            why = None
            if not clean:
                why = self._why or (
                    "recording failed" if self.broken else "not closed when the session ended"
                )
            entries.append(
                recording_entry(
                    writer.recording_id, writer.kind, writer.chain_head if clean else None, why
                )
            )
        return entries

    def _failed(self, exc: RecordingError, doing: str = "writing") -> None:
        """Event loop only: log, audit, and in strict mode end the session."""
        if self.broken:
            return
        self.broken = True
        self._why = f"failed while {doing}: {reason_for(exc)}"
        log.error(
            "recording %s failed while %s: %s (%s)",
            self._name,
            doing,
            exc.message,
            "strict: ending the session" if self._strict else "best effort: not recorded",
        )
        if self._report is not None:
            self._report(self._name, exc, self._strict, doing)
        if self._strict:
            self._on_failure(f"recording failed ({reason_for(exc)}); strict recording is required")

    def _guard(self, action: Callable[[], None]) -> None:
        if self.broken or self.closed:
            return
        try:
            action()
        except RecordingError as exc:
            self._failed(exc)
