"""Recording one SSH channel: an asciicast over a signed, chunked writer, flushed every second.

The policy's ``record`` obligation decides what a recording failure means: ``strict`` — the
channel is refused (and the session ended) if the recording cannot start, and the whole session
is ended if writing or closing fails later; ``best_effort`` — the session goes on unrecorded.
Either way every failure is audited (``recording.failed``), logged and reported to the
broker's :class:`~broker.runtime.recording_storage.RecordingStorage` (alert, ``/healthz``).

Starting is fail-closed: a strict recording first needs storage to pass its probe (free space
above the minimum, a probe write), and every recording's first chunk (the asciicast or pcap
header) is on disk before the channel may relay a byte, so a full or read-only disk refuses
the session instead of letting it run unrecorded.

Closing finishes the asciicast, writes the signed manifest and updates the ``recordings`` row,
off the event loop; a clean close is audited as ``recording.closed`` with the final chain hash
(:mod:`sessions.recording_end`), which is what lets ``conduit verify`` tell a truncated
recording from a crash.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from broker.runtime.recording_failure import FailurePolicy, Report, reason_for
from broker.runtime.recording_storage import RecordingStorage
from sessions.asciicast import AsciicastRecorder
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.maintenance import MaintenanceService
from sessions.pcap import OpsLogRecorder, PcapRecorder
from sessions.recording import FlushTimer, LocalStore, RecordingError, RecordingWriter, Signer
from sessions.recording_end import RECORDING_CLOSED, closed_details, subject

log = logging.getLogger("conduit.recording")
# Terminal output within 20 ms becomes one asciicast event (bulk output: one JSON line per
# window, not per packet); held-back output reaches the writer within 50 ms.
COALESCE_S = 0.02
PENDING_FLUSH_S = 0.05


class ChannelRecorder(FailurePolicy):
    """Implements the front door's ``Recorder`` protocol for one channel (event loop only)."""

    def __init__(
        self,
        *,
        recording_id: str,
        writer: RecordingWriter,
        cast: AsciicastRecorder,
        strict: bool,
        on_failure: Callable[[str], None],
        finished: Callable[[ChannelRecorder, str], Any],
        report: Report | None = None,
    ) -> None:
        super().__init__(recording_id, strict=strict, on_failure=on_failure, report=report)
        self.recording_id, self.writer, self.cast = recording_id, writer, cast
        self._finished = finished
        self.timer = FlushTimer(writer, on_error=self._failed)
        self._writer = writer
        self.timer.start()
        self._pending_timer: asyncio.TimerHandle | None = None

    def _writers_of(self) -> list[RecordingWriter]:
        return [self._writer]

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

    async def finish(self, reason: str) -> bool:
        """Flush, sign the manifest and update the row; True if the recording is complete.

        A failure here is handled like a write failure (logged, audited; strict: the session
        is ended, so the vendor is told). Only the first call does the work.
        """
        if self.closed:
            return False
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._pending_timer = None
        self._guard(self.cast.flush_pending)
        self.closed = True
        try:
            await self.timer.aclose()
            if not self.broken:
                try:
                    await asyncio.to_thread(self.cast.close, reason)
                except RecordingError as exc:
                    self._failed(exc, "closing")
            await asyncio.to_thread(self._finished, self, reason)
        finally:
            self._done.set()
        return not self.broken


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
        storage: RecordingStorage | None = None,
    ) -> None:
        self._store = LocalStore(root)
        self._root, self._signer, self._clock = root, signer, clock
        self._maintenance, self._audit, self._record_input = maintenance, audit, record_input
        self._storage = storage

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

        The set-up (storage probe, directory, the header as the first chunk and their fsyncs,
        the database row) runs in a worker thread: on the event loop it would stall every other
        session's relay meanwhile. Raises :class:`RecordingError` in strict mode when it cannot
        start (its message is meant for the vendor).
        """
        recording_id = f"{session_id}-{channel}"

        def prepare() -> tuple[RecordingWriter, AsciicastRecorder, str] | None:
            try:
                self._check_storage(strict)
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
                writer.flush()  # the header is on disk before the channel relays anything
                row_id = self._maintenance.add_recording(
                    session_id, fmt="asciicast", path=str(self._root / recording_id)
                )
            except (RecordingError, OSError) as exc:
                self._start_failed(session_id, recording_id, exc, strict=strict)
                return None
            return writer, cast, row_id

        prepared = await asyncio.to_thread(prepare)
        if prepared is None:
            return None
        writer, cast, row_id = prepared

        def finished(recorder: ChannelRecorder, reason: str) -> None:
            self._finish(session_id, row_id, writer, reason)

        return ChannelRecorder(
            recording_id=recording_id,
            writer=writer,
            cast=cast,
            strict=strict,
            on_failure=on_failure,
            finished=finished,
            report=functools.partial(self._report, session_id),
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
        well_known_port: int | None = None,
    ) -> TcpRecording | None:
        """pcap (and, for inspected OT protocols, an operations log) of one forwarded connection.

        ``well_known_port`` (the protocol's: 502, 102, 44818) is written as the server port in
        the pcap so stock tshark/Wireshark decode it without options; the asset's real port is
        kept in the recording's metadata (``server_port``). Set up in a worker thread, as
        :meth:`__call__`; None or RecordingError likewise.
        """
        pcap_server = (server[0], well_known_port or server[1])
        meta: dict[str, Any] = {"session": session_id, "connection": number}
        meta.update(server_host=server[0], server_port=server[1], pcap_server_port=pcap_server[1])
        base = f"{session_id}-tcp{number}"
        rows: dict[str, str] = {}
        ops: OpsLogRecorder | None = None
        ops_writer: RecordingWriter | None = None

        def prepare() -> tuple[PcapRecorder, RecordingWriter] | None:
            nonlocal ops, ops_writer
            try:
                self._check_storage(strict)
                pcap_writer = self._writer(base, "pcap", meta)
                pcap = PcapRecorder(
                    pcap_writer, client=client, server=pcap_server, clock=self._clock
                )
                pcap_writer.flush()  # the pcap header is on disk before any byte is relayed
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
                self._start_failed(session_id, base, exc, strict=strict)
                return None
            return pcap, pcap_writer

        prepared = await asyncio.to_thread(prepare)
        if prepared is None:
            return None
        pcap, pcap_writer = prepared

        def finished(writer: RecordingWriter, reason: str) -> None:
            self._finish(session_id, rows[writer.recording_id], writer, reason)

        return TcpRecording(
            pcap,
            pcap_writer,
            ops,
            ops_writer,
            strict=strict,
            on_failure=on_failure,
            finished=finished,
            report=functools.partial(self._report, session_id),
        )

    def _check_storage(self, strict: bool) -> None:
        """Strict mode starts only on storage that passes its probe (free space, a write)."""
        if strict and self._storage is not None:
            self._storage.require()

    def _finish(self, session_id: str, row_id: str, writer: RecordingWriter, reason: str) -> None:
        """Worker thread: update the row; audit a clean end with its final chain hash."""
        manifest = self._root / writer.recording_id / "manifest.json"
        self._maintenance.finish_recording(
            row_id,
            manifest_path=str(manifest) if manifest.exists() else None,
            chain_head=writer.chain_head,
            size=writer.size,
        )
        if writer.closed and writer.failed is None:
            self._audit.append(
                RECORDING_CLOSED,
                actor="system",
                outcome="ok",
                subject=subject(writer.recording_id),
                details=closed_details(
                    session_id=session_id,
                    recording_id=writer.recording_id,
                    kind=writer.kind,
                    chunks=writer.chunks,
                    size=writer.size,
                    final_chain=writer.chain_head,
                    end_reason=reason,
                ),
            )

    def _report(
        self, session_id: str, recording_id: str, exc: RecordingError, strict: bool, doing: str
    ) -> None:
        """Event loop: a running recording failed: audited (posted), storage marked."""
        if self._storage is not None:
            self._storage.failed(f"a recording failed while {doing}: {reason_for(exc)}")
        self._audit.post(
            "recording.failed",
            actor="system",
            outcome="error",
            subject=f"session:{session_id}",
            details={
                "recording": recording_id,
                "while": doing,
                "error": exc.message[:300],
                "strict": strict,
            },
        )

    def _start_failed(
        self, session_id: str, recording_id: str, exc: Exception, *, strict: bool
    ) -> None:
        """Worker thread: a recording could not start. Logged, audited, storage marked; in
        strict mode raise (the channel is refused and the session ended)."""
        message = getattr(exc, "message", None) or str(exc)
        log.error(
            "recording %s could not start: %s (%s)",
            recording_id,
            message,
            "strict: session refused" if strict else "best effort: not recorded",
        )
        if self._storage is not None and getattr(exc, "code", "") != "storage_failing":
            self._storage.failed(f"a recording could not start: {reason_for(exc)}")
        self._audit.append(
            "recording.failed",
            actor="system",
            outcome="error",
            subject=f"session:{session_id}",
            details={
                "recording": recording_id,
                "while": "starting",
                "error": message[:300],
                "strict": strict,
            },
        )
        if strict:
            raise RecordingError(
                f"recording could not start ({reason_for(exc)}); strict recording is required"
            ) from exc

    def _writer(self, recording_id: str, kind: str, meta: dict[str, Any]) -> RecordingWriter:
        return RecordingWriter(
            self._store, recording_id, kind=kind, signer=self._signer, clock=self._clock, meta=meta
        )


class TcpRecording(FailurePolicy):
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
        report: Report | None = None,
    ) -> None:
        super().__init__(
            pcap_writer.recording_id, strict=strict, on_failure=on_failure, report=report
        )
        self.pcap, self.ops = pcap, ops
        self._writers = [w for w in (pcap_writer, ops_writer) if w is not None]
        self._finished = finished
        self._timers = [FlushTimer(w, on_error=self._failed) for w in self._writers]
        for timer in self._timers:
            timer.start()

    def _writers_of(self) -> list[RecordingWriter]:
        return list(self._writers)

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

        def close_all() -> RecordingError | None:
            error: RecordingError | None = None
            if not self.broken:
                try:
                    self.pcap.close(reason, closed_by=closed_by)
                except RecordingError as exc:
                    error = exc
                if self.ops is not None:
                    try:
                        self.ops.close(reason)
                    except RecordingError as exc:
                        error = error or exc
            for writer in self._writers:
                self._finished(writer, reason)
            return error

        try:
            error = await asyncio.to_thread(close_all)
            if error is not None:
                self._failed(error, "closing")
        finally:
            self._done.set()
