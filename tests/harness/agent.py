"""Run the real ``conduit-agent`` (as a subprocess) against a test broker, and talk to it.

``make_token`` creates a join token through the broker's own service; ``write_config`` writes an
agent.toml; ``join`` runs ``conduit-agent join``; ``AgentProcess`` runs ``conduit-agent run``
with its log captured; ``on_broker_loop`` runs a coroutine on the broker's event loop (the
gateway lives there). Small TCP assets (echo) are started on loopback for relay tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from broker.gateway.agent_gateway import AgentGateway
from tests.harness.broker import RunningBroker
from tests.harness.cli import REPO, clean_env

T = TypeVar("T")


def make_token(
    broker: RunningBroker,
    *,
    site: str = "Riverside Plant",
    zone: str | None = "supervisory",
    ttl_s: int = 900,
) -> str:
    token, _ = broker.services.agents.create_token(
        actor="test-admin", site=site, zone=zone, ttl=timedelta(seconds=ttl_s)
    )
    return str(token)


def write_config(
    directory: Path,
    endpoints: list[tuple[str, int, str]],
    *,
    brokers: list[str] | None = None,
    **options: Any,
) -> Path:
    """An agent.toml in ``directory`` with ``(host, port, protocol)`` endpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f'state_dir = "{directory / "state"}"']
    if brokers:
        lines.append("brokers = [" + ", ".join(f'"{b}"' for b in brokers) + "]")
    for key, value in {"heartbeat_s": 1, "backoff_max_s": 1.0, **options}.items():
        lines.append(f"{key} = {value!r}")
    for i, (host, port, proto) in enumerate(endpoints):
        lines += ["", "[[endpoint]]", f'name = "ep{i}"', f'host = "{host}"', f"port = {port}"]
        lines.append(f'protocol = "{proto}"')
    path = directory / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def agent_cmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", *args],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def join(broker: RunningBroker, token: str, config: Path) -> str:
    """Run ``conduit-agent join``; returns the agent id (asserts success)."""
    done = agent_cmd("join", "--broker", broker.url, "--token", token, "--config", str(config))
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[3]


@dataclass
class AgentProcess:
    config: Path
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, config: Path) -> AgentProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents", "run", "--config", str(config), "-v"],
            env=clean_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        agent = cls(config, proc)
        agent._reader = threading.Thread(target=agent._drain, daemon=True)
        agent._reader.start()
        return agent

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"agent never logged {text!r}:\n{self.log}"
            assert self.proc.poll() is None or text in self.log, f"agent exited:\n{self.log}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def gateway(broker: RunningBroker) -> AgentGateway:
    gw = broker.services.gateway
    assert gw is not None, "the broker's agent gateway is not running"
    return gw


def on_broker_loop(broker: RunningBroker, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run ``coro`` on the broker's event loop (where the gateway's connections live)."""
    loop = gateway(broker).loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def wait_connected(broker: RunningBroker, agent_id: str, timeout: float = 30) -> float:
    """Seconds until ``agent_id`` has a tunnel (hello received) to ``broker``."""
    start = time.monotonic()
    while True:
        live = gateway(broker).live().get(agent_id)
        if live is not None and live.hello.is_set():
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"agent {agent_id} did not connect"
        time.sleep(0.02)


def wait_disconnected(broker: RunningBroker, agent_id: str, timeout: float = 30) -> float:
    start = time.monotonic()
    while agent_id in gateway(broker).live():
        assert time.monotonic() - start < timeout, f"agent {agent_id} stayed connected"
        time.sleep(0.02)
    return time.monotonic() - start


class EchoAsset:
    """A TCP echo server on loopback that records when each connection ends.

    ``closed_at``: ``time.monotonic()`` of each end; ``closed_wall``: ``time.time()`` of the
    same (to compare with an ``expires_at`` that agents and brokers keep in wall-clock time).
    """

    def __init__(self) -> None:
        self.closed_at: list[float] = []
        self.closed_wall: list[float] = []
        self.opened = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.closed_wall.append(time.time())
            self.closed_at.append(time.monotonic())
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


async def _pipe(read: Any, write: Any, drain: Any, eof: Any) -> None:
    with contextlib.suppress(Exception):
        while data := await read(65536):
            write(data)
            await drain()
    with contextlib.suppress(Exception):
        eof()


def bridge(
    broker: RunningBroker, agent_id: str, host: str, port: int, *, expires_in_s: float = 60
) -> int:
    """A loopback TCP port whose connections are relayed through the agent to host:port.

    (The stand-in for the session layer: each accepted connection opens one agent channel.)
    """
    gw = gateway(broker)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        expires_at = broker.services.clock.now() + timedelta(seconds=expires_in_s)
        try:
            ch = await gw.open_channel(agent_id, host, port, expires_at=expires_at)
        except Exception:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader.read, ch.write, ch.drain, ch.write_eof),
            _pipe(ch.read, writer.write, writer.drain, writer.close),
        )
        ch.close()

    async def start() -> int:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        _bridges.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    return on_broker_loop(broker, start())


_bridges: list[asyncio.Server] = []
