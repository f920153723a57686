"""Agents end to end: real `conduit-agent` processes, a real broker, a real sshd and TCP assets.

Covers the issue's acceptance: join → run → the broker reaches a declared sshd through the
tunnel while undeclared ports/hosts are refused at the agent; token reuse/expiry/forgery;
revoke; broker restart (reconnect); a killed or frozen broker (channels end by expiry);
no listening socket in the agent; the local kill switch; several brokers at once; inventory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from agents.wire import JoinToken, key_pin
from broker.dev.demo import seed
from broker.gateway.channel import ChannelRefused
from sessions.testing import ManualClock
from tests.harness.agent import (
    AgentProcess,
    EchoAsset,
    agent_cmd,
    bridge,
    gateway,
    join,
    make_token,
    on_broker_loop,
    wait_connected,
    wait_disconnected,
    write_config,
)
from tests.harness.broker import RunningBroker, audit_events, settings_overrides
from tests.harness.cli import REPO, clean_env
from tests.harness.components import needs
from tests.harness.ports import free_port
from tests.harness.sshd import RunningSshd, start_sshd
from tests.harness.wait import wait_until

# Timestamps here come from time.time() in different processes; allow for float rounding.
CLOCK_GRAIN_S = 0.01


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    return broker


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def _run_agent(config: Path, started: list[AgentProcess]) -> AgentProcess:
    agent = AgentProcess.start(config)
    started.append(agent)
    return agent


def _open(
    broker: RunningBroker, agent_id: str, host: str, port: int, expires_in_s: float = 60
) -> Any:
    async def go() -> Any:
        expires_at = broker.services.clock.now() + timedelta(seconds=expires_in_s)
        return await gateway(broker).open_channel(agent_id, host, port, expires_at=expires_at)

    return on_broker_loop(broker, go())


def _echo_roundtrip(broker: RunningBroker, channel: Any, payload: bytes = b"hello\n") -> bytes:
    async def go() -> bytes:
        channel.write(payload)
        await channel.drain()
        data = b""
        while len(data) < len(payload):
            chunk = await asyncio.wait_for(channel.read(65536), 5)
            if not chunk:
                break
            data += chunk
        return data

    result: bytes = on_broker_loop(broker, go())
    return result


def _refusal(broker: RunningBroker, agent_id: str, host: str, port: int) -> str:
    with pytest.raises(ChannelRefused) as info:
        _open(broker, agent_id, host, port)
    return info.value.message


def _wait_for(predicate: Callable[[], object], what: str) -> None:
    wait_until(predicate, what)  # a generous deadline: how fast is for bench/, not asserted


def _events(broker: RunningBroker, kind: str) -> list[dict[str, Any]]:
    return audit_events(broker, kind)


# --------------------------------------------------------------------------- the main path


@needs("sshd")
def test_join_run_reaches_declared_sshd_and_refuses_the_rest(
    plant: RunningBroker, tmp_path: Path, echo: EchoAsset, agents: list[AgentProcess]
) -> None:
    with start_sshd(tmp_path / "sshd") as sshd:
        config = write_config(tmp_path / "agent", [("127.0.0.1", sshd.port, "ssh")])
        agent_id = join(plant, make_token(plant), config)
        _run_agent(config, agents)
        wait_connected(plant, agent_id)

        # A real OpenSSH client logs in to the real sshd through broker → agent.
        port = bridge(plant, agent_id, "127.0.0.1", sshd.port)
        done = _ssh_via(sshd, port, "echo through-the-agent; whoami")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["through-the-agent", sshd.user]

        # Undeclared port on the same host, and an undeclared host: refused at the agent.
        assert "not declared by this agent" in _refusal(plant, agent_id, "127.0.0.1", echo.port)
        assert "not declared" in _refusal(plant, agent_id, "127.0.0.2", sshd.port)
        assert echo.opened == 0, "the agent must not even try an undeclared endpoint"
        refused = _events(plant, "agent.channel.refused")
        _wait_for(lambda: len(_events(plant, "agent.channel.refused")) >= 2, "refusal audit")
        refused = _events(plant, "agent.channel.refused")
        assert {e["details"]["endpoint"] for e in refused} == {
            f"127.0.0.1:{echo.port}",
            f"127.0.0.2:{sshd.port}",
        }
        assert all(e["outcome"] == "deny" for e in refused)

        # Inventory: the sshd endpoint is reported, unmatched until an admin adopts it.
        svc = plant.services.agents
        _wait_for(lambda: bool(svc.list()[0].endpoints), "inventory")
        [view] = svc.list()
        [endpoint] = view.endpoints
        assert (endpoint.host, endpoint.port, endpoint.protocol) == ("127.0.0.1", sshd.port, "ssh")
        assert view.assets == {}
        asset, declared = svc.adopt(
            endpoint.id, actor="test-admin", name="sshd-lab", owner_group="ot-approvers"
        )
        assert asset.agent_id == agent_id
        assert (declared.host, declared.port, declared.protocol) == ("127.0.0.1", sshd.port, "ssh")
        assert svc.list()[0].assets == {endpoint.id: ["sshd-lab"]}


def _ssh_via(sshd: RunningSshd, port: int, command: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(sshd.client_key_path),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={sshd.known_hosts_path}",
        "-o", f"HostKeyAlias=[127.0.0.1]:{sshd.port}",
        "-o", "StrictHostKeyChecking=yes",
        "-p", str(port), f"{sshd.user}@127.0.0.1", command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


# --------------------------------------------------------------------------- enrolment


def test_join_tokens_are_single_use_expiring_and_unforgeable(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    clock = ManualClock()
    broker = make_broker(clock=clock)
    seed(broker.services.settings.database_url)

    def try_join(token: str, name: str) -> subprocess.CompletedProcess[str]:
        config = write_config(tmp_path / name, [("127.0.0.1", 9, "tcp")])
        return agent_cmd("join", "--broker", broker.url, "--token", token, "--config", str(config))

    token = make_token(broker)
    assert try_join(token, "first").returncode == 0
    reused = try_join(token, "second")
    assert reused.returncode == 1 and "already used" in reused.stderr

    parsed = JoinToken.parse(make_token(broker))
    forged = JoinToken(parsed.token_id, "x" * 43, parsed.pin)
    refused = try_join(str(forged), "forged")
    assert refused.returncode == 1 and "does not match" in refused.stderr
    unknown = JoinToken("0123456789abcdef", parsed.secret, parsed.pin)
    assert "unknown join token" in try_join(str(unknown), "unknown").stderr

    # A token for another broker (pin of a different key): the agent rejects the answer.
    other_pin = key_pin(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    fresh = JoinToken.parse(make_token(broker))
    wrong_pin = try_join(str(JoinToken(fresh.token_id, fresh.secret, other_pin)), "pin")
    assert wrong_pin.returncode == 1 and "does not match the pin" in wrong_pin.stderr
    assert not (tmp_path / "pin" / "state" / "enrollment.json").exists()

    expiring = make_token(broker, ttl_s=900)
    clock.advance(901)
    expired = try_join(expiring, "expired")
    assert expired.returncode == 1 and "expired" in expired.stderr

    reasons = [e["details"]["reason"] for e in _events(broker, "agent.join.refused")]
    assert reasons == ["reused", "forged", "unknown_token", "expired"]
    garbage = agent_cmd(
        "join", "--broker", broker.url, "--token", "nonsense", "--state-dir", str(tmp_path / "g")
    )
    assert garbage.returncode == 1 and "malformed" in garbage.stderr


# --------------------------------------------------------------------------- revoke, restart


def test_revoke_drops_the_tunnel_at_once_and_refuses_reconnection(
    plant: RunningBroker, tmp_path: Path, echo: EchoAsset, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
    agent_id = join(plant, make_token(plant), config)
    agent = _run_agent(config, agents)
    wait_connected(plant, agent_id)
    channel = _open(plant, agent_id, "127.0.0.1", echo.port)
    assert _echo_roundtrip(plant, channel) == b"hello\n"

    on_broker_loop(plant, gateway(plant).revoke(agent_id, actor="test-admin"))
    wait_disconnected(plant, agent_id)
    _wait_for(lambda: len(echo.closed_at) == 1, "the asset-side connection to close")
    agent.wait_log("revoked; not reconnecting")
    agent.stop()

    again = _run_agent(config, agents)
    again.wait_log("Host key is revoked")
    assert agent_id not in gateway(plant).live()
    refused = _events(plant, "agent.connect.refused")
    assert refused and "revoked" in refused[-1]["details"]["detail"]


def test_agents_reconnect_after_broker_restart(
    make_broker: Callable[..., RunningBroker],
    tmp_path: Path,
    echo: EchoAsset,
    agents: list[AgentProcess],
) -> None:
    gateway_port = free_port()
    broker = make_broker(agents={"listen_port": gateway_port})
    seed(broker.services.settings.database_url)
    config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
    agent_id = join(broker, make_token(broker), config)
    agent = _run_agent(config, agents)
    wait_connected(broker, agent_id)

    broker.stop()
    # The agent keeps dialling, backing off, while the broker is away: wait for two failures.
    _wait_for(lambda: agent.log.count("unreachable") >= 2, "the agent's failed redials")
    restarted = make_broker(agents={"listen_port": gateway_port})
    wait_connected(restarted, agent_id)  # how soon (backoff capped at 4 s): bench/, not here
    assert (
        _echo_roundtrip(restarted, _open(restarted, agent_id, "127.0.0.1", echo.port)) == b"hello\n"
    )


# --------------------------------------------------------------------------- fail closed


def _broker_process(
    make_settings: Callable[..., Any], tmp_path: Path, echo: EchoAsset, expires_in_s: float
) -> tuple[subprocess.Popen[str], str]:
    settings = make_settings()
    spec = {
        "settings": settings_overrides(settings),
        "endpoint": ["127.0.0.1", echo.port],
        "expires_in_s": expires_in_s,
    }
    spec_path = tmp_path / "broker-spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.broker_proc", str(spec_path)],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "TOKEN", f"broker process did not start: {line}"
    return proc, line[1]


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_channels_end_by_their_expiry_when_the_broker_dies(
    how: str,
    make_settings: Callable[..., Any],
    tmp_path: Path,
    echo: EchoAsset,
    agents: list[AgentProcess],
) -> None:
    proc, token = _broker_process(make_settings, tmp_path, echo, expires_in_s=3)
    try:
        config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
        done = agent_cmd(
            "join",
            "--broker",
            make_settings().public_url,
            "--token",
            token,
            "--config",
            str(config),
        )
        assert done.returncode == 0, done.stderr
        _run_agent(config, agents)
        assert proc.stdout is not None
        opened, expires_at = proc.stdout.readline().split()
        assert opened == "OPEN" and echo.opened == 1 and not echo.closed_at
        # SIGKILL: the broker's sockets die with it. SIGSTOP: the TCP connection stays up and
        # nothing answers — only the agent's own expiry can end the channel (its keep-alive,
        # 30 s, is not due before this deadline).
        proc.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        wait_until(lambda: echo.closed_at, "the asset-side connection to close", timeout=20)
        if how == "frozen":  # cut at the expiry by the agent's clock, not before
            assert echo.closed_wall[0] >= float(expires_at) - CLOCK_GRAIN_S
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_channel_is_cut_at_expiry_by_the_agent(
    plant: RunningBroker, tmp_path: Path, echo: EchoAsset, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
    agent_id = join(plant, make_token(plant), config)
    _run_agent(config, agents)
    wait_connected(plant, agent_id)
    started = time.time()  # the channel expires 1.5 s after this, or later
    channel = _open(plant, agent_id, "127.0.0.1", echo.port, expires_in_s=1.5)
    assert _echo_roundtrip(plant, channel) == b"hello\n"
    _wait_for(lambda: bool(echo.closed_at), "expiry")
    assert echo.closed_wall[0] >= started + 1.5 - CLOCK_GRAIN_S  # not before its expiry
    assert on_broker_loop(plant, channel.read(10)) == b""  # the broker side sees the end too
    _wait_for(lambda: bool(_events(plant, "agent.channel.closed")), "closed event")
    assert _events(plant, "agent.channel.closed")[-1]["details"]["reason"] == "grant expired"
    # Expiry in the past or beyond the agent's cap is refused outright.
    assert "expired" in _refusal_with(plant, agent_id, echo.port, -5)
    assert "max_channel_s" in _refusal_with(plant, agent_id, echo.port, 30 * 86400)


def _refusal_with(broker: RunningBroker, agent_id: str, port: int, expires_in_s: float) -> str:
    with pytest.raises(ChannelRefused) as info:
        _open(broker, agent_id, "127.0.0.1", port, expires_in_s=expires_in_s)
    return info.value.message


def test_agent_process_has_no_listening_socket(
    plant: RunningBroker, tmp_path: Path, echo: EchoAsset, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
    agent_id = join(plant, make_token(plant), config)
    agent = _run_agent(config, agents)
    wait_connected(plant, agent_id)
    channel = _open(plant, agent_id, "127.0.0.1", echo.port)  # busy, not just idle
    assert _echo_roundtrip(plant, channel) == b"hello\n"
    pid = agent.proc.pid

    def sockets(*flags: str) -> list[str]:
        out = subprocess.run(["ss", *flags, "-pH"], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()

    listening = sockets("-ltn") + sockets("-lun") + sockets("-lx")
    # Sanity: ss does show owning processes here (our own test process listens for the echo).
    assert any(f"pid={os.getpid()}," in line for line in sockets("-ltn"))
    assert [line for line in listening if f"pid={pid}," in line] == []
    assert any(f"pid={pid}," in line for line in sockets("-tn")), "the agent's outbound tunnel"


def test_local_kill_switch_closes_channels_and_refuses_new_ones(
    plant: RunningBroker, tmp_path: Path, echo: EchoAsset, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
    agent_id = join(plant, make_token(plant), config)
    _run_agent(config, agents)
    wait_connected(plant, agent_id)
    channels = [_open(plant, agent_id, "127.0.0.1", echo.port) for _ in range(3)]
    for channel in channels:
        assert _echo_roundtrip(plant, channel) == b"hello\n"

    done = agent_cmd("stop-all", "--config", str(config))
    assert done.returncode == 0 and "kill switch engaged" in done.stdout
    _wait_for(lambda: len(echo.closed_at) == 3, "every channel to close")
    assert "local kill switch engaged" in _refusal(plant, agent_id, "127.0.0.1", echo.port)
    _wait_for(lambda: gateway(plant).live()[agent_id].kill_switch, "health to show it")

    assert agent_cmd("resume", "--config", str(config)).returncode == 0
    _wait_for(lambda: not gateway(plant).live()[agent_id].kill_switch, "release")
    assert _echo_roundtrip(plant, _open(plant, agent_id, "127.0.0.1", echo.port)) == b"hello\n"


def test_agent_keeps_a_tunnel_to_every_broker(
    make_broker: Callable[..., RunningBroker],
    tmp_path: Path,
    echo: EchoAsset,
    agents: list[AgentProcess],
) -> None:
    first = make_broker()
    seed(first.services.settings.database_url)
    second_port = free_port()
    second = make_broker(listen_port=second_port, public_url=f"http://127.0.0.1:{second_port}")
    addresses = [f"127.0.0.1:{gateway(b).port}" for b in (first, second)]
    config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")], brokers=addresses)
    agent_id = join(first, make_token(first), config)
    _run_agent(config, agents)
    wait_connected(first, agent_id)
    wait_connected(second, agent_id)
    assert _echo_roundtrip(second, _open(second, agent_id, "127.0.0.1", echo.port)) == b"hello\n"

    first.stop()
    assert _echo_roundtrip(second, _open(second, agent_id, "127.0.0.1", echo.port)) == b"hello\n"
    # A revoke through one broker reaches the other's tunnel (shared database).
    on_broker_loop(second, gateway(second).revoke(agent_id, actor="test-admin"))
    wait_disconnected(second, agent_id)


def test_inventory_changes_are_recorded(
    plant: RunningBroker, tmp_path: Path, echo: EchoAsset, agents: list[AgentProcess]
) -> None:
    config = write_config(
        tmp_path / "agent", [("127.0.0.1", echo.port, "tcp"), ("127.0.0.1", 502, "modbus")]
    )
    agent_id = join(plant, make_token(plant), config)
    agent = _run_agent(config, agents)
    wait_connected(plant, agent_id)
    svc = plant.services.agents
    _wait_for(lambda: len(svc.list()[0].endpoints) == 2, "inventory")
    modbus = next(e for e in svc.list()[0].endpoints if e.port == 502)
    svc.adopt(modbus.id, actor="test-admin", name="plc-lab", owner_group="ot-press-line")

    agent.stop()
    write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
    _run_agent(config, agents)
    _wait_for(
        lambda: not next(e for e in svc.list()[0].endpoints if e.port == 502).declared,
        "undeclare",
    )
    assert svc.list()[0].undeclared_assets == ["plc-lab"]
    inventory = _events(plant, "agent.inventory")
    assert inventory[-1]["details"]["removed"] == ["127.0.0.1:502"]
