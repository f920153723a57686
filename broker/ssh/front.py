"""The SSH front door: stock ``ssh``/``scp``/``sftp`` in, through the zone's agent to the asset.

A thin adapter over the session core (:mod:`broker.core`): the door listens, keeps
unauthenticated connections few and short, and makes one
:class:`broker.ssh.vendor.VendorConnection` per vendor connection. Once signed in, that
connection is one :class:`broker.core.session.MaintenanceSession` under exactly one grant
(target syntax ``LOGIN@ASSET[+GRANT]``, :mod:`broker.ssh.signin`): the first authorization
binds it, every later channel and forward is authorized against that grant only, and the
session ends when the grant ends.

Authentication (identity only): a certificate from the broker's user CA (``conduit ssh-cert``)
whose principals include ``u:<user id>`` and ``c:<serial>``; the vendor's key never needs
registering. The certificate's record (or, clientless, the approving browser session) is
looked up on every channel: a revoked credential is refused, and its amr/acr go to policy
(:mod:`broker.ssh.front_credentials`). Authorization, at connect time and again for every
channel (shell, exec, sftp/scp, port forward): :meth:`sessions.maintenance.MaintenanceService.
authorize` (active grant + policy). A refusal reaches the vendor as one line on stderr
(``conduit: ...``) or as the channel-open failure text for ``ssh -L``, and is audited.

Relay: through the session's asset link (:mod:`broker.core.asset_link`: per-session
certificate, pinned host key, agent tunnel expiring with the session deadline). Sessions end
on time, on revoke/lockout, on idle and on admin kill (:mod:`broker.runtime.live_sessions`);
the vendor sees ``conduit: session ended: <reason>``, and commands still running on the asset
are signalled (TERM, then KILL) before their channel closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import asyncssh

from agents import ssh_transport
from broker.core.asset_link import GCM
from broker.core.forward import RateLimiters
from broker.core.session import MaintenanceSession, SessionDeps, Target
from broker.gateway.agent_gateway import AgentGateway
from broker.keys.ssh import SshKeys
from broker.runtime.live_sessions import LiveSessions
from broker.runtime.session_recorder import RecorderFactory
from broker.runtime.settings import SshSettings
from broker.runtime.ssh_startups import PER_SOURCE, AuditThrottle, StartupListener
from broker.ssh.clientless import ClientlessApprovals
from broker.ssh.front_credentials import CredentialWatch, FrontCredentials
from broker.ssh.vendor import VendorConnection
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.maintenance import MaintenanceService
from sessions.session_end import EndCode, Ending

log = logging.getLogger("conduit.ssh")


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


class FrontDoor:
    """The asyncssh server. Owner: the app's lifespan (``start``/``aclose``); owns the
    sessions of its connections (:meth:`aclose` ends the live ones and waits for all).

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
        self.listener = StartupListener(deps.settings.startup_limits(), self._refused)
        self._throttle = AuditThrottle(lambda: deps.clock.now().timestamp())
        self.core = SessionDeps(
            maintenance=deps.maintenance,
            gateway=deps.gateway,
            audit=deps.audit,
            clock=deps.clock,
            live=deps.live,
            recorder=deps.recorder,
            keys=deps.keys,
            pin_host_key=deps.pin_host_key,
            alert=deps.alert,
            limiters=RateLimiters(deps.clock),
            track_credential=deps.watch.track,
            default_idle_timeout_s=float(deps.settings.default_idle_timeout_s),
        )
        self._sessions: set[MaintenanceSession] = set()  # of connections still open
        self._closing: set[asyncio.Task[None]] = set()  # sessions finishing what they started

    async def start(self) -> None:
        s = self.deps.settings
        ssh_transport.install()
        self._server = await asyncssh.listen(
            s.listen_host,
            s.listen_port,
            server_factory=lambda: VendorConnection(self),
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
        """Stop listening, end every session and wait for what they started. Never raises."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.listener.abort_unauthenticated()
        for session in list(self._sessions):
            session.end(Ending(EndCode.BROKER_SHUTDOWN, "broker shutting down"))
            self.retire(session)
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    # ---- sessions -----------------------------------------------------------------------

    def new_session(
        self, vendor: VendorConnection, target: Target, user_id: str
    ) -> MaintenanceSession:
        """The session of a connection that just signed in (owned by the door from now on)."""
        session = MaintenanceSession(
            self.core,
            target=target,
            user_id=user_id,
            peer=vendor.peer,
            credential=vendor.credential,
            credential_details={"serial": vendor.cert_serial},
            edge=vendor,
        )
        self._sessions.add(session)
        return session

    def retire(self, session: MaintenanceSession) -> None:
        """An ended session's connection is gone: wait for its tasks in the background
        (:meth:`aclose` waits for these)."""
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        task = asyncio.get_running_loop().create_task(session.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

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

    def login_timed_out(self, vendor: VendorConnection) -> None:
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
        details: dict[str, object] = {"reason": reason, "left_out": left_out, "window_s": 60}
        if reason != "login_timeout":
            limits = self.listener.gate.limits
            details["limits"] = f"{limits.start}:{limits.rate}:{limits.full}/{limits.per_source}"
        self.deps.audit.post(
            kind,
            actor="anonymous",
            outcome="refused",
            subject=f"peer:{source}",
            source_ip=source if source != "?" else None,
            details=details,
        )
