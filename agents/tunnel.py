"""The agent's outbound tunnels: one SSH connection per broker, dialled out, never listened for.

For each broker address, :meth:`AgentRuntime.run` dials with ``asyncssh.connect_reverse`` and
plays the SSH *server* on that socket: its host key is the enrolled key with the broker-signed
certificate, and the only client it accepts is user ``conduit-broker`` holding the gateway key
pinned at join. Deny by default: no shell, no port forwarding, no subsystem but the control
channel; data channels go through :class:`agents.relay.ChannelTable`.

When a connection drops the dialler retries with exponential backoff and full jitter
(``backoff_initial_s`` doubling up to ``backoff_max_s``); a broker that says ``revoked`` is not
dialled again by this process. Losing a broker closes that broker's channels (their SSH channels
are gone); a broker that is silent but connected cannot keep a channel past its expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncssh

from agents import ssh_transport
from agents.config import AgentConfig
from agents.enrollment import Enrollment
from agents.relay import PEER_CLOSES, ChannelTable, Refused, relay
from agents.wire import (
    BROKER_USERNAME,
    CONTROL_SUBSYSTEM,
    FEATURE_EVENTS,
    MAX_CLOSE_REASON,
    MIN_HEARTBEAT_S,
    ChannelEvent,
    Heartbeat,
    Hello,
    LineFramer,
    OpenRequest,
    Welcome,
    WireError,
    encode_events,
    open_reply,
)

log = logging.getLogger("conduit.agent")

GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# Channel reports are gathered this long, then sent together (a mass close: a few frames).
EVENT_COALESCE_S = 0.05


class _Link:
    """One live connection to one broker, as seen by the agent.

    Everything the agent says on its own goes through here, paced so that a well-behaved agent
    stays far inside the broker's flood guard: channel reports are coalesced into ``events``
    frames when the broker accepts them, and heartbeats are sent at most once per
    :data:`~agents.wire.MIN_HEARTBEAT_S` and never queued behind an unsent one.
    """

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.control: asyncssh.SSHWriter[bytes] | None = None
        self.batch_events = False  # the broker's welcome offered ``events`` frames
        self._events: list[ChannelEvent] = []
        self._flush: asyncio.TimerHandle | None = None
        self._last_beat = -MIN_HEARTBEAT_S
        self._beat_later: asyncio.TimerHandle | None = None

    def send(self, data: bytes) -> None:
        if self.control is not None and not self.control.is_closing():
            with contextlib.suppress(OSError, asyncssh.Error):
                self.control.write(data)

    def report(self, event: ChannelEvent) -> None:
        """Tell the broker a channel was refused or closed (coalesced when it can take it)."""
        if not self.batch_events:
            self.send(event.encode())  # an older broker: one frame per report
            return
        self._events.append(event)
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(EVENT_COALESCE_S, self.flush_events)

    def flush_events(self) -> None:
        self._flush = None
        events, self._events = self._events, []
        for frame in encode_events(events):
            self.send(frame)

    def heartbeat(self, make: Callable[[], Heartbeat]) -> None:
        """Send a heartbeat now, or once the minimum interval has passed (one, not several)."""
        if self._beat_later is not None:
            return  # one is already due
        wait = self._last_beat + MIN_HEARTBEAT_S - time.monotonic()
        if wait > 0:
            loop = asyncio.get_running_loop()
            self._beat_later = loop.call_later(wait, self._beat_now, make)
            return
        self._beat_now(make)

    def _beat_now(self, make: Callable[[], Heartbeat]) -> None:
        self._beat_later = None
        control = self.control
        if control is None:
            return
        with contextlib.suppress(Exception):
            if control.channel.get_write_buffer_size() > 0:
                return  # the previous report has not left yet: a newer one follows later
        self._last_beat = time.monotonic()
        self.send(make().encode())

    def close(self) -> None:
        """The control channel ended: nothing more can be said on this link."""
        for handle in (self._flush, self._beat_later):
            if handle is not None:
                handle.cancel()
        self._flush = self._beat_later = None
        self._events.clear()
        self.control = None
        self.batch_events = False


class _Server(asyncssh.SSHServer):
    def __init__(self, runtime: AgentRuntime, link: _Link) -> None:
        self._runtime, self._link = runtime, link

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = username == BROKER_USERNAME and key.public_data == self._runtime.broker_key_data
        if not ok:
            log.warning(
                "broker %s: refused client %r (not the pinned broker key)",
                self._link.broker,
                username,
            )
        return ok

    def session_requested(self) -> Any:
        # A stream handler: asyncssh wraps it in a stream session (flow control included).
        return self._runtime.session_handler(self._link)


class AgentRuntime:
    """Keeps a tunnel to every broker and serves data channels within the declared endpoints."""

    def __init__(
        self,
        config: AgentConfig,
        enrollment: Enrollment,
        *,
        version: str,
        wall: Callable[[], float] = time.time,
        hostname: str | None = None,
    ) -> None:
        self.config, self.enrollment, self.version = config, enrollment, version
        self.table = ChannelTable(config, wall)
        self.hostname = hostname or socket.gethostname()
        self.broker_key_data = enrollment.broker_key.public_data
        self.links: dict[str, _Link] = {}
        self.revoked_by: set[str] = set()
        self._stop = asyncio.Event()

    @property
    def brokers(self) -> tuple[str, ...]:
        return self.config.brokers or self.enrollment.gateways

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Dial every broker until :meth:`stop`; returns once all diallers ended."""
        ssh_transport.install()
        diallers = [asyncio.create_task(self._dial_loop(addr)) for addr in self.brokers]
        try:
            await self._stop.wait()
        finally:
            self.table.close_all("agent stopping")
            for task in diallers:
                task.cancel()
            for task in diallers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def stop(self) -> None:
        self._stop.set()

    def engage_kill_switch(self) -> int:
        closed = self.table.engage_kill_switch()
        log.warning("kill switch engaged: %d channel(s) closed; new channels refused", closed)
        self._heartbeat_all()
        return closed

    def release_kill_switch(self) -> None:
        self.table.release_kill_switch()
        log.warning("kill switch released: channels may be opened again")
        self._heartbeat_all()

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(self.table.infos(), self.table.kill_switch)

    def _heartbeat_all(self) -> None:
        for link in self.links.values():
            link.heartbeat(self._heartbeat)

    async def _dial_loop(self, address: str) -> None:
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        delay = self.config.backoff_initial_s
        while not self._stop.is_set() and address not in self.revoked_by:
            link = _Link(address)
            started = time.monotonic()
            try:
                conn = await asyncssh.connect_reverse(
                    host,
                    int(port_text),
                    server_factory=lambda link=link: _Server(self, link),
                    server_host_keys=[(self.enrollment.key, self.enrollment.certificate)],
                    encryption_algs=GCM,
                    keepalive_interval=self.config.keepalive_s,
                    keepalive_count_max=3,
                    connect_timeout=self.config.connect_timeout_s,
                    login_timeout=self.config.connect_timeout_s * 2,
                    config=None,
                    x509_trusted_certs=None,
                    gss_host=None,
                    kbdint_auth=False,
                    password_auth=False,
                    allow_pty=False,
                    encoding=None,
                    line_editor=False,
                    window=4 << 20,  # both ends are asyncssh: big packets, fewer of them
                    max_pktsize=128 << 10,
                    agent_forwarding=False,
                    x11_forwarding=False,
                )
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                log.info("broker %s unreachable: %s", address, exc)
            else:
                log.info("tunnel to broker %s up", address)
                self.links[address] = link
                try:
                    await conn.wait_closed()
                finally:
                    self.links.pop(address, None)
                    closed = self.table.close_all("broker connection lost", broker=address)
                    log.info("tunnel to broker %s down (%d channel(s) closed)", address, closed)
                if time.monotonic() - started > 30:
                    delay = self.config.backoff_initial_s  # it was healthy: retry fast
            if self._stop.is_set() or address in self.revoked_by:
                break
            # Full jitter keeps a fleet of agents from reconnecting in lockstep.
            await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311
            delay = min(self.config.backoff_max_s, delay * 2)

    # ---- channels -----------------------------------------------------------------------

    def session_handler(
        self, link: _Link
    ) -> Callable[
        [asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes], asyncssh.SSHWriter[bytes]],
        Awaitable[None],
    ]:
        async def handle(
            stdin: asyncssh.SSHReader[bytes],
            stdout: asyncssh.SSHWriter[bytes],
            stderr: asyncssh.SSHWriter[bytes],
        ) -> None:
            chan = cast("asyncssh.SSHServerChannel[bytes]", stdout.channel)
            subsystem, command = chan.get_subsystem(), chan.get_command()
            try:
                if subsystem == CONTROL_SUBSYSTEM and link.control is None:
                    await self._control(link, stdin, stdout)
                elif subsystem is None and command:
                    await self._data(link, command, stdin, stdout, stderr)
                else:
                    log.warning("broker %s asked for an unsupported channel; refused", link.broker)
                    stdout.write(open_reply(False, "unsupported channel"))
            except (OSError, asyncssh.Error) as exc:
                log.info("broker %s: channel ended: %s", link.broker, exc)
            except Exception:
                log.exception("broker %s: channel handler failed", link.broker)
            finally:
                with contextlib.suppress(Exception):
                    chan.exit(0)

        return handle

    async def _control(
        self, link: _Link, stdin: asyncssh.SSHReader[bytes], stdout: asyncssh.SSHWriter[bytes]
    ) -> None:
        link.control = stdout
        e = self.enrollment
        stdout.write(
            Hello(
                agent_id=e.agent_id,
                version=self.version,
                hostname=self.hostname[:128] or "unknown",
                endpoints=self.config.endpoints,
                kill_switch=self.table.kill_switch,
            ).encode()
        )
        beat = asyncio.create_task(self._beat(link))
        framer = LineFramer()
        try:
            while True:
                data = await stdin.read(4096)
                if not data:
                    return
                for frame in framer.feed(data):
                    if frame.get("type") == "welcome":
                        link.batch_events = FEATURE_EVENTS in Welcome.parse(frame).features
                    elif frame.get("type") == "revoked":
                        log.error(
                            "broker %s: this agent was revoked; not reconnecting", link.broker
                        )
                        self.revoked_by.add(link.broker)
                        self.table.close_all("agent revoked", broker=link.broker)
                        stdout.channel.get_connection().close()
                        return
        except WireError as exc:
            log.error(
                "broker %s sent a malformed control frame (%s); dropping", link.broker, exc.message
            )
            stdout.channel.get_connection().close()
        finally:
            beat.cancel()
            link.close()

    async def _beat(self, link: _Link) -> None:
        while True:
            await asyncio.sleep(max(self.config.heartbeat_s, MIN_HEARTBEAT_S))
            link.heartbeat(self._heartbeat)

    async def _data(
        self,
        link: _Link,
        command: str,
        stdin: asyncssh.SSHReader[bytes],
        stdout: asyncssh.SSHWriter[bytes],
        stderr: asyncssh.SSHWriter[bytes],
    ) -> None:
        try:
            request = OpenRequest.parse_command(command)
        except WireError as exc:
            log.warning("broker %s sent a malformed open request: %s", link.broker, exc.message)
            stdout.write(open_reply(False, f"malformed open request: {exc.message}"))
            return
        try:
            channel = self.table.admit(request, link.broker)
        except Refused as exc:
            self._refused(link, request, str(exc))
            stdout.write(open_reply(False, str(exc)))
            return
        try:
            try:
                asset_reader, asset_writer = await asyncio.wait_for(
                    asyncio.open_connection(request.host, request.port),
                    min(self.config.target_timeout_s, self.table.seconds_left(channel)),
                )
            except (TimeoutError, OSError) as exc:
                reason = f"cannot connect to {request.host}:{request.port}: {exc or 'timeout'}"
                self._refused(link, request, reason)
                stdout.write(open_reply(False, reason))
                return
            with contextlib.suppress(OSError):
                sock = asset_writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stdout.write(open_reply(True))
            log.info("channel %s to %s:%s opened", request.ref, request.host, request.port)
            reason = await relay(self.table, channel, stdin, stdout, asset_reader, asset_writer)
            log.info("channel %s closed: %s", request.ref, reason)
            if reason not in PEER_CLOSES:  # the agent ended it: say why (see agents.wire)
                with contextlib.suppress(OSError, asyncssh.Error):
                    stderr.write(f"{reason[:MAX_CLOSE_REASON]}\n".encode())
            link.report(ChannelEvent("closed", request.ref, request.host, request.port, reason))
        finally:
            self.table.release(channel)

    def _refused(self, link: _Link, request: OpenRequest, reason: str) -> None:
        log.warning(
            "channel %s to %s:%s refused: %s", request.ref, request.host, request.port, reason
        )
        link.report(ChannelEvent("refused", request.ref, request.host, request.port, reason))
