"""The agent gateway: accepts agents' outbound tunnels and opens channels to their assets.

Agents dial in (``asyncssh.listen_reverse``); the broker runs the SSH *client* role on each
accepted socket. An agent is let in only if its host key carries a certificate from the agent
CA for principal ``conduit-agent``, the key is not revoked (checked in the handshake from an
in-memory set, then against the database), and its first control frame (``hello``, within
``handshake_timeout_s``) names the same agent. A newer tunnel from the same agent replaces the
older one.

Hostile agents: control frames are validated and rate-capped (:mod:`.control`); nothing an
agent sends blocks the event loop (database work runs on the gateway's one writer thread,
audit events go through :class:`.agent_audit.AgentAudit`).

:meth:`AgentGateway.open_channel` asks the agent to connect to ``host:port`` until
``expires_at``; it returns an :class:`AgentChannel` or raises :class:`AgentUnavailable` /
:class:`ChannelRefused` (with the agent's reason). Owner: the app's lifespan (start/aclose);
the gateway owns its background tasks (:class:`.tasks.OwnedTasks`) and ends them at
:meth:`AgentGateway.aclose`. Time comes from the injected clock.

Parts: :mod:`.live_agent` (one connected agent, its flood guard), :mod:`.channel` (data
channels), :mod:`.control` (control frames), :mod:`.agent_audit` (its audit events).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import asyncssh

from agents import ssh_transport
from agents.wire import (
    AGENT_PRINCIPAL,
    BROKER_USERNAME,
    CONTROL_SUBSYSTEM,
    MAX_FRAME,
    Hello,
    OpenRequest,
    WireError,
    encode,
    key_pin,
    parse_open_reply,
)
from broker.gateway.agent_audit import AgentAudit
from broker.gateway.channel import AgentChannel, AgentUnavailable, ChannelRefused, request_channel
from broker.gateway.control import ControlFrames, ControlSession
from broker.gateway.live_agent import LiveAgent
from broker.gateway.tasks import OwnedTasks
from broker.keys.agent import AgentKeys
from broker.runtime.settings import AgentSettings
from sessions.agents.base import AgentRefused
from sessions.agents.service import AgentService
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.errors import SessionsError

__all__ = ["AgentGateway"]

log = logging.getLogger("conduit.gateway")
T = TypeVar("T")

GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
HOUSEKEEPING_S = 2.0


class _GatewayClient(asyncssh.SSHClient):
    def __init__(self, gateway: AgentGateway) -> None:
        self._gateway = gateway
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        # Keep the peer address past the transport, for the audit of a failed handshake.
        conn.set_extra_info(peername=conn.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._gateway._lost(self._conn, exc)


class AgentGateway:
    """Holds the agents' tunnels for this broker node."""

    def __init__(
        self,
        settings: AgentSettings,
        keys: AgentKeys,
        agents: AgentService,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self._settings, self._keys, self._agents = settings, keys, agents
        self._audit, self._clock = AgentAudit(audit, settings.node_name), clock
        self._live: dict[str, LiveAgent] = {}
        self._by_conn: dict[asyncssh.SSHClientConnection, LiveAgent] = {}
        self._revoked: set[str] = set()
        self._revoked_keys: list[asyncssh.SSHKey] = []
        self._server: asyncssh.SSHAcceptor | None = None
        self._tasks = OwnedTasks("agent gateway")
        self._ca = asyncssh.import_public_key(keys.ca_public)
        self.port = 0
        self.node = settings.node_name
        self.loop: asyncio.AbstractEventLoop | None = None
        # One writer thread for the gateway's database work: thousands of agents reconnecting
        # at once queue here instead of fighting over the database write lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-gateway-db")
        self._handshakes = asyncio.Semaphore(64)
        self._flushed: dict[str, datetime] = {}
        self._frames = ControlFrames(
            self._audit, clock, settings.max_frames_per_s, self._hello_accepted
        )

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        ssh_transport.install()
        await self._refresh_revoked()
        s = self._settings
        self._server = await asyncssh.listen_reverse(
            s.listen_host,
            s.listen_port,
            client_factory=lambda: _GatewayClient(self),
            known_hosts=self._known_hosts,
            host_key_alias=AGENT_PRINCIPAL,
            username=BROKER_USERNAME,
            client_keys=[self._keys.gateway],
            agent_path=None,
            config=None,
            encryption_algs=GCM,
            keepalive_interval=s.keepalive_s,
            keepalive_count_max=3,
            login_timeout=s.handshake_timeout_s,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            acceptor=self._accept,
            error_handler=self._handshake_failed,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.node = s.node_name or f"{s.listen_host}:{self.port}"
        self._audit.node = self.node
        self._tasks.spawn(self._housekeeping())
        log.info("agent gateway listening on %s:%s", s.listen_host, self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for live in list(self._live.values()):
            live.conn.close()
        await self._tasks.aclose()
        await self._audit.drain()  # the events this gateway posted are written before it stops
        await self._flush()
        self._executor.shutdown(wait=False)

    def gateways(self) -> list[str]:
        return self._settings.gateways(self.port)

    # ---- views --------------------------------------------------------------------------

    def connected(self, agent_id: str) -> bool:
        """Whether the agent has a working tunnel to this broker now."""
        live = self._live.get(agent_id)
        return live is not None and not live.conn.is_closed()

    def live(self) -> dict[str, LiveAgent]:
        return dict(self._live)

    # ---- handshake ----------------------------------------------------------------------

    def _known_hosts(
        self, host: str, addr: str, port: int
    ) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        # Only certificates from our agent CA; revoked agent keys are refused in the handshake.
        return [], [self._ca], list(self._revoked_keys)

    def _handshake_failed(self, conn: asyncssh.SSHClientConnection, exc: Exception) -> None:
        peer = _peer(conn)
        log.info("agent handshake from %s failed: %s", peer, exc)
        self._audit.handshake_refused(peer, exc)

    async def _accept(self, conn: asyncssh.SSHClientConnection) -> None:
        key = conn.get_server_host_key()
        peer = _peer(conn)
        if key is None:
            conn.close()
            return
        pin = key_pin(key.export_public_key().decode())
        try:
            async with self._handshakes:
                agent = await self._db(
                    self._agents.authenticate, pin, node=self.node, peer=peer.rsplit(":", 1)[0]
                )
        except AgentRefused:
            conn.close()
            return
        except SessionsError as exc:  # storage trouble: the agent retries with backoff
            log.warning("agent %s: could not be authenticated now: %s", peer, exc)
            conn.close()
            return
        now = self._clock.now()
        live = LiveAgent(agent.id, agent.name, conn, peer, now, now)
        old = self._live.get(agent.id)
        self._live[agent.id] = live
        self._by_conn[conn] = live
        if old is not None:
            old.conn.close()  # a newer tunnel from the same agent wins
        try:
            chan, _ = await conn.create_session(
                lambda: ControlSession(self._frames, live),
                subsystem=CONTROL_SUBSYSTEM,
                encoding=None,
                window=4 * MAX_FRAME,
            )
            live.control = chan
            await asyncio.wait_for(live.hello.wait(), self._settings.handshake_timeout_s)
        except TimeoutError:  # before OSError: TimeoutError is one of its subclasses
            self._frames.protocol_error(live, "no_hello", "no hello within the handshake timeout")
        except (asyncssh.Error, OSError):
            conn.close()

    def _lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        live = self._by_conn.pop(conn, None)
        if live is None:
            return
        if self._live.get(live.agent_id) is live:
            del self._live[live.agent_id]
            reason = str(exc) if exc else "closed"
            self._tasks.spawn(
                self._db(self._agents.disconnected, live.agent_id, node=self.node, reason=reason)
            )

    def _hello_accepted(self, live: LiveAgent, hello: Hello) -> None:
        """Store what the agent declared (on the gateway's writer thread)."""
        self._tasks.spawn(
            self._db(
                self._agents.report_inventory,
                live.agent_id,
                hello.endpoints,
                hostname=hello.hostname,
                version=hello.version,
            )
        )

    # ---- channels -----------------------------------------------------------------------

    async def open_channel(
        self, agent_id: str, host: str, port: int, *, expires_at: datetime, ref: str | None = None
    ) -> AgentChannel:
        """A channel to ``host:port`` through the agent, closed by the agent at ``expires_at``.

        Raises :class:`AgentUnavailable` if the agent has no tunnel to this broker and
        :class:`ChannelRefused` (with the agent's reason) if the agent or asset refuses.
        """
        live = self._live.get(agent_id)
        if live is None or not live.hello.is_set() or live.conn.is_closed():
            raise AgentUnavailable(f"agent {agent_id} is not connected to this broker")
        if live.channels >= self._settings.max_channels_per_agent:
            raise ChannelRefused("too many channels open through this agent")
        request = OpenRequest(host, port, expires_at.timestamp(), *([ref] if ref else []))
        # Its close (or refusal) report is expected from now on, whatever the reply says.
        live.expect(request.ref, 4 * self._settings.max_channels_per_agent)
        writer, reader, stderr, buf = await request_channel(
            live.conn, request, self._settings.open_timeout_s
        )
        line, _, rest = buf.partition(b"\n")
        try:
            ok, reason = parse_open_reply(line)
        except WireError as exc:
            writer.channel.close()
            self._frames.protocol_error(live, exc.code, f"bad open reply: {exc.message}")
            raise ChannelRefused("agent sent a malformed reply") from None
        if not ok:
            writer.channel.close()
            raise ChannelRefused(reason or "refused by the agent")
        live.channels += 1

        def closed() -> None:
            live.channels -= 1

        await self._audit.record(
            "agent.channel.opened",
            live,
            outcome="ok",
            ref=request.ref,
            endpoint=f"{host}:{port}",
            expires_at=expires_at.isoformat(),
        )
        channel = AgentChannel(reader, writer, rest, request.ref, closed, stderr)
        self._tasks.spawn(channel.wait_closed())
        return channel

    # ---- revoke, housekeeping -----------------------------------------------------------

    async def revoke(self, agent_id: str, *, actor: str) -> None:
        """Revoke the agent and drop its tunnel now; later connections fail the handshake."""
        agent = await self._db(self._agents.revoke, agent_id, actor=actor)
        if agent.public_key:
            self._add_revoked(agent.key_pin or "", agent.public_key)
        self._drop(agent_id, "revoked")

    def _drop(self, agent_id: str, why: str) -> None:
        live = self._live.get(agent_id)
        if live is None:
            return
        if live.control is not None:
            with contextlib.suppress(Exception):
                live.control.write(encode({"type": why}))
        live.conn.close()

    def _add_revoked(self, pin: str, public_key: str) -> None:
        if pin in self._revoked:
            return
        with contextlib.suppress(asyncssh.KeyImportError, ValueError):
            self._revoked_keys.append(asyncssh.import_public_key(public_key))
            self._revoked.add(pin)

    async def _refresh_revoked(self) -> None:
        for pin, public_key in await self._db(self._agents.revoked_keys):
            if pin not in self._revoked:
                self._add_revoked(pin, public_key)
                for live in list(self._live.values()):  # revoked through another broker
                    if key_pin(_public(live.conn)) == pin:
                        self._drop(live.agent_id, "revoked")

    async def _flush(self) -> None:
        """Write last-seen times that changed since the previous flush, in one statement."""
        seen = {
            a.agent_id: a.last_seen
            for a in self._live.values()
            if self._flushed.get(a.agent_id) != a.last_seen
        }
        try:
            await self._db(self._agents.touch, seen)
        except Exception:  # the next flush retries
            log.exception("writing agents' last-seen times failed")
            return
        self._flushed = {a.agent_id: a.last_seen for a in self._live.values()}

    async def _housekeeping(self) -> None:
        """Every ``HOUSEKEEPING_S``: revocations from other brokers; last-seen times every
        ``heartbeat_flush_s`` (counted in rounds, so no clock is read here)."""
        flush_every = max(1, math.ceil(self._settings.heartbeat_flush_s / HOUSEKEEPING_S))
        rounds = 0
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            rounds += 1
            try:
                await self._refresh_revoked()
                if rounds % flush_every == 0:
                    await self._flush()
            except Exception:  # the next round retries
                log.exception("agent gateway housekeeping failed")

    def _db(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run a database call on the gateway's writer thread."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(func, *args, **kwargs))


def _peer(conn: asyncssh.SSHClientConnection) -> str:
    peer = conn.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def _public(conn: asyncssh.SSHClientConnection) -> str:
    key = conn.get_server_host_key()
    return key.export_public_key().decode() if key is not None else ""
