"""Recording one SSH channel: an asciicast over a signed, chunked writer, flushed every second.

The policy's ``record`` obligation decides what a recording failure means: ``strict`` — the
channel is refused if the recording cannot start, and the whole session is ended if writing
fails later; ``best_effort`` — the session goes on unrecorded and the failure is audited.
Closing finishes the asciicast, writes the signed manifest and updates the ``recordings`` row,
off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sessions.asciicast import AsciicastRecorder
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.maintenance import MaintenanceService
from sessions.pcap import OpsLogRecorder, PcapRecorder
from sessions.recording import FlushTimer, LocalStore, RecordingError, RecordingWriter, Signer

log = logging.getLogger("conduit.recording")
# Terminal output within 20 ms becomes one asciicast event (bulk output: one JSON line per
# window, not per packet); held-back output reaches the writer within 50 ms.
COALESCE_S = 0.02
PENDING_FLUSH_S = 0.05


class _FailurePolicy:
    """Shared by the recorders: what a write failure means (strict: end the session)."""

    def __init__(self, name: str, *, strict: bool, on_failure: Callable[[str], None]) -> None:
        self._name, self._strict, self._on_failure = name, strict, on_failure
        self.broken = False
        self.closed = False

    def _failed(self, exc: RecordingError) -> None:
        if self.broken:
            return
        self.broken = True
        log.error("recording %s failed: %s", self._name, exc.message)
        if self._strict:
            self._on_failure(f"recording failed ({exc.message}); strict recording is required")

    def _guard(self, action: Callable[[], None]) -> None:
        if self.broken or self.closed:
            return
        try:
            action()
        except RecordingError as exc:
            self._failed(exc)


class ChannelRecorder(_FailurePolicy):
    """Implements the front door's ``Recorder`` protocol for one channel (event loop only)."""

    def __init__(
        self,
        *,
        recording_id: str,
        writer: RecordingWriter,
        cast: AsciicastRecorder,
        strict: bool,
        on_failure: Callable[[str], None],
        finished: Callable[[ChannelRecorder], Any],
    ) -> None:
        super().__init__(recording_id, strict=strict, on_failure=on_failure)
        self.recording_id, self.writer, self.cast = recording_id, writer, cast
        self._finished = finished
        self.timer = FlushTimer(writer, on_error=self._failed)
        self.timer.start()
        self._pending_timer: asyncio.TimerHandle | None = None

    def output(self, data: bytes) -> None:
        self._guard(lambda: self.cast.output(data))
        if self.cast.pending and self._pending_timer is None:
            self._pending_timer = asyncio.get_running_loop().call_later(
                PENDING_FLUSH_S, self._flush_pending
            )

    def _flush_pending(self) -> None:
        self._pending_timer = None
        self._guard(self.cast.flush_pending)

    def input(self, data: bytes) -> None:
        self._guard(lambda: self.cast.input(data))

    def resize(self, width: int, height: int) -> None:
        self._guard(lambda: self.cast.resize(width, height))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._pending_timer = None
        self._guard(self.cast.flush_pending)
        self.closed = True
        asyncio.get_running_loop().create_task(self._close(reason))

    async def _close(self, reason: str) -> None:
        await self.timer.aclose()
        with contextlib.suppress(RecordingError):
            await asyncio.to_thread(self.cast.close, reason)
        await asyncio.to_thread(self._finished, self)


class RecorderFactory:
    """Creates a :class:`ChannelRecorder` per PTY/exec channel."""

    def __init__(
        self,
        root: Path,
        signer: Signer,
        clock: Clock,
        maintenance: MaintenanceService,
        audit: AuditLog,
        *,
        record_input: bool,
    ) -> None:
        self._store = LocalStore(root)
        self._root, self._signer, self._clock = root, signer, clock
        self._maintenance, self._audit, self._record_input = maintenance, audit, record_input

    async def __call__(
        self,
        session_id: str,
        channel: int,
        width: int,
        height: int,
        title: str,
        *,
        strict: bool,
        on_failure: Callable[[str], None],
        pty: bool = True,
    ) -> ChannelRecorder | None:
        """A recorder, or None in best-effort mode when it cannot start (audited).

        Without a PTY (an exec channel) output is recorded losslessly: bytes that are not UTF-8
        text become base64 ``"b"`` events (:mod:`sessions.asciicast`).

        The set-up (directory, first files and their fsyncs, the database row) runs in a worker
        thread: on the event loop it would stall every other session's relay meanwhile.
        Raises :class:`RecordingError` in strict mode when it cannot start.
        """
        recording_id = f"{session_id}-{channel}"

        def prepare() -> tuple[RecordingWriter, AsciicastRecorder, str] | None:
            try:
                writer = RecordingWriter(
                    self._store,
                    recording_id,
                    kind="asciicast",
                    signer=self._signer,
                    clock=self._clock,
                    meta={"session": session_id, "channel": channel, "title": title},
                )
                cast = AsciicastRecorder(
                    writer,
                    width,
                    height,
                    record_input=self._record_input,
                    clock=self._clock,
                    title=title,
                    env={"TERM": "xterm-256color"},
                    coalesce_s=COALESCE_S,
                    lossless_binary=not pty,
                )
                row_id = self._maintenance.add_recording(
                    session_id, fmt="asciicast", path=str(self._root / recording_id)
                )
            except (RecordingError, OSError) as exc:
                self._start_failed(session_id, exc, strict=strict)
                return None
            return writer, cast, row_id

        prepared = await asyncio.to_thread(prepare)
        if prepared is None:
            return None
        writer, cast, row_id = prepared

        def finished(recorder: ChannelRecorder) -> None:
            manifest = self._root / recording_id / "manifest.json"
            self._maintenance.finish_recording(
                row_id,
                manifest_path=str(manifest) if manifest.exists() else None,
                chain_head=writer.chain_head,
                size=writer.size,
            )

        return ChannelRecorder(
            recording_id=recording_id,
            writer=writer,
            cast=cast,
            strict=strict,
            on_failure=on_failure,
            finished=finished,
        )

    async def tcp(
        self,
        session_id: str,
        number: int,
        *,
        client: tuple[str, int],
        server: tuple[str, int],
        operations: bool,
        strict: bool,
        on_failure: Callable[[str], None],
    ) -> TcpRecording | None:
        """pcap (and, for Modbus, an operations log) of one forwarded connection.

        Set up in a worker thread, as :meth:`__call__`; None or RecordingError likewise.
        """
        base = f"{session_id}-tcp{number}"
        rows: dict[str, str] = {}
        ops: OpsLogRecorder | None = None
        ops_writer: RecordingWriter | None = None

        def prepare() -> tuple[PcapRecorder, RecordingWriter] | None:
            nonlocal ops, ops_writer
            try:
                pcap_writer = self._writer(
                    base, "pcap", {"session": session_id, "connection": number}
                )
                pcap = PcapRecorder(pcap_writer, client=client, server=server, clock=self._clock)
                rows[pcap_writer.recording_id] = self._maintenance.add_recording(
                    session_id, fmt="pcap", path=str(self._root / base)
                )
                if operations:
                    ops_writer = self._writer(f"{base}-ops", "ops_jsonl", {"session": session_id})
                    ops = OpsLogRecorder(ops_writer, self._clock)
                    rows[ops_writer.recording_id] = self._maintenance.add_recording(
                        session_id, fmt="ops_jsonl", path=str(self._root / f"{base}-ops")
                    )
            except (RecordingError, OSError) as exc:
                self._start_failed(session_id, exc, strict=strict)
                return None
            return pcap, pcap_writer

        prepared = await asyncio.to_thread(prepare)
        if prepared is None:
            return None
        pcap, pcap_writer = prepared

        def finished(writer: RecordingWriter, reason: str) -> None:
            manifest = self._root / writer.recording_id / "manifest.json"
            self._maintenance.finish_recording(
                rows[writer.recording_id],
                manifest_path=str(manifest) if manifest.exists() else None,
                chain_head=writer.chain_head,
                size=writer.size,
            )

        return TcpRecording(
            pcap,
            pcap_writer,
            ops,
            ops_writer,
            strict=strict,
            on_failure=on_failure,
            finished=finished,
        )

    def _start_failed(self, session_id: str, exc: Exception, *, strict: bool) -> None:
        """Audit a recording that could not start; in strict mode raise (refuse the channel)."""
        self._audit.append(
            "recording.failed",
            actor="system",
            outcome="error",
            subject=f"session:{session_id}",
            details={"error": str(exc)[:300], "strict": strict},
        )
        if strict:
            raise RecordingError(f"recording could not start: {exc}") from exc

    def _writer(self, recording_id: str, kind: str, meta: dict[str, Any]) -> RecordingWriter:
        return RecordingWriter(
            self._store, recording_id, kind=kind, signer=self._signer, clock=self._clock, meta=meta
        )


class TcpRecording(_FailurePolicy):
    """One forwarded TCP connection's recordings: pcap, plus a JSONL operations log (Modbus).

    Writes come from the event loop; each writer has its own flush timer. A write failure in
    strict mode calls ``on_failure`` (the relay then ends the session).
    """

    def __init__(
        self,
        pcap: PcapRecorder,
        pcap_writer: RecordingWriter,
        ops: OpsLogRecorder | None,
        ops_writer: RecordingWriter | None,
        *,
        strict: bool,
        on_failure: Callable[[str], None],
        finished: Callable[[RecordingWriter, str], None],
    ) -> None:
        super().__init__(pcap_writer.recording_id, strict=strict, on_failure=on_failure)
        self.pcap, self.ops = pcap, ops
        self._writers = [w for w in (pcap_writer, ops_writer) if w is not None]
        self._finished = finished
        self._timers = [FlushTimer(w, on_error=self._failed) for w in self._writers]
        for timer in self._timers:
            timer.start()

    def client_data(self, data: bytes) -> None:
        self._guard(lambda: self.pcap.client_data(data))

    def server_data(self, data: bytes) -> None:
        self._guard(lambda: self.pcap.server_data(data))

    def operation(self, record: Mapping[str, object]) -> None:
        ops = self.ops
        if ops is not None:
            self._guard(lambda: ops.record(record))

    async def aclose(self, reason: str, *, closed_by: str = "client") -> None:
        if self.closed:
            return
        self.closed = True
        for timer in self._timers:
            await timer.aclose()

        def close_all() -> None:
            with contextlib.suppress(RecordingError):
                self.pcap.close(reason, closed_by=closed_by)
            if self.ops is not None:
                with contextlib.suppress(RecordingError):
                    self.ops.close(reason)
            for writer in self._writers:
                self._finished(writer, reason)

        await asyncio.to_thread(close_all)
