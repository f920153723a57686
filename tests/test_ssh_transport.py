"""agents.ssh_transport: asyncssh without the per-packet costs AEAD legs do not need.

Two real asyncssh endpoints on 127.0.0.1; what is on the wire is read from asyncssh's own
packet log (debug level 3), which the tuning must keep working.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest

from agents import ssh_transport
from tests.harness.wait import async_wait_until


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: these tests are about the transport


async def _echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
    while True:
        data = await process.stdin.read(4096)
        if not data:
            break
        process.stdout.write(data)
    process.exit(0)


@pytest.fixture(autouse=True)
def _installed() -> None:
    assert ssh_transport.install()


@pytest.fixture
def packet_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    asyncssh.set_debug_level(3)
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    try:
        yield caplog
    finally:
        asyncssh.set_debug_level(1)


async def _connect(
    cipher: str, *, server_options: dict[str, Any] | None = None, **client_options: Any
) -> tuple[asyncssh.SSHAcceptor, asyncssh.SSHClientConnection, list[Any]]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    servers: list[Any] = []

    def factory() -> _Server:
        server = _Server()
        servers.append(server)
        return server

    acceptor = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[key],
        server_factory=factory,
        process_factory=_echo,
        encryption_algs=[cipher],
        **(server_options or {}),
    )
    port = acceptor.sockets[0].getsockname()[1]
    conn = await asyncssh.connect(
        "127.0.0.1",
        port,
        known_hosts=None,
        username="t",
        encryption_algs=[cipher],
        **client_options,
    )
    return acceptor, conn, servers


async def _echo_round_trips(conn: asyncssh.SSHClientConnection, n: int) -> None:
    process = await conn.create_process("echo", encoding=None)
    for i in range(n):
        process.stdin.write(b"ping %d" % i)
        assert await process.stdout.readexactly(len(b"ping %d" % i)) == b"ping %d" % i
    process.stdin.write_eof()
    await process.wait()


def _sent(caplog: pytest.LogCaptureFixture, name: str) -> int:
    marker = "] Sent " + name + " ("  # e.g. "[conn=0, pktid=7] Sent MSG_IGNORE (2), 5 bytes"
    return sum(1 for record in caplog.records if marker in record.getMessage())


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_aead_connection_sends_no_ignore_packets(
    cipher: str, packet_log: pytest.LogCaptureFixture
) -> None:
    acceptor, conn, _ = await _connect(cipher)
    try:
        await _echo_round_trips(conn, 20)
    finally:
        conn.close()
        await conn.wait_closed()
        acceptor.close()
        await acceptor.wait_closed()
    assert _sent(packet_log, "MSG_CHANNEL_DATA") >= 40  # both sides, logged as before
    assert _sent(packet_log, "MSG_IGNORE") == 0


async def test_cbc_connection_keeps_the_ignore_countermeasure(
    packet_log: pytest.LogCaptureFixture,
) -> None:
    acceptor, conn, _ = await _connect("aes128-cbc")
    try:
        await _echo_round_trips(conn, 5)
    finally:
        conn.close()
        await conn.wait_closed()
        acceptor.close()
        await acceptor.wait_closed()
    data = _sent(packet_log, "MSG_CHANNEL_DATA")
    assert data >= 10
    assert _sent(packet_log, "MSG_IGNORE") >= data  # one before every packet, as asyncssh does


async def test_keepalive_probes_only_after_silence(packet_log: pytest.LogCaptureFixture) -> None:
    """Traffic postpones the probe; silence triggers it; answers keep the connection up."""
    interval = 1.0
    acceptor, conn, _ = await _connect(
        "aes128-gcm@openssh.com", keepalive_interval=interval, keepalive_count_max=2
    )
    try:
        process = await conn.create_process("echo", encoding=None)
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.5 * interval
        while loop.time() < until:  # traffic for 2.5 intervals, gaps of ~10 ms: no probe due
            process.stdin.write(b"x")
            assert await process.stdout.readexactly(1) == b"x"
            await asyncio.sleep(0.01)
        probes_during_traffic = _sent(packet_log, "MSG_GLOBAL_REQUEST")
        # Silence: probes go out and are answered (wait for them, however slow the machine).
        await async_wait_until(
            lambda: _sent(packet_log, "MSG_GLOBAL_REQUEST") >= 2, "two keep-alive probes"
        )
        probes_after_silence = _sent(packet_log, "MSG_GLOBAL_REQUEST")
        assert not conn.is_closed()
        process.stdin.write(b"y")
        assert await process.stdout.readexactly(1) == b"y"
    finally:
        conn.close()
        await conn.wait_closed()
        acceptor.close()
        await acceptor.wait_closed()
    assert probes_during_traffic == 0
    assert probes_after_silence >= 2


class _FreezableProxy:
    """A TCP relay to ``port``; once frozen it holds everything either side sends."""

    def __init__(self, port: int) -> None:
        self.port, self.frozen = port, False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while True:
                data = await src.read(65536)
                if not data:
                    return
                if not self.frozen:
                    dst.write(data)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_unanswered_keepalives_drop_the_connection() -> None:
    acceptor, direct, _ = await _connect("aes128-gcm@openssh.com")
    direct.close()
    await direct.wait_closed()
    proxy = _FreezableProxy(acceptor.sockets[0].getsockname()[1])
    port = await proxy.start()
    conn = await asyncssh.connect(
        "127.0.0.1",
        port,
        known_hosts=None,
        username="t",
        encryption_algs=["aes128-gcm@openssh.com"],
        keepalive_interval=0.2,
        keepalive_count_max=2,
    )
    try:
        await _echo_round_trips(conn, 3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        proxy.frozen = True  # keep-alive requests now go unanswered
        await asyncio.wait_for(conn.wait_closed(), 30)  # a generous deadline, not the figure
        waited = loop.time() - started
    finally:
        conn.close()
        await proxy.close()
        acceptor.close()
        await acceptor.wait_closed()
    # interval * (count_max + 1) = 0.6 s after the last packet received, and not before
    assert waited >= 0.4
