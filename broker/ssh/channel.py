"""One vendor SSH channel (shell, exec or the sftp subsystem), relayed to one asset command.

The vendor's side of a :class:`broker.core.asset_link.AssetCommand`: PTY (with window
changes), exec (exit status and signals), the sftp subsystem and ``scp`` pass through with flow
control; input that arrives before the asset answers is held (up to :data:`MAX_PENDING_INPUT`).
Terminal channels are recorded (asciicast); file transfers are audited
(``session.file_transfer``). The exit status reaches the vendor once the recording is
complete, so a strict recording that fails to close ends the session instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import asyncssh

from broker.core.asset_link import GRACE, AssetCommand, error_text
from broker.core.session import MaintenanceSession, Recorder
from broker.gateway.channel import AgentUnavailable, ChannelRefused
from sessions.access import AccessDenied
from sessions.recording import RecordingError
from sessions.session_end import EndCode
from sessions.transfer_audit import TransferAuditor, TransferEvent, auditor_for

if TYPE_CHECKING:
    from broker.ssh.vendor import VendorConnection

log = logging.getLogger("conduit.ssh")
MAX_PENDING_INPUT = 1 << 20


class VendorChannel(asyncssh.SSHServerSession[bytes]):
    """One vendor channel relayed to one asset channel. Event-loop confined."""

    def __init__(self, vendor: VendorConnection, number: int) -> None:
        self.vendor, self.number = vendor, number
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.asset: AssetCommand | None = None  # the running asset command, until stopped
        self.pty: tuple[str, tuple[int, int, int, int], Any] | None = None
        self.command: str | None = None
        self.subsystem: str | None = None
        self.pending: list[bytes] = []
        self.pending_eof = False
        self.recorder: Recorder | None = None
        self.transfers: TransferAuditor | None = None
        self.done = False

    @property
    def session(self) -> MaintenanceSession | None:
        return self.vendor.session

    # -- requests from the vendor
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        self.vendor.channels.add(self)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        self.pty = (term_type, term_size, term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        self.transfers = auditor_for(None, command, self._transferred)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return False
        self.subsystem = subsystem
        self.transfers = auditor_for(subsystem, None, self._transferred)
        return True

    def _transferred(self, event: TransferEvent) -> None:
        """One file moved (sftp/scp): audited without blocking the relay."""
        s = self.session.record if self.session is not None else None
        self.vendor.deps.audit.post(
            "session.file_transfer",
            actor=s.user_id if s else "unknown",
            outcome="ok" if event.complete else "error",
            subject=f"session:{s.id}" if s else None,
            details={**dataclasses.asdict(event), "asset": s.asset if s else None},
        )

    @property
    def kind(self) -> str:
        """``sftp`` for file-transfer channels (sftp subsystem, scp, an exec'd sftp-server)."""
        return "sftp" if self.transfers is not None else "ssh"

    def session_started(self) -> None:
        try:
            session = self.vendor.signed_in_session()
        except AccessDenied as exc:
            self.refuse(f"access denied: {exc.message}")
            return
        session.own(self._start(session))

    async def _start(self, session: MaintenanceSession) -> None:
        try:
            await session.authorize(self.kind)
            if self.kind == "ssh" and not await self._start_recording(session):
                return
            assert session.link is not None
            command = await session.link.open_command(
                self,
                term=(self.pty[0], self.pty[1]) if self.pty else None,
                command=self.command,
                subsystem=self.subsystem,
            )
        except AccessDenied as exc:
            why = "; ".join(exc.reasons) or exc.message
            self._refused(session, EndCode.AUTHORIZATION_REFUSED, f"access denied: {why}")
            return
        except (ChannelRefused, AgentUnavailable) as exc:
            self._refused(
                session, EndCode.ASSET_UNREACHABLE, f"cannot reach the asset: {exc.message}"
            )
            return
        except (asyncssh.Error, OSError) as exc:
            why = error_text(exc)
            self._refused(session, EndCode.ASSET_UNREACHABLE, f"cannot reach the asset: {why}")
            return
        except Exception as exc:  # e.g. strict recording could not start
            log.exception("starting channel failed")
            self.refuse(f"session refused: {error_text(exc)}")
            return
        session.channel_started()
        self.asset = command
        if self.done:  # the session ended while the asset was starting the command
            self._stop_asset(session.ended or "channel closed")
            return
        self._relay_pending(command)

    async def _start_recording(self, session: MaintenanceSession) -> bool:
        width, height = (self.pty[1][0], self.pty[1][1]) if self.pty else (80, 24)
        width, height = width or 80, height or 24  # a PTY may report 0x0 (unknown)
        try:
            self.recorder = await session.terminal_recorder(
                self.number, width, height, pty=self.pty is not None
            )
        except RecordingError as exc:  # strict: refused, and the session ends with it
            self.refuse(f"session refused: {exc.message}")
            session.recording_refused(exc.message)
            return False
        return True

    def _refused(self, session: MaintenanceSession, code: str, message: str) -> None:
        """Refuse this channel; the session remembers why (the user may leave next)."""
        session.channel_refused(code, message)
        self.refuse(message)

    def _relay_pending(self, command: AssetCommand) -> None:
        chan = command.chan
        if chan is None:
            return
        for data in self.pending:
            chan.write(data)
        self.pending.clear()
        if self.pending_eof:
            chan.write_eof()

    def refuse(self, message: str) -> None:
        if self.chan is None or self.done:
            return
        self.done = True
        with contextlib.suppress(Exception):
            self.chan.write_stderr(f"conduit: {message}\r\n".encode())
            self.chan.exit(1)

    def terminate(self, reason: str) -> None:
        """The session ended: one line to the vendor, close this channel, stop its asset
        command (signalled first if it still runs: :meth:`AssetLink.stop`)."""
        if self.transfers is not None:
            self.transfers.finish()
        self._finish_recording(reason)
        self._stop_asset(reason)
        if not self.done:
            self.refuse(f"session ended: {reason}")

    def _finish_recording(self, reason: str) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None and self.session is not None:
            self.session.own(_finish(recorder, reason))

    def _stop_asset(self, reason: str) -> None:
        command, self.asset = self.asset, None
        session = self.session
        if command is not None and session is not None and session.link is not None:
            session.link.stop(command, self.number, reason)

    @property
    def _asset_chan(self) -> asyncssh.SSHClientChannel[bytes] | None:
        return self.asset.chan if self.asset is not None else None

    # -- data
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.session is not None:
            self.session.activity(up=len(data))
        if self.recorder is not None and self.vendor.deps.settings.record_input:
            self.recorder.input(data)
        chan = self._asset_chan
        if chan is not None:
            chan.write(data)
        elif sum(map(len, self.pending)) + len(data) <= MAX_PENDING_INPUT:
            self.pending.append(data)
        else:
            return  # dropped: not seen by the asset, so not audited either
        if self.transfers is not None:
            self.transfers.from_client(data)

    def eof_received(self) -> bool:
        chan = self._asset_chan
        if chan is not None:
            chan.write_eof()
        else:
            self.pending_eof = True
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        chan = self._asset_chan
        if chan is not None:
            chan.change_terminal_size(width, height, pixwidth, pixheight)
        if self.recorder is not None and width > 0 and height > 0:
            self.recorder.resize(width, height)

    def signal_received(self, signal: str) -> None:
        chan = self._asset_chan
        if chan is not None:
            chan.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        chan = self._asset_chan
        if chan is not None:
            chan.send_break(msec)
            return True
        return False

    def pause_writing(self) -> None:
        chan = self._asset_chan
        if chan is not None:
            chan.pause_reading()

    def resume_writing(self) -> None:
        chan = self._asset_chan
        if chan is not None:
            chan.resume_reading()

    # -- the asset command's side (CommandSink)
    def from_asset(self, data: bytes, stderr: bool) -> None:
        if self.session is not None:
            self.session.activity(down=len(data))
        if self.recorder is not None:
            self.recorder.output(data)
        if self.transfers is not None and not stderr:
            self.transfers.from_server(data)
        if self.chan is None or self.done:
            return
        if stderr:
            self.chan.write_stderr(data)
        else:
            self.chan.write(data)

    def asset_eof(self) -> None:
        if self.recorder is not None:
            return  # the exit closes the channel once the recording is complete; until
            # then a recording failure can still be told on stderr (impossible after EOF)
        with contextlib.suppress(Exception):
            self.chan.write_eof()  # type: ignore[union-attr]

    def hold_input(self) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def release_input(self) -> None:
        if self.chan is not None:
            self.chan.resume_reading()

    def asset_closed(self, command: AssetCommand, exc: Exception | None) -> None:
        session = self.session
        record = session.record if session is not None else None
        abrupt = command.exit_status is None and command.exit_signal is None
        if abrupt and session is not None and record is not None:
            if session.deps.clock.now() >= record.deadline - GRACE:
                # The agent cut the channel at its expiry a moment before our watchdog ran.
                session.kill(record.deadline_reason)
                return
            told = session.link.cut_by_agent() if session.link is not None else None
            if told is not None:
                # The agent ended it (kill switch) or went away: the session ends, says why.
                session.kill(told)
                return
        if self.transfers is not None:
            self.transfers.finish()
        recorder, self.recorder = self.recorder, None
        if recorder is not None and session is not None:
            # The exit status goes out once the recording is complete: if closing it fails, a
            # strict session is ended instead and the vendor gets the reason.
            session.own(self._exit_after(recorder, command))
            return
        self._exit(command)

    async def _exit_after(self, recorder: Recorder, command: AssetCommand) -> None:
        await recorder.finish("channel closed")
        self._exit(command)

    def _exit(self, command: AssetCommand) -> None:
        if self.chan is None or self.done:
            return
        self.done = True
        if self.session is not None:
            signal = command.exit_signal[0] if command.exit_signal is not None else None
            self.session.exited(command.exit_status, signal)
        with contextlib.suppress(Exception):
            if command.exit_signal is not None:
                sig, core, msg, lang = command.exit_signal
                self.chan.exit_with_signal(sig, core, msg, lang)
            else:
                status = command.exit_status
                self.chan.exit(status if status is not None else 255)

    def connection_lost(self, exc: Exception | None) -> None:
        self.vendor.channels.discard(self)
        if self.transfers is not None:
            self.transfers.finish()
        self._stop_asset("the vendor closed the channel")
        self._finish_recording("channel closed")


async def _finish(recorder: Recorder, reason: str) -> None:
    await recorder.finish(reason)
