"""The SSH front door: stock ``ssh``/``scp``/``sftp`` in, through the zone's agent to the asset.

Target syntax: the SSH user name is ``LOGIN@ASSET`` (``ssh -p 2222 maint@plc-press-3@broker``;
OpenSSH splits user and host at the *last* ``@``), or ``LOGIN@ASSET+GRANT`` to pick one of
several grants by an id prefix. One vendor connection is one session under exactly one grant:
the first authorization binds it, every later channel and forward is authorized against that
grant only, and the session ends when the grant ends.

Authentication (identity only): a certificate from the broker's user CA (``conduit ssh-cert``)
whose principals include ``u:<user id>`` and ``c:<serial>``; the vendor's key never needs
registering. The certificate's record (or, clientless, the approving browser session) is
looked up on every channel: a revoked credential is refused, and its amr/acr go to policy
(:mod:`broker.ssh.front_credentials`).
Authorization, at connect time and again for every channel (shell, exec, sftp/scp, port
forward): :meth:`sessions.maintenance.MaintenanceService.authorize` (active grant + policy).
A refusal reaches the vendor as one line on stderr (``conduit: ...``) or as the channel-open
failure text for ``ssh -L``, and is audited.

Relay: the broker logs in to the asset as ``LOGIN`` with a per-session certificate from the
asset CA (the vendor never sees it), over an :class:`broker.gateway.tunnel.AgentTunnel` whose
expiry is the session deadline; the asset's host key is pinned (asset label ``ssh_host_key``,
learned on first use and audited when absent). PTY (with window changes), exec (exit status
and signals), the sftp subsystem and ``scp`` pass through; output is recorded per channel.
Sessions end on time, on revoke/lockout, on idle and on admin kill
(:mod:`broker.runtime.live_sessions`);
the vendor sees ``conduit: session ended: <reason>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

import asyncssh
from asyncssh.stream import SSHTCPStreamSession

from agents import ssh_transport
from broker.core.relay import ASSET_CLOSED, ForwardRelay
from broker.gateway.agent_gateway import (
    AgentChannel,
    AgentGateway,
    AgentUnavailable,
    ChannelRefused,
)
from broker.gateway.tunnel import AgentTunnel, ChannelEnd
from broker.keys.ssh import SERIAL_PREFIX, USER_PRINCIPAL, SshKeys
from broker.runtime.live_sessions import LiveSession, LiveSessions
from broker.runtime.session_recorder import RecorderFactory
from broker.runtime.settings import SshSettings
from broker.runtime.ssh_startups import PER_SOURCE, AuditThrottle, StartupListener
from broker.ssh.clientless import ClientlessApprovals, ClientlessRefused, Pending
from broker.ssh.front_credentials import CredentialWatch, FrontCredentials
from sessions.access import AccessDenied
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.credentials import AuthContext, CredentialRef, CredentialRefused
from sessions.maintenance import Authorization, MaintenanceService
from sessions.models import AssetEndpoint, route_agent
from sessions.ot.base import Inspector, ObligationsError, ProtocolPlugin
from sessions.ot.pacing import TokenBucket
from sessions.ot.registry import plugin_for
from sessions.recording import RecordingError
from sessions.transfer_audit import TransferAuditor, TransferEvent, auditor_for

MAX_DISCONNECT_MESSAGE = 200  # one line in the vendor's OpenSSH output
log = logging.getLogger("conduit.ssh")

GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")  # design.md: AES-GCM on broker legs
_LOGIN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$", re.IGNORECASE)
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GRANT_PREFIX = re.compile(r"^[0-9a-f-]{4,36}$")
MAX_PENDING_INPUT = 1 << 20
# The agent's own cut-off trails the broker's deadline by this much, so the broker (which can
# tell the vendor why) normally ends the session first; the agent's expiry is the backstop.
GRACE = timedelta(seconds=1)
# TERM, then KILL this much later: well inside GRACE, after which the agent cuts the channel.
SIGNAL_GRACE_S = 0.5


class Recorder(Protocol):
    """What the front door records into (an asciicast recorder, or nothing)."""

    def output(self, data: bytes) -> None: ...

    def input(self, data: bytes) -> None: ...

    def resize(self, width: int, height: int) -> None: ...

    def close(self, reason: str) -> None: ...

    async def finish(self, reason: str) -> bool:
        """Close and wait: True if the recording is complete (strict: False ends the session)."""
        ...


@dataclass(frozen=True)
class Target:
    """What the SSH user name asks for: ``LOGIN@ASSET[+GRANT]``."""

    login: str
    asset: str
    grant_prefix: str | None = None


def parse_target(username: str) -> Target | None:
    """``LOGIN@ASSET[+GRANT]`` → :class:`Target`, or None if malformed."""
    login, sep, rest = username.partition("@")
    asset, plus, prefix = rest.partition("+")
    if not sep or not _LOGIN.match(login) or not _ASSET.match(asset):
        return None
    if plus and not _GRANT_PREFIX.match(prefix.lower()):
        return None
    return Target(login, asset, prefix.lower() if plus else None)


class _PrincipalCapture(asyncssh.SSHAuthorizedKeys):
    """Authorized keys = our user CA (any principal); remembers the certificate's principals."""

    def __init__(self, ca_line: str) -> None:
        super().__init__(f'cert-authority,principals="{USER_PRINCIPAL}" {ca_line}\n')
        self.principals: tuple[str, ...] = ()

    def validate(
        self,
        key: Any,
        client_host: str,
        client_addr: str,
        cert_principals: Any = None,
        ca: bool = False,
    ) -> Any:
        result = super().validate(key, client_host, client_addr, cert_principals, ca)
        self.principals = tuple(cert_principals or ()) if result is not None else ()
        return result


@dataclass(frozen=True)
class FrontDeps:
    settings: SshSettings
    keys: SshKeys
    maintenance: MaintenanceService
    gateway: Callable[[], AgentGateway | None]
    audit: AuditLog
    clock: Clock
    live: LiveSessions
    recorder: RecorderFactory
    pin_host_key: Callable[[str, str], None]  # (asset name, OpenSSH host key) learned on first use
    clientless: ClientlessApprovals
    approve_url: str  # e.g. https://broker/ssh/approve
    alert: Callable[[str, str, dict[str, Any]], None]  # (kind, subject, details): audit + webhook
    credentials: FrontCredentials
    watch: CredentialWatch

    def audit_async(
        self, kind: str, *, actor: str, outcome: str, subject: str | None, details: dict[str, Any]
    ) -> None:
        """Append an audit event from the event loop without blocking it."""
        loop = asyncio.get_running_loop()
        loop.run_in_executor(
            None,
            lambda: self.audit.append(
                kind, actor=actor, outcome=outcome, subject=subject, details=details
            ),
        )


class FrontDoor:
    """The asyncssh server. Owner: the app's lifespan (``start``/``aclose``).

    Before authentication a connection is cheap to make and costly to hold, so the door keeps
    them few and short (:mod:`broker.runtime.ssh_startups`): unauthenticated connections are capped
    overall and per source address (``ssh.max_startups``, ``ssh.max_startups_per_source``) and
    must sign in within ``ssh.login_timeout_s`` (a clientless sign-in showing its code: until
    the code expires). Refused or timed-out connections get an SSH disconnect naming why;
    each kind is audited once a minute per source (``ssh.connect.refused``,
    ``ssh.login.timeout``) with the count left out in between.
    """

    def __init__(self, deps: FrontDeps) -> None:
        self.deps = deps
        self.port = 0
        self._server: asyncssh.SSHAcceptor | None = None
        self.user_ca_line = SshKeys.public(deps.keys.user_ca)
        self._limiters: dict[str, TokenBucket] = {}
        self.listener = StartupListener(deps.settings.startup_limits(), self._refused)
        self._throttle = AuditThrottle(time.monotonic)

    def limiter(self, asset: str, rate: float | None) -> TokenBucket | None:
        """The OT request-rate bucket of one asset endpoint, shared by all its connections."""
        if rate is None:
            return None
        bucket = self._limiters.get(asset)
        if bucket is None or bucket.rate != rate:
            bucket = self._limiters[asset] = TokenBucket(rate, self.deps.clock)
        return bucket

    async def start(self) -> None:
        s = self.deps.settings
        ssh_transport.install()
        self._server = await asyncssh.listen(
            s.listen_host,
            s.listen_port,
            server_factory=lambda: _Vendor(self),
            server_host_keys=[self.deps.keys.host],
            encryption_algs=GCM,
            # The door's own deadline (login_timeout_s, or a clientless code's expiry) acts
            # first and says why; asyncssh's is the backstop.
            login_timeout=s.login_timeout_s + s.clientless_code_ttl_s + 5,
            keepalive_interval=s.keepalive_s,
            keepalive_count_max=3,
            password_auth=False,
            kbdint_auth=True,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            encoding=None,
            line_editor=False,
            tunnel=cast(Any, self.listener),  # accepts the sockets, after the startup caps
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ssh front door listening on %s:%s", s.listen_host, self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.listener.abort_unauthenticated()

    # ---- before authentication ----------------------------------------------------------

    def _refused(self, source: str, why: str) -> str:
        """A connection over the startup caps (the listener refuses it): the client's message."""
        limits = self.listener.gate.limits
        log.warning("ssh front door: refused a connection from %s: %s", source, why)
        self._audit_preauth("ssh.connect.refused", source, why)
        if why == PER_SOURCE:
            return (
                f"conduit: too many unauthenticated connections from {source} "
                f"(limit {limits.per_source}); try again later"
            )
        return "conduit: too many unauthenticated connections; try again later"

    def login_timed_out(self, vendor: _Vendor) -> None:
        source = vendor.peer or "?"
        limit = self.deps.settings.login_timeout_s
        log.info("ssh front door: %s did not sign in within %s s", source, limit)
        if vendor.conn is not None:
            message = f"conduit: not signed in within {limit:g} s; connection closed"
            vendor.conn.disconnect(asyncssh.DISC_BY_APPLICATION, message)
        self._audit_preauth("ssh.login.timeout", source, "login_timeout")

    def _audit_preauth(self, kind: str, source: str, reason: str) -> None:
        left_out = self._throttle.allow(kind, source)
        if left_out is None:
            return
        details = {"reason": reason, "left_out": left_out, "window_s": 60}
        if reason != "login_timeout":
            limits = self.listener.gate.limits
            details["limits"] = f"{limits.start}:{limits.rate}:{limits.full}/{limits.per_source}"
        audit = self.deps.audit
        asyncio.get_running_loop().run_in_executor(
            None,
            lambda: audit.append(
                kind,
                actor="anonymous",
                outcome="refused",
                subject=f"peer:{source}",
                source_ip=source if source != "?" else None,
                details=details,
            ),
        )


class _Vendor(asyncssh.SSHServer):
    """One vendor connection = one maintenance session (possibly many channels)."""

    def __init__(self, door: FrontDoor) -> None:
        self.door, self.deps = door, door.deps
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer: str | None = None
        self.target: Target | None = None
        self.username = ""
        self.user_id: str | None = None
        self.cert_serial: int | None = None
        self.approval: Pending | None = None  # clientless: the approved code
        self.capture = _PrincipalCapture(door.user_ca_line)
        self.session: LiveSession | None = None
        self.auth: Authorization | None = None
        self.asset_conn: asyncssh.SSHClientConnection | None = None
        self.tunnel: AgentTunnel | None = None  # the agent channel under asset_conn
        self.channels: set[_Channel] = set()
        self.stopping: set[asyncio.Task[None]] = set()  # channels ending what they ran
        self._lock = asyncio.Lock()
        self._channel_no = 0
        self.ended: str | None = None
        self.pending: Pending | None = None
        self.clientless_tried = False
        self.relays: set[ForwardRelay] = set()
        self._forward_no = 0
        self.clientless_until: float | None = None  # monotonic expiry of a code shown here
        self._login_timer: asyncio.TimerHandle | None = None

    # ---- authentication -----------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        loop = asyncio.get_running_loop()
        timeout = self.deps.settings.login_timeout_s
        self._login_timer = loop.call_later(timeout, self._login_deadline)

    def _login_deadline(self) -> None:
        self._login_timer = None
        if self.conn is None or self.conn.get_extra_info("username") is not None:
            return  # signed in (asyncssh sets the user name once authentication succeeded)
        left = (self.clientless_until or 0.0) - time.monotonic()
        if left > 0:  # a clientless code is shown: the vendor is approving it in a browser
            self._login_timer = asyncio.get_running_loop().call_later(
                left + 1.0, self._login_deadline
            )
            return
        self.door.login_timed_out(self)

    def begin_auth(self, username: str) -> bool:
        self.username = username
        self.target = parse_target(username)
        assert self.conn is not None
        self.conn.set_authorized_keys(self.capture)
        if self.target is None:
            self.conn.send_auth_banner(
                "conduit: the user name must be LOGIN@ASSET, e.g. ssh root@plc-1@broker\r\n"
            )
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # plain keys never: only certificates from the user CA

    # Clientless: keyboard-interactive shows the approval page and a code the vendor types
    # there (broker/ssh/clientless.py); one code per connection, refusals as an auth banner.
    def kbdint_auth_supported(self) -> bool:
        return self.target is not None and not self.clientless_tried

    async def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]] | bool:
        if self.target is None or self.clientless_tried:
            return False
        self.clientless_tried = True
        clientless = self.deps.clientless
        try:
            login, asset = self.target.login, self.target.asset
            self.pending = await clientless.open(
                login=login, asset=asset, peer=self.peer, alive=self._still_connected
            )
        except ClientlessRefused as exc:
            self._auth_banner(exc.message)
            return False
        # The login timeout waits for the code (monotonic: the injected clock may be manual).
        left = (self.pending.expires - self.deps.clock.now()).total_seconds()
        self.clientless_until = time.monotonic() + max(0.0, left)
        instructions = clientless.instructions(self.pending, self.deps.approve_url)
        return "Conduit sign-in", instructions, "", [("Press Enter once approved: ", True)]

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        pending, self.pending = self.pending, None
        if pending is None:
            return False
        try:
            self.user_id = await self.deps.clientless.wait(pending)
        except ClientlessRefused as exc:
            self._auth_banner(exc.message)
            return False
        self.approval = pending  # clientless: its amr comes from the approving browser session
        return True

    def _still_connected(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    def _auth_banner(self, message: str) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send_auth_banner(f"conduit: {message}\r\n")

    def auth_completed(self) -> None:
        if self.user_id is not None:
            return  # clientless: the approving user
        ids = [p[2:] for p in self.capture.principals if p.startswith("u:")]
        self.user_id = ids[0] if len(ids) == 1 else None
        serials = [
            p[len(SERIAL_PREFIX) :] for p in self.capture.principals if p.startswith(SERIAL_PREFIX)
        ]
        self.cert_serial = int(serials[0]) if len(serials) == 1 and serials[0].isdigit() else None

    async def _credential(self, user_id: str, kind: str) -> tuple[AuthContext, CredentialRef]:
        """The credential this connection signed in with, checked now; refusals audited."""
        creds = self.deps.credentials
        try:
            if self.approval is not None:
                return await asyncio.to_thread(creds.approval, self.approval)
            return await asyncio.to_thread(creds.certificate, self.cert_serial, user_id)
        except CredentialRefused as exc:
            reason = f"credential refused: {exc.message}"
            self.deps.audit_async(
                "session.denied",
                actor=user_id,
                outcome="deny",
                subject=f"asset:{self.target.asset}" if self.target else None,
                details={"kind": kind, "reasons": [reason], "serial": self.cert_serial},
            )
            raise AccessDenied(reason, (reason,)) from None

    # ---- channels -----------------------------------------------------------------------

    def session_requested(self) -> _Channel:
        self._channel_no += 1
        return _Channel(self, self._channel_no)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote forwarding into the vendor's network

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> Any:
        """``ssh -L``: only to a declared endpoint of the granted asset that the grant covers.

        Inspection follows the endpoint's declared protocol (:mod:`sessions.ot.registry`,
        whatever its port); policy decides whether an uninspected protocol may pass.
        """
        try:
            auth = await self.ensure("tcp", host=dest_host, port=dest_port)
        except AccessDenied as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"conduit: {exc.message}"
            ) from None
        except (ChannelRefused, AgentUnavailable, asyncssh.Error, OSError) as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"conduit: {_message(exc)}"
            ) from None
        asset, endpoint = auth.asset, auth.endpoint
        gateway, agent_id = self.deps.gateway(), route_agent(asset, endpoint)
        if gateway is None or agent_id is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "conduit: no agent")
        try:
            channel = await gateway.open_channel(
                agent_id, endpoint.host, endpoint.port, expires_at=auth.deadline + GRACE
            )
        except (ChannelRefused, AgentUnavailable) as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"conduit: {exc.message}"
            ) from None
        plugin = plugin_for(endpoint.protocol)
        inspector = self._inspector(plugin, asset.name, endpoint, auth, channel)
        session = self.session
        assert session is not None
        self._forward_no += 1
        number = self._forward_no
        strict = auth.decision.obligations.record != "best_effort"

        def cut(why: str) -> None:
            self.deps.live.kill(session.id, why)

        try:
            recording = await self.deps.recorder.tcp(
                session.id,
                number,
                client=(self.peer or "198.18.0.1", 40000 + number % 20000),
                server=(endpoint.host, endpoint.port),
                operations=inspector is not None,
                well_known_port=None if plugin is None else plugin.well_known_port,
                strict=strict,
                on_failure=cut,
            )
        except Exception as exc:
            channel.close()
            if isinstance(exc, RecordingError):  # strict: no recording, no session
                cut(exc.message)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"conduit: {_message(exc)}"
            ) from None

        def alert(kind: str, details: dict[str, Any]) -> None:
            self.deps.alert(
                kind,
                f"asset:{asset.name}",
                {
                    **details,
                    "session": session.id,
                    "user": session.user,
                    "grant": session.grant_id,
                    "endpoint": f"{endpoint.name} {endpoint.host}:{endpoint.port}",
                    "protocol": endpoint.protocol,
                    "port": endpoint.port,
                },
            )

        async def pipe(
            reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
        ) -> None:
            relay = ForwardRelay(
                vendor_in=reader,
                vendor_out=writer,
                channel=channel,
                session=session,
                clock=self.deps.clock,
                recording=recording,
                inspector=inspector,
                alert=alert,
            )
            self.relays.add(relay)
            try:
                ended = await relay.run()
            finally:
                self.relays.discard(relay)
            if ended == ASSET_CLOSED:
                await self._agent_ended(channel, asset.name, asset.agent_id)

        return SSHTCPStreamSession(pipe)

    def _inspector(
        self,
        plugin: ProtocolPlugin | None,
        asset: str,
        endpoint: AssetEndpoint,
        auth: Authorization,
        channel: AgentChannel,
    ) -> Inspector | None:
        """The endpoint protocol's inspector (None: plain TCP); a policy block the protocol
        module refuses closes the channel, is audited and refuses the forward (fail closed)."""
        if plugin is None:
            return None
        obligations = auth.decision.obligations
        limiter = self.door.limiter(f"{asset}/{endpoint.name}", obligations.rate_limit_rps)
        try:
            return plugin.inspector(obligations, self.deps.clock, limiter)
        except ObligationsError as exc:
            channel.close()
            self.deps.audit_async(
                "ot.obligations_refused",
                actor=self.user_id or "unknown",
                outcome="error",
                subject=f"asset:{asset}",
                details={"endpoint": endpoint.name, "protocol": endpoint.protocol,
                         "reason": exc.message},
            )  # fmt: skip
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"conduit: {exc.message}"
            ) from None

    async def _agent_ended(self, channel: AgentChannel, asset: str, agent_id: str | None) -> None:
        """A forwarded connection's agent side closed: if the agent ended it (kill switch) or
        went away, the whole session ends and the vendor is told why."""
        gateway, session = self.deps.gateway(), self.session
        if gateway is None or agent_id is None or session is None:
            return
        why = ChannelEnd()
        why.said((await channel.close_reason()).encode())
        why.lost = not gateway.connected(agent_id)
        told = why.explain(asset)
        if told is not None:
            self.deps.live.kill(session.id, told)

    # ---- session set-up -----------------------------------------------------------------

    async def ensure(
        self, kind: str, *, host: str | None = None, port: int | None = None
    ) -> Authorization:
        """Authorize one channel; on the first, open the session and the asset connection.

        Authorizations of one connection are serialized: the first binds the session to its
        grant, and every later one is decided against that grant only.
        """
        if self.ended:
            raise AccessDenied(f"session ended: {self.ended}", (self.ended,))
        if self.target is None:
            raise AccessDenied(
                "the user name must be LOGIN@ASSET", ("the user name must be LOGIN@ASSET",)
            )
        if self.user_id is None:
            raise AccessDenied("unknown user certificate", ("unknown user certificate",))
        target, user_id = self.target, self.user_id
        signed_in, credential = await self._credential(user_id, kind)
        gateway = self.deps.gateway()
        live = gateway.live() if gateway is not None else {}
        async with self._lock:
            session = self.session
            auth = await self.deps.maintenance.authorize(
                user_id=user_id,
                asset_name=target.asset,
                kind=kind,
                login=target.login,
                host=host,
                port=port,
                source_ip=self.peer,
                agent_online=lambda agent_id: agent_id is not None and agent_id in live,
                auth=signed_in,
                credential=credential.label,
                bound=session is not None,
                grant_id=session.grant_id if session is not None else None,
                grant_prefix=target.grant_prefix,
            )
            if self.ended:
                raise AccessDenied(f"session ended: {self.ended}", (self.ended,))
            if self.session is None:
                await self._open(auth, kind)
                assert self.session is not None
                self.deps.watch.track(self.session.id, credential)
            if kind != "tcp" and self.asset_conn is None:
                assert self.session is not None
                await self._connect_asset(auth, target.login, self.session.id)
        return auth

    async def _open(self, auth: Authorization, kind: str) -> None:
        assert self.target is not None
        login = self.target.login
        d = self.deps
        session_id = await asyncio.to_thread(
            d.maintenance.open, auth, kind="sftp" if kind == "sftp" else kind, login=login,
            source_ip=self.peer,
        )  # fmt: skip
        obligations = auth.decision.obligations
        now = d.clock.now()
        grant_end = auth.grant is not None and auth.deadline == auth.grant.ends_at
        self.auth = auth
        self.session = LiveSession(
            id=session_id,
            kind=kind,
            user_id=auth.user.id,
            user=auth.user.email or auth.user.name or auth.user.sub,
            asset=auth.asset.name,
            login=login,
            grant_id=auth.grant.id if auth.grant else None,
            source_ip=self.peer,
            started_at=now,
            deadline=auth.deadline,
            deadline_reason="grant window ended"
            if grant_end
            else "maximum session duration reached",
            idle_timeout_s=float(obligations.idle_timeout_s or d.settings.default_idle_timeout_s),
            last_activity=now,
            kill=self.end,
        )
        d.live.add(self.session)

    async def _connect_asset(self, auth: Authorization, login: str, session_id: str) -> None:
        d, asset = self.deps, auth.asset
        gateway, agent_id = d.gateway(), route_agent(asset, auth.endpoint)
        if gateway is None or agent_id is None:
            raise AgentUnavailable(f"{asset.name} has no agent connected to this broker")
        key, cert = d.keys.asset_login(login, key_id=f"conduit:{session_id}:{auth.user.sub}")
        pinned = asset.labels.get("ssh_host_key")
        known_hosts: Any = None
        if pinned:
            known_hosts = ([asyncssh.import_public_key(pinned)], [], [])
        tunnel = AgentTunnel(
            gateway, agent_id, expires_at=auth.deadline + GRACE, ref=f"s-{session_id[:24]}"
        )

        def refused(reason: str, outcome: str) -> AccessDenied:
            d.audit_async(
                "session.denied",
                actor=auth.user.id,
                outcome=outcome,
                subject=f"asset:{asset.name}",
                details={"kind": "ssh", "reasons": [reason]},
            )
            return AccessDenied(reason, (reason,))

        self.tunnel = tunnel
        try:
            self.asset_conn = await self._dial_asset(
                auth.endpoint, tunnel, login, key, cert, known_hosts
            )
        except asyncssh.PermissionDenied:
            raise refused(f"{asset.name} refused the login {login!r}", "deny") from None
        except asyncssh.HostKeyNotVerifiable:
            why = f"{asset.name} presented an SSH host key that does not match the pinned one"
            raise refused(why, "error") from None
        if not pinned:
            host_key = self.asset_conn.get_server_host_key()
            if host_key is not None:
                await asyncio.to_thread(
                    d.pin_host_key, asset.name, host_key.export_public_key().decode().strip()
                )

    @staticmethod
    async def _dial_asset(
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

    # ---- ending -------------------------------------------------------------------------

    def end(self, reason: str) -> None:
        """End the whole session now: tell every channel why, close both connections."""
        if self.ended:
            return
        self.ended = reason
        for channel in list(self.channels):
            channel.terminate(reason)
        if self.asset_conn is not None:
            if self.stopping:  # the asset connection closes once what the channels ran has ended
                self.own(self._close_asset_after(list(self.stopping), self.asset_conn))
            else:
                self.asset_conn.close()
        for relay in list(self.relays):
            relay.stop(reason)  # OT: answers to requests already sent are still delivered
        if self.conn is not None:
            loop = asyncio.get_running_loop()
            conn = self.conn
            delay = 0.2 + (2.0 if self.relays else 0.0)
            if self.channels:
                loop.call_later(delay, conn.close)  # let the reason line (and answers) through
            else:  # forwards only (`conduit forward`, ssh -N): the disconnect message says why
                message = f"conduit: session ended: {reason}"[:MAX_DISCONNECT_MESSAGE]
                loop.call_later(delay, conn.disconnect, asyncssh.DISC_BY_APPLICATION, message)
        session = self.session
        if session is not None:
            self.deps.live.remove(session.id)
            asyncio.get_running_loop().create_task(
                asyncio.to_thread(
                    self.deps.maintenance.close,
                    session.id,
                    reason=reason,
                    bytes_up=session.bytes_up,
                    bytes_down=session.bytes_down,
                )
            )

    def own(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task this connection holds until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self.stopping.add(task)
        task.add_done_callback(self.stopping.discard)
        return task

    @staticmethod
    async def _close_asset_after(
        stops: list[asyncio.Task[None]], conn: asyncssh.SSHClientConnection
    ) -> None:
        await asyncio.gather(*stops, return_exceptions=True)
        conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if self.session is not None and self.session.ended is False:
            self.session.ended = True
        if not self.ended:
            self.end("client disconnected" if exc is None else f"connection lost: {exc}")


class _AssetSide(asyncssh.SSHClientSession[bytes]):
    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        self.closed = asyncio.Event()

    @property
    def finished(self) -> bool:
        """Whether the asset's command has ended (exit status or signal) or its channel closed."""
        return self.exit_status is not None or self.exit_signal is not None or self.closed.is_set()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._channel.from_asset(data, datatype)

    def eof_received(self) -> bool:
        if self._channel.recorder is not None:
            return True  # the exit closes the channel once the recording is complete; until
            # then a recording failure can still be told on stderr (impossible after EOF)
        with contextlib.suppress(Exception):
            self._channel.chan.write_eof()  # type: ignore[union-attr]
        return True

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        if self._channel.chan is not None:
            self._channel.chan.pause_reading()

    def resume_writing(self) -> None:
        if self._channel.chan is not None:
            self._channel.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._channel.asset_closed(self, exc)


class _Channel(asyncssh.SSHServerSession[bytes]):
    """One vendor channel (shell, exec or subsystem) relayed to one asset channel."""

    def __init__(self, vendor: _Vendor, number: int) -> None:
        self.vendor, self.number = vendor, number
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.asset_chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.asset_side: _AssetSide | None = None
        self.pty: tuple[str, tuple[int, int, int, int], Any] | None = None
        self.command: str | None = None
        self.subsystem: str | None = None
        self.pending: list[bytes] = []
        self.pending_eof = False
        self.recorder: Recorder | None = None
        self.transfers: TransferAuditor | None = None
        self.done = False

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
        """One file moved (sftp/scp): audited off the event loop, never blocking the relay."""
        v = self.vendor
        s = v.session
        v.deps.audit_async(
            "session.file_transfer",
            actor=s.user_id if s else "unknown",
            outcome="ok" if event.complete else "error",
            subject=f"session:{s.id}" if s else None,
            details={**dataclasses.asdict(event), "asset": s.asset if s else None},
        )

    def session_started(self) -> None:
        asyncio.get_running_loop().create_task(self._start())

    @property
    def kind(self) -> str:
        """``sftp`` for file-transfer channels (sftp subsystem, scp, an exec'd sftp-server)."""
        return "sftp" if self.transfers is not None else "ssh"

    async def _start(self) -> None:
        v = self.vendor
        try:
            await v.ensure(self.kind)
            assert v.asset_conn is not None
            assert v.session is not None
            width, height = (self.pty[1][0], self.pty[1][1]) if self.pty else (80, 24)
            width, height = width or 80, height or 24  # a PTY may report 0x0 (unknown)
            if self.kind == "ssh":
                title = (
                    f"{v.session.user} → {v.target.login if v.target else '?'}@{v.session.asset}"
                )
                strict = v.auth is None or v.auth.decision.obligations.record != "best_effort"
                session_id = v.session.id

                def cut(why: str) -> None:
                    v.deps.live.kill(session_id, why)

                try:
                    self.recorder = await v.deps.recorder(
                        session_id,
                        self.number,
                        width,
                        height,
                        title,
                        strict=strict,
                        on_failure=cut,
                        pty=self.pty is not None,
                    )
                except RecordingError as exc:  # strict: refused, and the session ends with it
                    self.refuse(f"session refused: {exc.message}")
                    cut(exc.message)
                    return
            kwargs: dict[str, Any] = {"encoding": None}
            if self.pty:
                kwargs.update(term_type=self.pty[0], term_size=self.pty[1])
            if self.subsystem:
                kwargs["subsystem"] = self.subsystem
            elif self.command is not None:
                kwargs["command"] = self.command
            chan, side = await v.asset_conn.create_session(lambda: _AssetSide(self), **kwargs)
            self.asset_side = cast(_AssetSide, side)
        except AccessDenied as exc:
            self.refuse(f"access denied: {'; '.join(exc.reasons) or exc.message}")
            return
        except (ChannelRefused, AgentUnavailable) as exc:
            self.refuse(f"cannot reach the asset: {exc.message}")
            return
        except (asyncssh.Error, OSError) as exc:
            self.refuse(f"cannot reach the asset: {_message(exc)}")
            return
        except Exception as exc:  # e.g. strict recording could not start
            log.exception("starting channel failed")
            self.refuse(f"session refused: {_message(exc)}")
            return
        self.asset_chan = chan
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
        """The session ended: one line to the vendor, close this channel, end its twin (what it
        runs on the asset is signalled first, see :meth:`_stop_asset`)."""
        if self.transfers is not None:
            self.transfers.finish()
        if self.recorder is not None:
            self.recorder.close(reason)
            self.recorder = None
        self._stop_asset(reason)
        if not self.done:
            self.refuse(f"session ended: {reason}")

    def _stop_asset(self, reason: str) -> None:
        """Close the asset channel; if its command still runs, signal it first.

        OpenSSH leaves a command without a PTY running when its channel closes (a ``while true``
        loop would outlive the session by hours), so the broker sends the SSH ``signal`` request
        TERM, then KILL after :data:`SIGNAL_GRACE_S` if the channel is still open, audits each
        as ``session.signal``, and closes the channel. sftp (a subsystem) is closed at once:
        sshd refuses to signal subsystems and sftp-server ends with its channel.
        """
        chan, self.asset_chan = self.asset_chan, None
        side = self.asset_side
        if chan is None:
            return
        if self.subsystem or side is None or side.finished:
            chan.close()
            return
        self.vendor.own(self._signal_then_close(chan, side, reason))

    async def _signal_then_close(
        self, chan: asyncssh.SSHClientChannel[bytes], side: _AssetSide, reason: str
    ) -> None:
        v, s = self.vendor, self.vendor.session
        try:
            for sig in ("TERM", "KILL"):
                if side.finished:
                    break
                try:
                    chan.send_signal(sig)
                except (asyncssh.Error, OSError):
                    break  # the channel is already going away
                v.deps.audit_async(
                    "session.signal",
                    actor="system",
                    outcome="ok",
                    subject=f"session:{s.id}" if s else None,
                    details={
                        "asset": s.asset if s else None,
                        "channel": self.number,
                        "signal": sig,
                        "reason": reason,
                    },
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(side.closed.wait(), SIGNAL_GRACE_S)
        finally:
            chan.close()

    # -- data
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        s = self.vendor.session
        if s is not None:
            s.bytes_up += len(data)
            s.last_activity = self.vendor.deps.clock.now()
        if self.recorder is not None and self.vendor.deps.settings.record_input:
            self.recorder.input(data)
        if self.asset_chan is not None:
            self.asset_chan.write(data)
        elif sum(map(len, self.pending)) + len(data) <= MAX_PENDING_INPUT:
            self.pending.append(data)
        else:
            return  # dropped: not seen by the asset, so not audited either
        if self.transfers is not None:
            self.transfers.from_client(data)

    def from_asset(self, data: bytes, datatype: asyncssh.DataType) -> None:
        s = self.vendor.session
        if s is not None:
            s.bytes_down += len(data)
            s.last_activity = self.vendor.deps.clock.now()
        if self.recorder is not None:
            self.recorder.output(data)
        if self.transfers is not None and datatype != asyncssh.EXTENDED_DATA_STDERR:
            self.transfers.from_server(data)
        if self.chan is None or self.done:
            return
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.chan.write_stderr(data)
        else:
            self.chan.write(data)

    def eof_received(self) -> bool:
        if self.asset_chan is not None:
            self.asset_chan.write_eof()
        else:
            self.pending_eof = True
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.asset_chan is not None:
            self.asset_chan.change_terminal_size(width, height, pixwidth, pixheight)
        if self.recorder is not None and width > 0 and height > 0:
            self.recorder.resize(width, height)

    def signal_received(self, signal: str) -> None:
        if self.asset_chan is not None:
            self.asset_chan.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.asset_chan is not None:
            self.asset_chan.send_break(msec)
            return True
        return False

    def pause_writing(self) -> None:
        if self.asset_chan is not None:
            self.asset_chan.pause_reading()

    def resume_writing(self) -> None:
        if self.asset_chan is not None:
            self.asset_chan.resume_reading()

    def asset_closed(self, side: _AssetSide, exc: Exception | None) -> None:
        s = self.vendor.session
        abrupt = side.exit_status is None and side.exit_signal is None
        if abrupt and s is not None and self.vendor.deps.clock.now() >= s.deadline - GRACE:
            # The agent cut the channel at its expiry a moment before our watchdog ran.
            self.vendor.deps.live.kill(s.id, s.deadline_reason)
            return
        tunnel = self.vendor.tunnel
        told = tunnel.ended.explain(s.asset) if abrupt and s and tunnel else None
        if told is not None and s is not None:
            # The agent ended it (kill switch) or went away: the session ends, and says why.
            self.vendor.deps.live.kill(s.id, told)
            return
        if self.transfers is not None:
            self.transfers.finish()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            # The exit status goes out once the recording is complete: if closing it fails, a
            # strict session is ended instead and the vendor gets the reason.
            asyncio.get_running_loop().create_task(self._exit_after(recorder, side))
            return
        self._exit(side)

    async def _exit_after(self, recorder: Recorder, side: _AssetSide) -> None:
        await recorder.finish("channel closed")
        self._exit(side)

    def _exit(self, side: _AssetSide) -> None:
        if self.chan is None or self.done:
            return
        self.done = True
        with contextlib.suppress(Exception):
            if side.exit_signal is not None:
                sig, core, msg, lang = side.exit_signal
                self.chan.exit_with_signal(sig, core, msg, lang)
            else:
                self.chan.exit(side.exit_status if side.exit_status is not None else 255)

    def connection_lost(self, exc: Exception | None) -> None:
        self.vendor.channels.discard(self)
        if self.transfers is not None:
            self.transfers.finish()
        self._stop_asset("the vendor closed the channel")
        if self.recorder is not None:
            self.recorder.close("channel closed")
            self.recorder = None


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc)
    return str(text)[:300] or type(exc).__name__
