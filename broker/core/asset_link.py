"""The asset link: one maintenance session's way to its asset, always through the zone's agent.

Two kinds of connection, both opened on an agent data channel that expires with the session
deadline (plus :data:`GRACE`, so the broker, which can say why, normally ends it first):

* an SSH login (:meth:`AssetLink.connect`): the broker logs in as ``LOGIN`` with a per-session
  certificate from the asset CA (the vendor never sees it) over an
  :class:`broker.gateway.tunnel.AgentTunnel`; the asset's host key is pinned (asset label
  ``ssh_host_key``; learned on first use through ``pin_host_key``). A refused login or a
  host key that does not match is audited (``session.denied``) and raised as
  :class:`sessions.access.AccessDenied`. Commands on it are :class:`AssetCommand` channels.
* a raw TCP channel to a declared endpoint (:meth:`AssetLink.open_channel`), for forwards.

Ending what the session started: a command without a PTY survives its channel on OpenSSH, so
:meth:`AssetLink.stop` sends the SSH ``signal`` request TERM, then KILL after
:data:`SIGNAL_GRACE_S`, audits each (``session.signal``) and then closes the channel. The link
owns those tasks: :meth:`close` closes the SSH connection once they are done, :meth:`aclose`
waits for them.

Future edge: a broker-agent hop over per-channel TLS instead of SSH replaces the tunnel and the
raw channel here; nothing above this module changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, Protocol, cast

import asyncssh

from agents.wire import KILL_SWITCH_REASON
from broker.gateway.agent_gateway import AgentGateway
from broker.gateway.channel import AgentChannel, AgentUnavailable
from broker.gateway.tunnel import AgentTunnel, ChannelEnd
from broker.keys.ssh import SshKeys
from sessions.access import AccessDenied
from sessions.audit import AuditLog
from sessions.maintenance import Authorization
from sessions.models import AssetEndpoint, route_agent
from sessions.session_end import EndCode, Ending

GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")  # design.md: AES-GCM on broker legs
# The agent's own cut-off trails the broker's deadline by this much, so the broker (which can
# tell the vendor why) normally ends the session first; the agent's expiry is the backstop.
GRACE = timedelta(seconds=1)
# TERM, then KILL this much later: well inside GRACE, after which the agent cuts the channel.
SIGNAL_GRACE_S = 0.5


class CommandSink(Protocol):
    """The front end's side of one asset command (what the asset sends it)."""

    def from_asset(self, data: bytes, stderr: bool) -> None: ...

    def asset_eof(self) -> None: ...

    def hold_input(self) -> None:
        """The asset's channel is full: stop reading from the user."""
        ...

    def release_input(self) -> None: ...

    def asset_closed(self, command: AssetCommand, exc: Exception | None) -> None: ...


class AssetCommand(asyncssh.SSHClientSession[bytes]):
    """One shell, command or subsystem on the asset; reports to its :class:`CommandSink`."""

    def __init__(self, sink: CommandSink, subsystem: bool) -> None:
        self._sink, self.subsystem = sink, subsystem
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        self.closed = asyncio.Event()

    @property
    def finished(self) -> bool:
        """Whether the asset's command has ended (exit status or signal) or its channel closed."""
        return self.exit_status is not None or self.exit_signal is not None or self.closed.is_set()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._sink.from_asset(data, datatype == asyncssh.EXTENDED_DATA_STDERR)

    def eof_received(self) -> bool:
        self._sink.asset_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self._sink.hold_input()

    def resume_writing(self) -> None:
        self._sink.release_input()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._sink.asset_closed(self, exc)


class AssetLink:
    """One session's connections to its asset. Event-loop confined; owned by the session."""

    def __init__(
        self,
        *,
        session_id: str,
        actor: str,
        keys: SshKeys,
        gateway: Callable[[], AgentGateway | None],
        pin_host_key: Callable[[str, str], None],
        audit: AuditLog,
    ) -> None:
        self._session_id, self._actor = session_id, actor
        self._keys, self._gateway, self._pin = keys, gateway, pin_host_key
        self._audit = audit
        self._conn: asyncssh.SSHClientConnection | None = None
        self._tunnel: AgentTunnel | None = None
        self._asset = ""
        self._stops: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def connected(self) -> bool:
        """Whether the SSH login to the asset is up (or was: a closed link stays connected)."""
        return self._conn is not None

    # ---- the SSH login ------------------------------------------------------------------

    async def connect(self, auth: Authorization, login: str) -> None:
        """Log in to the authorized asset's SSH endpoint as ``login`` through its agent.

        Raises :class:`AgentUnavailable` (no agent), :class:`AccessDenied` (login refused or
        host key mismatch; audited), ``asyncssh.Error``/``OSError`` (cannot reach it).
        """
        asset = auth.asset
        gateway, agent_id = self._gateway(), route_agent(asset, auth.endpoint)
        if gateway is None or agent_id is None:
            raise AgentUnavailable(f"{asset.name} has no agent connected to this broker")
        # The certificate's validity is read from the OS clock in broker/keys/ssh.py (the one
        # wall-clock read left): the asset's sshd checks it against its own clock, not ours.
        key, cert = self._keys.asset_login(
            login, key_id=f"conduit:{self._session_id}:{auth.user.sub}"
        )
        pinned = asset.labels.get("ssh_host_key")
        known_hosts: Any = ([asyncssh.import_public_key(pinned)], [], []) if pinned else None
        self._asset = asset.name
        self._tunnel = AgentTunnel(
            gateway, agent_id, expires_at=auth.deadline + GRACE, ref=f"s-{self._session_id[:24]}"
        )
        try:
            self._conn = await _dial(auth.endpoint, self._tunnel, login, key, cert, known_hosts)
        except asyncssh.PermissionDenied:
            raise await self._refused(f"{asset.name} refused the login {login!r}", "deny") from None
        except asyncssh.HostKeyNotVerifiable:
            why = f"{asset.name} presented an SSH host key that does not match the pinned one"
            raise await self._refused(why, "error") from None
        if self._closing:  # the session ended while the login was being dialled
            self._conn.close()
            raise AccessDenied("session ended", ("session ended",))
        if not pinned:
            host_key = self._conn.get_server_host_key()
            if host_key is not None:
                line = host_key.export_public_key().decode().strip()
                await asyncio.to_thread(self._pin, asset.name, line)

    async def _refused(self, reason: str, outcome: str) -> AccessDenied:
        await self._audit.record(
            "session.denied",
            actor=self._actor,
            outcome=outcome,
            subject=f"asset:{self._asset}",
            details={"kind": "ssh", "reasons": [reason]},
        )
        return AccessDenied(reason, (reason,))

    async def open_command(
        self,
        sink: CommandSink,
        *,
        term: tuple[str, tuple[int, int, int, int]] | None,
        command: str | None,
        subsystem: str | None,
    ) -> AssetCommand:
        """Start a shell (``command`` None), a command or a subsystem on the asset."""
        if self._conn is None or self._closing:
            raise AgentUnavailable(f"{self._asset or 'the asset'}: the asset link is closed")
        kwargs: dict[str, Any] = {"encoding": None}
        if term is not None:
            kwargs.update(term_type=term[0], term_size=term[1])
        if subsystem:
            kwargs["subsystem"] = subsystem
        elif command is not None:
            kwargs["command"] = command
        _, side = await self._conn.create_session(
            lambda: AssetCommand(sink, subsystem is not None), **kwargs
        )
        return cast(AssetCommand, side)

    def cut_by_agent(self) -> Ending | None:
        """Why the agent ended the SSH login's channel (kill switch, agent gone), or None."""
        return agent_ending(self._tunnel.ended, self._asset) if self._tunnel is not None else None

    # ---- raw channels (forwards) --------------------------------------------------------

    async def open_channel(self, auth: Authorization) -> AgentChannel:
        """A TCP channel to the authorized endpoint. Raises :class:`AgentUnavailable` or
        :class:`ChannelRefused` (the agent's refusal)."""
        gateway, agent_id = self._gateway(), route_agent(auth.asset, auth.endpoint)
        if gateway is None or agent_id is None:
            raise AgentUnavailable("no agent")
        if self._closing:
            raise AgentUnavailable("the session has ended")
        endpoint = auth.endpoint
        channel = await gateway.open_channel(
            agent_id, endpoint.host, endpoint.port, expires_at=auth.deadline + GRACE
        )
        if self._closing:  # the session ended while the channel was being opened
            channel.close()
            raise AgentUnavailable("the session has ended")
        return channel

    async def channel_ended_by_agent(
        self, channel: AgentChannel, asset: str, agent_id: str | None
    ) -> Ending | None:
        """A raw channel's agent side closed: why, if the agent ended it or went away."""
        gateway = self._gateway()
        if gateway is None or agent_id is None:
            return None
        why = ChannelEnd()
        why.said((await channel.close_reason()).encode())
        why.lost = not gateway.connected(agent_id)
        return agent_ending(why, asset)

    # ---- ending -------------------------------------------------------------------------

    def stop(self, command: AssetCommand, number: int, reason: str) -> None:
        """Close ``command``'s channel; if it still runs, signal it first (TERM, then KILL).

        sftp (a subsystem) is closed at once: sshd refuses to signal subsystems and
        sftp-server ends with its channel.
        """
        chan = command.chan
        if chan is None:
            return
        if command.subsystem or command.finished:
            chan.close()
            return
        self._own(self._signal_then_close(chan, command, number, reason))

    async def _signal_then_close(
        self, chan: asyncssh.SSHClientChannel[bytes], command: AssetCommand, number: int, why: str
    ) -> None:
        try:
            for sig in ("TERM", "KILL"):
                if command.finished:
                    break
                try:
                    chan.send_signal(sig)
                except (asyncssh.Error, OSError):
                    break  # the channel is already going away
                self._audit.post(
                    "session.signal",
                    actor="system",
                    outcome="ok",
                    subject=f"session:{self._session_id}",
                    details={"asset": self._asset, "channel": number, "signal": sig, "reason": why},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(command.closed.wait(), SIGNAL_GRACE_S)
        finally:
            chan.close()

    def _own(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    def close(self) -> None:
        """Close the SSH login, once what its commands ran has been signalled to an end."""
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        if conn is None:
            return
        if self._stops:
            self._own(self._close_after(list(self._stops), conn))
        else:
            conn.close()

    @staticmethod
    async def _close_after(
        stops: list[asyncio.Task[None]], conn: asyncssh.SSHClientConnection
    ) -> None:
        await asyncio.gather(*stops, return_exceptions=True)
        conn.close()

    async def aclose(self) -> None:
        """Close (see :meth:`close`) and wait for every task the link started. Never raises."""
        self.close()
        while self._stops:
            await asyncio.gather(*list(self._stops), return_exceptions=True)


async def _dial(
    endpoint: AssetEndpoint,
    tunnel: AgentTunnel,
    login: str,
    key: Any,
    cert: Any,
    known_hosts: Any,
) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        endpoint.host,
        endpoint.port,
        tunnel=tunnel,
        username=login,
        client_keys=[(key, cert)],
        known_hosts=known_hosts,
        config=None,
        agent_path=None,
        encryption_algs=GCM,
        connect_timeout=15,
        keepalive_interval=30,
    )


def error_text(exc: BaseException) -> str:
    """One short line about why the asset could not be reached (for the user)."""
    text = getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc)
    return str(text)[:300] or type(exc).__name__


def agent_ending(end: ChannelEnd, asset: str) -> Ending | None:
    """The session's ending when the agent ended a channel: its kill switch, or gone (None if
    the agent did not end it)."""
    text = end.explain(asset)
    if text is None:
        return None
    code = EndCode.KILL_SWITCH if end.reason == KILL_SWITCH_REASON else EndCode.AGENT_GONE
    return Ending(code, text)
