"""The agent gateway: accepts agents' outbound tunnels and opens channels to their assets.

Agents dial in (``asyncssh.listen_reverse``); the broker runs the SSH *client* role on each
accepted socket. An agent is let in only if its host key carries a certificate from the agent
CA for principal ``conduit-agent``, the key is not revoked (checked in the handshake from an
in-memory set, then against the database), and its first control frame (``hello``, within
``handshake_timeout_s``) names the same agent. A newer tunnel from the same agent replaces the
older one.

Hostile agents: every control frame is size-limited and validated (:mod:`agents.wire`), frame
rate is capped, and any violation drops that agent's connection with an ``agent.protocol_error``
audit event; nothing an agent sends blocks the event loop (database writes run in threads).

The flood guard counts only what the agent says on its own: its hello and heartbeats (a
well-behaved agent sends at most one heartbeat per second) and anything unexpected. A
``closed``/``refused`` report for a channel this broker asked the agent for is the protocol's
own traffic and costs nothing, once per channel, however many arrive together (a mass kill
closes hundreds of channels within a second); a report for a channel nobody asked for, or a
second report for the same channel, counts like any other frame. After a valid hello the
broker sends ``welcome``, offering ``events`` frames that carry many reports at once.

:meth:`AgentGateway.open_channel` asks the agent to connect to ``host:port`` until
``expires_at``; it returns an :class:`AgentChannel` or raises :class:`AgentUnavailable` /
:class:`ChannelRefused` (with the agent's reason). Owner: the app's lifespan (start/aclose).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncssh

from agents import ssh_transport
from agents.wire import (
    AGENT_PRINCIPAL,
    BROKER_USERNAME,
    CONTROL_SUBSYSTEM,
    MAX_CLOSE_REASON,
    MAX_FRAME,
    ChannelEvent,
    Heartbeat,
    Hello,
    LineFramer,
    OpenRequest,
    Welcome,
    WireError,
    encode,
    key_pin,
    parse_events,
    parse_open_reply,
)
from broker.keys.agent import AgentKeys
from broker.runtime.errors import BrokerError
from broker.runtime.settings import AgentSettings
from sessions.agents.base import AgentRefused
from sessions.agents.service import AgentService
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.errors import SessionsError

log = logging.getLogger("conduit.gateway")
T = TypeVar("T")

GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
REPLY_LIMIT = 4096
# Both ends are asyncssh: big packets and window cut per-packet work on bulk transfers.
CHANNEL_WINDOW = 4 << 20
CHANNEL_PACKET = 128 << 10


CLOSE_REASON_WAIT_S = 1.0


class AgentUnavailable(BrokerError):
    code = "agent_offline"
    status = 503


class ChannelRefused(BrokerError):
    code = "channel_refused"
    status = 502


@dataclass(eq=False)
class LiveAgent:
    """One connected agent, as this broker sees it (health for the admin views)."""

    agent_id: str
    name: str
    conn: asyncssh.SSHClientConnection
    peer: str
    connected_at: datetime
    last_seen: datetime
    version: str = ""
    hostname: str = ""
    endpoints: int = 0
    kill_switch: bool = False
    channels: int = 0  # channels this broker opened and has not seen closed
    agent_channels: int = 0  # what the agent's last heartbeat reported
    control: asyncssh.SSHClientChannel[bytes] | None = None
    hello: asyncio.Event = field(default_factory=asyncio.Event)
    # Refs of channels this broker asked for whose close/refusal the agent has not reported:
    # those reports are expected protocol traffic, exempt from the flood guard (once each).
    expected: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _window_start: float = 0.0
    _window_frames: int = 0

    def expect(self, ref: str, limit: int) -> None:
        self.expected[ref] = None
        while len(self.expected) > limit:  # channels whose report never came: forget the oldest
            self.expected.popitem(last=False)


class AgentChannel:
    """A byte stream to an asset through an agent (``read``/``write``/``drain``/``close``)."""

    def __init__(
        self,
        reader: asyncssh.SSHReader[bytes],
        writer: asyncssh.SSHWriter[bytes],
        prefix: bytes,
        ref: str,
        on_close: Callable[[], None],
        stderr: asyncssh.SSHReader[bytes] | None = None,
    ) -> None:
        self._reader, self._writer, self._prefix = reader, writer, prefix
        self._stderr = stderr
        self.ref = ref
        self._on_close: Callable[[], None] | None = on_close

    async def read(self, n: int = -1) -> bytes:
        if self._prefix:
            data, self._prefix = (
                (self._prefix, b"") if n < 0 else (self._prefix[:n], self._prefix[n:])
            )
            return data
        try:
            return await self._reader.read(n)
        except (asyncssh.Error, OSError):
            return b""

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def close_reason(self) -> str:
        """The agent's close reason (its stderr line, see :mod:`agents.wire`), once the
        channel has ended; "" if it gave none."""
        if self._stderr is None:
            return ""
        try:
            async with asyncio.timeout(CLOSE_REASON_WAIT_S):  # it comes before the close
                data = await self._stderr.read(MAX_CLOSE_REASON + 1)
        except (TimeoutError, asyncssh.Error, OSError):
            return ""
        lines = data.decode("utf-8", "replace").splitlines()
        return lines[0][:MAX_CLOSE_REASON] if lines else ""  # ChannelEnd.said cleans it

    async def drain(self) -> None:
        await self._writer.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._writer.write_eof()

    def close(self) -> None:
        self._writer.channel.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    async def wait_closed(self) -> None:
        await self._writer.channel.wait_closed()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


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


class _ControlSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self, gateway: AgentGateway, live: LiveAgent) -> None:
        self._gateway, self._live = gateway, live
        self._framer = LineFramer(MAX_FRAME)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        try:
            frames = self._framer.feed(data)
        except WireError as exc:
            self._gateway._protocol_error(self._live, exc.code, exc.message)
            return
        for frame in frames:
            try:
                self._gateway._on_frame(self._live, frame)
            except WireError as exc:
                self._gateway._protocol_error(self._live, exc.code, exc.message)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        live = self._live
        if live.control is not None and not live.conn.is_closed():
            # The control channel is the agent's lifeline: without it, the tunnel is dropped.
            live.conn.close()


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
        self._audit, self._clock = audit, clock
        self._live: dict[str, LiveAgent] = {}
        self._by_conn: dict[asyncssh.SSHClientConnection, LiveAgent] = {}
        self._revoked: set[str] = set()
        self._revoked_keys: list[asyncssh.SSHKey] = []
        self._server: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ca = asyncssh.import_public_key(keys.ca_public)
        self.port = 0
        self.node = settings.node_name
        self.loop: asyncio.AbstractEventLoop | None = None
        # One writer thread for the gateway's database work: thousands of agents reconnecting
        # at once queue here instead of fighting over the database write lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-gateway-db")
        self._handshakes = asyncio.Semaphore(64)
        self._flushed: dict[str, datetime] = {}

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
        self._spawn(self._housekeeping())
        log.info("agent gateway listening on %s:%s", s.listen_host, self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for live in list(self._live.values()):
            live.conn.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
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
        reason = type(exc).__name__
        log.info("agent handshake from %s failed: %s", peer, exc)
        self._spawn(
            self._db(
                self._audit.append,
                "agent.connect.refused",
                actor="anonymous",
                outcome="deny",
                subject=f"peer:{peer}",
                source_ip=peer.rsplit(":", 1)[0],
                details={"reason": reason, "detail": str(exc)[:200], "node": self.node},
            )
        )

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
                lambda: _ControlSession(self, live),
                subsystem=CONTROL_SUBSYSTEM,
                encoding=None,
                window=4 * MAX_FRAME,
            )
            live.control = chan
            await asyncio.wait_for(live.hello.wait(), self._settings.handshake_timeout_s)
        except TimeoutError:  # before OSError: TimeoutError is one of its subclasses
            self._protocol_error(live, "no_hello", "no hello within the handshake timeout")
        except (asyncssh.Error, OSError):
            conn.close()

    def _lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        live = self._by_conn.pop(conn, None)
        if live is None:
            return
        if self._live.get(live.agent_id) is live:
            del self._live[live.agent_id]
            reason = str(exc) if exc else "closed"
            self._spawn(
                self._db(self._agents.disconnected, live.agent_id, node=self.node, reason=reason)
            )

    # ---- control frames -----------------------------------------------------------------

    def _charge(self, live: LiveAgent, frames: int) -> None:
        """Count ``frames`` the agent sent on its own against ``agents.max_frames_per_s``."""
        now = time.monotonic()
        if now - live._window_start >= 1.0:
            live._window_start, live._window_frames = now, 0
        live._window_frames += frames
        if live._window_frames > self._settings.max_frames_per_s:
            raise WireError("control frame rate exceeded", code="flood")

    def _on_frame(self, live: LiveAgent, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if live.hello.is_set() and kind in ("refused", "closed", "events"):
            events = parse_events(frame) if kind == "events" else (ChannelEvent.parse(frame),)
            unexpected = 0
            for event in events:
                if event.ref in live.expected:
                    del live.expected[event.ref]
                else:
                    unexpected += 1
            if unexpected:  # a frame reporting only channels we asked for costs nothing
                self._charge(live, 1 + unexpected if kind == "events" else 1)
            live.last_seen = self._clock.now()
            for event in events:
                self._record(
                    f"agent.channel.{event.kind}",
                    live,
                    outcome="deny" if event.kind == "refused" else "ok",
                    ref=event.ref,
                    endpoint=f"{event.host}:{event.port}",
                    reason=event.reason,
                )
            return
        self._charge(live, 1)
        live.last_seen = self._clock.now()
        if not live.hello.is_set():
            hello = Hello.parse(frame)
            if hello.agent_id != live.agent_id:
                raise WireError("hello names another agent", code="identity")
            live.version, live.hostname = hello.version, hello.hostname
            live.endpoints, live.kill_switch = len(hello.endpoints), hello.kill_switch
            live.hello.set()
            if live.control is not None:
                with contextlib.suppress(OSError, asyncssh.Error):
                    live.control.write(Welcome().encode())
            self._spawn(
                self._db(
                    self._agents.report_inventory,
                    live.agent_id,
                    hello.endpoints,
                    hostname=hello.hostname,
                    version=hello.version,
                )
            )
        elif kind == "heartbeat":
            beat = Heartbeat.parse(frame)
            live.agent_channels, live.kill_switch = beat.count, beat.kill_switch
        else:
            raise WireError(f"unexpected control frame {str(kind)[:40]!r}", code="unexpected")

    def _protocol_error(self, live: LiveAgent, code: str, message: str) -> None:
        if live.conn.is_closed():
            return
        log.warning("agent %s: protocol error %s: %s; dropping", live.agent_id, code, message)
        self._record("agent.protocol_error", live, outcome="error", code=code, message=message)
        live.conn.close()

    def _record(self, kind: str, live: LiveAgent, *, outcome: str, **details: Any) -> None:
        self._spawn(
            self._db(
                self._audit.append,
                kind,
                actor=f"agent:{live.agent_id}",
                outcome=outcome,
                subject=f"agent:{live.agent_id}",
                details={**details, "node": self.node},
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
        opened: list[asyncssh.SSHWriter[bytes]] = []  # to close if no valid reply comes
        try:
            async with asyncio.timeout(self._settings.open_timeout_s):
                writer, reader, stderr = await live.conn.open_session(
                    command=request.encode_command(),
                    encoding=None,
                    window=CHANNEL_WINDOW,
                    max_pktsize=CHANNEL_PACKET,
                )
                opened.append(writer)
                buf = b""
                while b"\n" not in buf:
                    chunk = await reader.read(REPLY_LIMIT)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > REPLY_LIMIT and b"\n" not in buf:
                        break
        except TimeoutError:
            for w in opened:
                w.channel.close()
            raise ChannelRefused(
                f"agent did not answer within {self._settings.open_timeout_s} s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            for w in opened:
                w.channel.close()
            raise ChannelRefused(f"agent refused the channel: {exc}") from None
        line, _, rest = buf.partition(b"\n")
        try:
            ok, reason = parse_open_reply(line)
        except WireError as exc:
            writer.channel.close()
            self._protocol_error(live, exc.code, f"bad open reply: {exc.message}")
            raise ChannelRefused("agent sent a malformed reply") from None
        if not ok:
            writer.channel.close()
            raise ChannelRefused(reason or "refused by the agent")
        live.channels += 1

        def closed() -> None:
            live.channels -= 1

        self._record(
            "agent.channel.opened",
            live,
            outcome="ok",
            ref=request.ref,
            endpoint=f"{host}:{port}",
            expires_at=expires_at.isoformat(),
        )
        channel = AgentChannel(reader, writer, rest, request.ref, closed, stderr)
        self._spawn(channel.wait_closed())
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
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(2.0)
            try:
                await self._refresh_revoked()
                if time.monotonic() - last_flush >= self._settings.heartbeat_flush_s:
                    last_flush = time.monotonic()
                    await self._flush()
            except Exception:  # the next round retries
                log.exception("agent gateway housekeeping failed")

    def _db(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run a database call on the gateway's writer thread."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(func, *args, **kwargs))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent gateway task failed: %r", task.exception())


def _peer(conn: asyncssh.SSHClientConnection) -> str:
    peer = conn.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def _public(conn: asyncssh.SSHClientConnection) -> str:
    key = conn.get_server_host_key()
    return key.export_public_key().decode() if key is not None else ""
