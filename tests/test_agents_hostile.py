"""Hostile agents cannot crash, stall or confuse the agent gateway.

Each test dials the real broker's agent gateway with a misbehaving agent written here (asyncssh
``connect_reverse``, mostly with an identity genuinely enrolled through ``conduit-agent join``),
or with raw TCP, and then checks two things: the audit trail names what happened
(``agent.protocol_error`` with its code, or ``agent.connect.refused``), and the broker still
serves — ``/healthz`` answers, and a well-behaved ``conduit-agent`` (connected throughout) kept
its tunnel, relays bytes to an echo asset, and re-dials successfully when its tunnel is dropped.

One broker serves the whole module (short handshake and open timeouts) to keep it fast; every
check looks only at audit events recorded after its test started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import asyncssh
import httpx2
import pytest

from agents.enrollment import Enrollment, load_enrollment
from agents.wire import (
    AGENT_PRINCIPAL,
    CONTROL_SUBSYSTEM,
    MAX_FRAME,
    ChannelEvent,
    Endpoint,
    Heartbeat,
    Hello,
    OpenRequest,
    encode,
    encode_events,
    key_pin,
    open_reply,
)
from broker.dev.demo import seed
from broker.gateway.channel import AgentChannel, ChannelRefused
from broker.gateway.live_agent import LiveAgent
from broker.runtime.settings import load_settings
from tests.conftest import CLIENT_ID
from tests.harness.agent import (
    AgentProcess,
    EchoAsset,
    gateway,
    join,
    make_token,
    wait_connected,
    write_config,
)
from tests.harness.broker import RunningBroker, audit_events, start_broker
from tests.harness.idp import RunningIdP
from tests.harness.wait import async_wait_until, wait_until

T = TypeVar("T")

# The broker's timeouts under test. The good agent must beat them on a loaded machine too
# (its re-dial in assert_healthy, its answers in assert_relays): 1 s was too tight there.
HANDSHAKE_S = 3.0
OPEN_S = 3.0
# The deadline for the broker to drop a misbehaving agent: generous (a loaded machine is slow,
# not wrong) yet below the gateway's 60 s keep-alive, so only the check under test can drop it.
# How fast it happens is not asserted here; lower bounds (not dropped too early) are.
DROP_S = 30.0

Reader = asyncssh.SSHReader[bytes]
Writer = asyncssh.SSHWriter[bytes]
Behaviour = Callable[[Reader, Writer], Awaitable[None]]


# --------------------------------------------------------------------------- the plant


@dataclass
class Plant:
    """The module's broker, an echo asset, a well-behaved agent and an enrolled hostile identity.

    The well-behaved ``conduit-agent`` stays connected throughout, so every test also shows that
    a hostile agent cannot disturb a live tunnel; :meth:`assert_healthy` then makes it dial again.
    """

    broker: RunningBroker
    echo: EchoAsset
    good: AgentProcess
    good_id: str
    hostile: Enrollment
    _before: LiveAgent | None = None

    @property
    def port(self) -> int:
        return gateway(self.broker).port

    def good_live(self) -> LiveAgent:
        wait_connected(self.broker, self.good_id)
        return gateway(self.broker).live()[self.good_id]

    def mark(self) -> int:
        """Start of a test: remember the good agent's tunnel; returns the last audit seq."""
        self._before = self.good_live()
        return max((e["seq"] for e in audit_events(self.broker)), default=0)

    def events(self, kind: str, since: int, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in audit_events(self.broker, kind)
            if e["seq"] > since
            and all(e.get(k) == v or e["details"].get(k) == v for k, v in match.items())
        ]

    def wait_event(
        self, kind: str, since: int, timeout: float = DROP_S, **match: Any
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not (found := self.events(kind, since, **match)):
            if time.monotonic() > deadline:
                seen = [(e["kind"], e["subject"], e["details"]) for e in audit_events(self.broker)]
                raise AssertionError(f"no {kind} {match} after seq {since}; events: {seen[-8:]}")
            time.sleep(0.02)
        return found[0]

    def assert_healthy(self) -> None:
        """The broker answers; the good agent's tunnel survived, relays, and it can re-dial."""
        resp = httpx2.get(f"{self.broker.url}/healthz", timeout=DROP_S)
        assert resp.status_code == 200, resp.text
        live = gateway(self.broker).live().get(self.good_id)
        assert live is not None and live is self._before, "the good agent's tunnel was disturbed"
        assert not live.conn.is_closed()
        self.assert_relays()
        # A fresh connection is still accepted: drop the tunnel and let the agent dial again.
        loop = gateway(self.broker).loop
        assert loop is not None
        loop.call_soon_threadsafe(live.conn.close)
        deadline = time.monotonic() + DROP_S
        while (again := gateway(self.broker).live().get(self.good_id)) is live or again is None:
            assert time.monotonic() < deadline, (
                f"the good agent did not reconnect:\n{self.good.log}"
            )
            time.sleep(0.02)
        wait_connected(self.broker, self.good_id)
        self.assert_relays()

    def assert_relays(self) -> None:
        payload = os.urandom(32 * 1024)
        assert on_loop(self.broker, echo_through(self, payload)) == payload


def on_loop(broker: RunningBroker, coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
    loop = gateway(broker).loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def on_loop_async(broker: RunningBroker, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the broker's loop from another loop (the hostile agent's)."""
    loop = gateway(broker).loop
    assert loop is not None
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


def open_channel(p: Plant, agent_id: str) -> Coroutine[Any, Any, AgentChannel]:
    expires = datetime.now(UTC) + timedelta(minutes=2)
    return gateway(p.broker).open_channel(agent_id, "127.0.0.1", p.echo.port, expires_at=expires)


async def echo_through(p: Plant, payload: bytes) -> bytes:
    channel = await open_channel(p, p.good_id)
    try:
        channel.write(payload)
        await channel.drain()
        got = b""
        while len(got) < len(payload):
            chunk = await asyncio.wait_for(channel.read(65536), 5)
            assert chunk, "channel closed before the echo came back"
            got += chunk
        return got
    finally:
        channel.close()


@pytest.fixture(scope="module")
def plant(
    tmp_path_factory: pytest.TempPathFactory, broker_port: int, idp: RunningIdP, client_secret: str
) -> Iterator[Plant]:
    root = tmp_path_factory.mktemp("hostile")
    # Module-scoped (conftest's make_broker is per test): mirrors conftest.make_settings.
    settings = load_settings(
        None,
        mode="dev",
        public_url=f"http://127.0.0.1:{broker_port}",
        listen_port=broker_port,
        database_url=f"sqlite:///{root / 'conduit.db'}",
        data_dir=root / "var",
        agents={"listen_port": 0, "handshake_timeout_s": HANDSHAKE_S, "open_timeout_s": OPEN_S},
        ssh={"listen_port": 0},
        oidc={"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": client_secret},
    )
    broker = start_broker(settings)
    echo = EchoAsset()
    good: AgentProcess | None = None
    try:
        seed(settings.database_url)
        endpoints = [("127.0.0.1", echo.port, "tcp")]
        # backoff_max_s keeps its re-dial (after each test drops it) quick.
        good_config = write_config(root / "good", endpoints, backoff_max_s=0.25)
        good_id = join(broker, make_token(broker), good_config)
        # A genuine identity (``conduit-agent join``) for the hostile agents to abuse.
        join(broker, make_token(broker), write_config(root / "hostile", endpoints))
        good = AgentProcess.start(good_config)
        p = Plant(broker, echo, good, good_id, load_enrollment(root / "hostile" / "state"))
        p.mark()
        p.assert_healthy()  # the baseline every test compares against
        yield p
    finally:
        if good is not None:
            good.stop()
        echo.close()
        broker.stop()


# --------------------------------------------------------------------------- hostile agent


async def until_closed(stdin: Reader) -> None:
    with contextlib.suppress(asyncssh.Error, OSError):
        while await stdin.read(65536):
            pass


@dataclass
class Hostile(asyncssh.SSHServer):
    """The SSH-server half of an agent, serving control/data channels with ``behaviour``."""

    control: Behaviour | None = None
    data: Behaviour | None = None
    commands: list[str] = field(default_factory=list)
    data_done: asyncio.Event = field(default_factory=asyncio.Event)  # a data channel ended

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True

    def session_requested(self) -> Any:
        async def handle(stdin: Reader, stdout: Writer, stderr: Writer) -> None:
            chan = cast("asyncssh.SSHServerChannel[bytes]", stdout.channel)
            if chan.get_subsystem() == CONTROL_SUBSYSTEM and self.control is not None:
                await self.control(stdin, stdout)
            elif chan.get_command() and self.data is not None:
                self.commands.append(chan.get_command() or "")
                try:
                    await self.data(stdin, stdout)
                finally:
                    self.data_done.set()
            with contextlib.suppress(Exception):
                chan.exit(0)

        return handle


async def dial(
    port: int,
    host_keys: list[Any],
    server: Hostile,
    sock: socket.socket | None = None,
) -> asyncssh.SSHServerConnection:
    return await asyncssh.connect_reverse(
        "127.0.0.1",
        port,
        sock=sock,
        server_factory=lambda: server,
        server_host_keys=host_keys,
        config=None,
        x509_trusted_certs=None,
        gss_host=None,
        kbdint_auth=False,
        password_auth=False,
        allow_pty=False,
        encoding=None,
        line_editor=False,
        agent_forwarding=False,
        x11_forwarding=False,
        login_timeout=10,
    )


def identity(e: Enrollment) -> list[Any]:
    return [(e.key, e.certificate)]


def hello_for(e: Enrollment, agent_id: str | None = None) -> bytes:
    endpoint = Endpoint("127.0.0.1", 9, "tcp")
    return Hello(agent_id or e.agent_id, "0.0.0-hostile", "hostile", (endpoint,)).encode()


def run(coro: Coroutine[Any, Any, T], timeout: float = 3 * DROP_S) -> T:
    """Run the hostile agent on its own event loop (the broker has another, in its thread)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def dropped(conn: asyncssh.SSHServerConnection, within: float = DROP_S) -> float:
    start = time.monotonic()
    await asyncio.wait_for(conn.wait_closed(), within)
    return time.monotonic() - start


def connected_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def peer_subject(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"peer:{host}:{port}"


# --------------------------------------------------------------------------- control channel abuse


def writes(*chunks: bytes) -> Behaviour:
    async def control(stdin: Reader, stdout: Writer) -> None:
        for chunk in chunks:
            stdout.write(chunk)
        with contextlib.suppress(asyncssh.Error, OSError):
            await stdout.drain()
        await until_closed(stdin)

    return control


def flood(first: bytes, frame: bytes, count: int) -> Behaviour:
    async def control(stdin: Reader, stdout: Writer) -> None:
        stdout.write(first)
        with contextlib.suppress(asyncssh.Error, OSError):
            for i in range(count):
                stdout.write(frame)
                if i % 100 == 0:
                    await stdout.drain()
        await until_closed(stdin)

    return control


def silent() -> Behaviour:
    async def control(stdin: Reader, stdout: Writer) -> None:
        await until_closed(stdin)

    return control


HEARTBEAT = Heartbeat().encode()
BOGUS_EVENT = ChannelEvent("closed", "ch-nobody-asked", "127.0.0.1", 9, "asset side closed")
CLOSED = BOGUS_EVENT.encode()
OVERFLOW = (
    b'{"type":"heartbeat","channels":[{"ref":"c","host":"h","port":1,"expires_at":1'
    + b"0" * 400
    + b"}]}\n"
)
CONTROL_CASES: dict[str, tuple[Callable[[Enrollment, Plant], Behaviour], str]] = {
    "malformed-json": (lambda e, p: writes(b'{"type": "hello", oops\n'), "malformed"),
    "malformed-after-hello": (lambda e, p: writes(hello_for(e), b"\x00\xff\n"), "malformed"),
    "not-an-object": (lambda e, p: writes(hello_for(e), b'["heartbeat"]\n'), "malformed"),
    "huge-frame": (
        lambda e, p: writes(b'{"type":"hello","pad":"' + b"x" * (MAX_FRAME + 10)),
        "frame_too_large",
    ),
    "10mb-blob": (lambda e, p: writes(hello_for(e), b"A" * 10_000_000), "frame_too_large"),
    "heartbeat-flood": (lambda e, p: flood(hello_for(e), HEARTBEAT, 5000), "flood"),
    "hello-as-another-agent": (lambda e, p: writes(hello_for(e, p.good_id)), "identity"),
    "no-hello": (lambda e, p: silent(), "no_hello"),
    "heartbeat-before-hello": (lambda e, p: writes(HEARTBEAT), "unexpected"),
    "protocol-version-as-bool": (
        lambda e, p: writes(hello_for(e).replace(b'"protocol":1', b'"protocol":true')),
        "version",
    ),
    "bad-hello-host": (
        lambda e, p: writes(hello_for(e).replace(b'"127.0.0.1"', b'"evil host;"')),
        "malformed",
    ),
    "unknown-frame-type": (
        lambda e, p: writes(hello_for(e), encode({"type": "shell", "cmd": "id"})),
        "unexpected",
    ),
    "second-hello": (lambda e, p: writes(hello_for(e), hello_for(e)), "unexpected"),
    # Reports of channels the broker never asked for are the agent talking on its own.
    "closed-flood-unknown-channels": (lambda e, p: flood(hello_for(e), CLOSED, 5000), "flood"),
    "events-batch-of-unknown-channels": (
        lambda e, p: writes(hello_for(e), *encode_events([BOGUS_EVENT] * 200)),
        "flood",
    ),
    "empty-events-batch": (
        lambda e, p: writes(hello_for(e), encode({"type": "events", "events": []})),
        "malformed",
    ),
    "events-before-hello": (lambda e, p: writes(*encode_events([BOGUS_EVENT])), "unexpected"),
    "heartbeat-number-overflow": (lambda e, p: writes(hello_for(e), OVERFLOW), "malformed"),
}


@pytest.mark.parametrize("case", list(CONTROL_CASES))
def test_control_channel_abuse_drops_only_that_agent(plant: Plant, case: str) -> None:
    make, code = CONTROL_CASES[case]
    e = plant.hostile
    since = plant.mark()

    async def scenario() -> float:
        conn = await dial(plant.port, identity(e), Hostile(control=make(e, plant)))
        return await dropped(conn, DROP_S + (HANDSHAKE_S if code == "no_hello" else 0))

    took = run(scenario())
    event = plant.wait_event("agent.protocol_error", since, subject=f"agent:{e.agent_id}")
    assert event["details"]["code"] == code, event
    assert event["outcome"] == "error"
    assert len(plant.events("agent.protocol_error", since)) == 1  # one event, not one per chunk
    if code == "no_hello":  # dropped by the handshake timeout, not before it
        assert took >= HANDSHAKE_S * 0.8, took
    assert e.agent_id not in gateway(plant.broker).live()
    plant.assert_healthy()


# --------------------------------------------------------------------------- data channel abuse


async def wait_hello(p: Plant, agent_id: str) -> None:
    deadline = time.monotonic() + DROP_S
    while (live := gateway(p.broker).live().get(agent_id)) is None or not live.hello.is_set():
        assert time.monotonic() < deadline, f"{agent_id} never completed its hello"
        await asyncio.sleep(0.02)


def answers(reply: bytes) -> Behaviour:
    async def data(stdin: Reader, stdout: Writer) -> None:
        stdout.write(reply)
        await until_closed(stdin)

    return data


def dribbles() -> Behaviour:
    async def data(stdin: Reader, stdout: Writer) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            while not stdout.is_closing():
                stdout.write(b" ")
                await asyncio.sleep(0.05)
        await until_closed(stdin)

    return data


DATA_CASES: dict[str, tuple[Behaviour, str | None]] = {
    "garbage-reply": (answers(b"\x00\x01 garbage\n"), "malformed"),
    "wrong-reply-type": (answers(b'{"type":"hello","ok":true}\n'), "malformed"),
    "endless-reply": (answers(b"{" * 200_000), "malformed"),
    "never-answers": (silent(), None),
    "dribbles-forever": (dribbles(), None),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_open_reply_is_refused_in_time_and_the_channel_closed(plant: Plant, case: str) -> None:
    behaviour, code = DATA_CASES[case]
    e = plant.hostile
    since = plant.mark()
    server = Hostile(control=writes(hello_for(e)), data=behaviour)

    async def scenario() -> tuple[float, bool]:
        conn = await dial(plant.port, identity(e), server)
        await wait_hello(plant, e.agent_id)
        start = time.monotonic()
        with pytest.raises(ChannelRefused) as info:
            await on_loop_async(plant.broker, open_channel(plant, e.agent_id))
        took = time.monotonic() - start
        assert ("malformed reply" if code else "did not answer") in info.value.message
        # The broker must not leave its half of the channel behind.
        await asyncio.wait_for(server.data_done.wait(), DROP_S)
        if code:
            await dropped(conn)
        live = not conn.is_closed()
        conn.close()
        return took, live

    took, still_connected = run(scenario())
    assert len(server.commands) == 1 and '"op":"open"' in server.commands[0]
    if code:
        event = plant.wait_event("agent.protocol_error", since, subject=f"agent:{e.agent_id}")
        assert event["details"]["code"] == code
        assert not still_connected
    else:
        assert took >= OPEN_S * 0.9, took
        assert still_connected  # slow is not hostile: only the channel is refused
        assert not plant.events("agent.protocol_error", since)
    assert not plant.events("agent.channel.opened", since, subject=f"agent:{e.agent_id}")
    plant.assert_healthy()


def test_channel_open_flood_from_the_agent_is_rejected(plant: Plant) -> None:
    e = plant.hostile
    since = plant.mark()

    async def scenario() -> list[BaseException | Any]:
        conn = await dial(plant.port, identity(e), Hostile(control=writes(hello_for(e))))
        await wait_hello(plant, e.agent_id)
        opens: list[Awaitable[Any]] = [
            conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", 22, "10.9.9.9", i)
            for i in range(1, 1001)
        ]
        opens += [
            conn.create_unix_connection(asyncssh.SSHUNIXSession, "/run/docker.sock")
            for _ in range(200)
        ]
        results = await asyncio.gather(*opens, return_exceptions=True)
        assert not conn.is_closed()
        conn.close()
        return results

    results = run(scenario())
    assert len(results) == 1200
    assert all(isinstance(r, asyncssh.ChannelOpenError) for r in results), {
        type(r).__name__ for r in results
    }
    assert not plant.events("agent.channel.opened", since, subject=f"agent:{e.agent_id}")
    plant.assert_healthy()


def test_one_report_per_channel_asked_for_is_never_a_flood_but_replaying_them_is(
    plant: Plant,
) -> None:
    """An agent of the first protocol revision reports every close in its own frame: a mass
    close of 150 channels passes (each report is expected once); the same reports again are
    the agent talking on its own and get it dropped for flooding."""
    e = plant.hostile
    since = plant.mark()
    count = 150
    control: list[Writer] = []

    async def keep(stdin: Reader, stdout: Writer) -> None:
        stdout.write(hello_for(e))
        control.append(stdout)
        await until_closed(stdin)

    server = Hostile(control=keep, data=answers(open_reply(True)))

    async def scenario() -> tuple[bool, bool]:
        conn = await dial(plant.port, identity(e), server)
        try:
            await wait_hello(plant, e.agent_id)

            async def open_many() -> list[AgentChannel]:
                return list(
                    await asyncio.gather(*(open_channel(plant, e.agent_id) for _ in range(count)))
                )

            await on_loop_async(plant.broker, open_many())
            refs = [OpenRequest.parse_command(c).ref for c in server.commands]
            reports = b"".join(
                ChannelEvent(
                    "closed", ref, "127.0.0.1", plant.echo.port, "asset side closed"
                ).encode()
                for ref in refs
            )
            control[0].write(reports)  # all at once, one frame per channel
            subject = f"agent:{e.agent_id}"
            await async_wait_until(
                lambda: len(plant.events("agent.channel.closed", since, subject=subject)) >= count,
                "every report audited",
            )
            survived = not conn.is_closed()
            control[0].write(reports)  # the same reports again: nobody asked for these
            await dropped(conn)
            return survived, conn.is_closed()
        finally:
            conn.close()  # on a failure too: no transport left for a later test to trip over

    survived, dropped_after_replay = run(scenario())
    assert survived and dropped_after_replay
    event = plant.wait_event("agent.protocol_error", since, subject=f"agent:{e.agent_id}")
    assert event["details"]["code"] == "flood"
    assert len(plant.events("agent.protocol_error", since)) == 1
    plant.assert_healthy()


# --------------------------------------------------------------------------- handshake abuse


def foreign_ca(e: Enrollment) -> list[Any]:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_host_certificate(e.key, e.agent_id, principals=[AGENT_PRINCIPAL, e.agent_id])
    return [(e.key, cert)]


def plain_key(e: Enrollment) -> list[Any]:
    return [e.key]


def wrong_principal(e: Enrollment, p: Plant) -> list[Any]:
    ca = p.broker.services.agent_keys.ca
    return [(e.key, ca.generate_host_certificate(e.key, e.agent_id, principals=["conduit-x"]))]


def expired(e: Enrollment, p: Plant) -> list[Any]:
    ca = p.broker.services.agent_keys.ca
    now = int(time.time())
    cert = ca.generate_host_certificate(
        e.key,
        e.agent_id,
        principals=[AGENT_PRINCIPAL],
        valid_after=now - 7200,
        valid_before=now - 3600,
    )
    return [(e.key, cert)]


HANDSHAKE_CASES: dict[str, tuple[Callable[[Enrollment, Plant], list[Any]], set[str]]] = {
    "foreign-ca": (lambda e, p: foreign_ca(e), {"HostKeyNotVerifiable"}),
    # Only certificate algorithms are acceptable: there is no host key to negotiate. Both
    # sides fail the key exchange at once, so the broker may see the peer hang up first.
    "plain-key-no-certificate": (
        lambda e, p: plain_key(e),
        {"KeyExchangeFailed", "ConnectionLost"},
    ),
    "our-ca-wrong-principal": (wrong_principal, {"HostKeyNotVerifiable"}),
    "our-ca-expired": (expired, {"HostKeyNotVerifiable"}),
}


@pytest.mark.parametrize("case", list(HANDSHAKE_CASES))
def test_untrusted_host_key_is_refused_in_the_handshake(plant: Plant, case: str) -> None:
    e = plant.hostile  # the key itself is enrolled: only the certificate is wrong
    make, reason = HANDSHAKE_CASES[case]  # the acceptable refusal reasons
    keys = make(e, plant)
    since = plant.mark()
    sock = connected_socket(plant.port)
    subject = peer_subject(sock)

    async def scenario() -> None:
        with pytest.raises((asyncssh.Error, OSError)):  # the broker may just hang up
            await dial(plant.port, keys, Hostile(control=writes(hello_for(e))), sock=sock)

    try:
        run(scenario())
    finally:
        sock.close()  # asyncssh may not have taken it over if the handshake broke early
    event = plant.wait_event("agent.connect.refused", since, subject=subject)
    assert event["outcome"] == "deny" and event["actor"] == "anonymous"
    assert event["details"]["reason"] in reason, event
    assert event["source_ip"] == "127.0.0.1"
    assert not plant.events("agent.connected", since, subject=f"agent:{e.agent_id}")
    plant.assert_healthy()


def test_certificate_for_a_key_that_never_joined_is_refused(plant: Plant) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    ca = plant.broker.services.agent_keys.ca
    cert = ca.generate_host_certificate(key, "ghost", principals=[AGENT_PRINCIPAL, "ghost"])
    pin = key_pin(key.export_public_key().decode())
    since = plant.mark()

    async def scenario() -> None:
        conn = await dial(plant.port, [(key, cert)], Hostile(control=writes(b"")))
        await dropped(conn)

    run(scenario())
    event = plant.wait_event("agent.connect.refused", since, subject=f"key:{pin}")
    assert event["details"]["reason"] == "unknown_key"
    assert not plant.events("agent.connected", since)
    plant.assert_healthy()


# --------------------------------------------------------------------------- raw TCP abuse


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.setblocking(True)
    sock.settimeout(timeout)
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


GARBAGE: dict[str, tuple[bytes, str]] = {
    "long-line": (b"\x00" * 9000, "ProtocolError"),
    "endless-banner": (b"not ssh\r\n" * 1100, "ProtocolError"),
    "old-ssh-version": (b"SSH-1.5-OpenSSH_1.2\r\n", "ProtocolNotSupported"),
    "bad-packet-length": (b"SSH-2.0-x\r\n" + b"\xff" * 64, "ProtocolError"),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_raw_garbage_on_the_gateway_port(plant: Plant, case: str) -> None:
    payload, reason = GARBAGE[case]
    since = plant.mark()
    sock = socket.create_connection(("127.0.0.1", plant.port), timeout=5)
    subject = peer_subject(sock)
    with contextlib.suppress(OSError):
        sock.sendall(payload)
    banner = read_until_closed(sock, DROP_S)  # the broker hangs up (a timeout would raise)
    sock.close()
    assert banner.startswith(b"SSH-2.0-")
    event = plant.wait_event("agent.connect.refused", since, subject=subject)
    assert event["details"]["reason"] == reason, event
    plant.assert_healthy()


def test_half_open_connections_neither_block_agents_nor_linger(plant: Plant) -> None:
    since = plant.mark()
    stop = threading.Event()
    pending: list[tuple[socket.socket, str]] = []

    def pester() -> None:  # keeps unauthenticated connections piling up on the gateway
        while not stop.is_set():
            for i in range(6):
                sock = socket.create_connection(("127.0.0.1", plant.port), timeout=5)
                if i == 0:  # half-closed: a partial version line, then FIN
                    sock.sendall(b"SSH-2.0-half")
                    sock.shutdown(socket.SHUT_WR)
                pending.append((sock, peer_subject(sock)))
            time.sleep(0.1)

    thread = threading.Thread(target=pester, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(pending) >= 12, "half-open connections to pile up", timeout=DROP_S)
        plant.assert_healthy()  # the good agent re-dials and relays while they pile up
    finally:
        stop.set()
        thread.join(5)
    assert len(pending) >= 12
    for sock, _ in pending:  # the broker hangs up on every one of them
        assert read_until_closed(sock, DROP_S).startswith(b"SSH-2.0-")
        sock.close()
    subjects = {subject for _, subject in pending}
    deadline = time.monotonic() + DROP_S
    while subjects - {e["subject"] for e in plant.events("agent.connect.refused", since)}:
        assert time.monotonic() < deadline, "not every half-open connection was audited"
        time.sleep(0.05)
    reasons = {e["details"]["reason"] for e in plant.events("agent.connect.refused", since)}
    assert reasons == {"ConnectionLost"}, reasons
