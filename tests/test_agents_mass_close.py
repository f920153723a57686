"""Closing many sessions at once never costs the agent its tunnel (issue 13, item 8).

A lockout, a mass kill or a shift change closes hundreds of channels through one agent within
a second; the agent reports each close on its control channel. That traffic is the protocol's
own, so it must not trip the gateway's flood guard (which once dropped the agent, and with it
every other session through it). Real broker, real ``conduit-agent`` process, real echo asset
and real sshd; the bystanders are a stock ``ssh`` session and channels left open.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.gateway.channel import AgentChannel
from tests.harness.agent import EchoAsset, gateway, on_broker_loop
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.components import needs
from tests.harness.ssh_session import SshRig
from tests.harness.wait import wait_until

pytestmark = needs("sshd")

MASS = 200
BYSTANDERS = 3


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, echo: EchoAsset) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", echo.port, "tcp")])
    rig.vendor("alice")
    yield rig
    rig.close()


def _last_seq(broker: RunningBroker) -> int:
    return max((e["seq"] for e in audit_events(broker)), default=0)


def _since(broker: RunningBroker, kind: str, seq: int) -> list[dict[str, Any]]:
    return [e for e in audit_events(broker, kind) if e["seq"] > seq]


async def _echo(channel: AgentChannel, payload: bytes) -> bytes:
    channel.write(payload)
    await channel.drain()
    got = b""
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(channel.read(65536), 10)
        if not chunk:
            break
        got += chunk
    return got


def _ssh_echo(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().rstrip("\n")


def test_closing_200_channels_at_once_leaves_the_agent_and_its_other_sessions_alone(
    rig: SshRig, echo: EchoAsset
) -> None:
    rig.grant()
    # A bystander vendor session with stock ssh: `cat` on the asset echoes each line back.
    with subprocess.Popen(
        [*rig.ssh_argv("alice"), "cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    ) as ssh:
        try:
            _mass_close(rig, echo, ssh)
        finally:
            if ssh.poll() is None:
                ssh.kill()


def _mass_close(rig: SshRig, echo: EchoAsset, ssh: subprocess.Popen[str]) -> None:
    broker, gw = rig.broker, gateway(rig.broker)
    assert _ssh_echo(ssh, "before") == "before"
    tunnel = gw.live()[rig.agent_id]
    since = _last_seq(broker)
    expires_at = broker.services.clock.now() + timedelta(minutes=10)

    async def open_all() -> tuple[list[AgentChannel], list[AgentChannel]]:
        async def one() -> AgentChannel:
            return await gw.open_channel(
                rig.agent_id, "127.0.0.1", echo.port, expires_at=expires_at
            )

        chans = await asyncio.gather(*(one() for _ in range(MASS + BYSTANDERS)))
        # Every channel really reaches the asset before the mass close.
        answers = await asyncio.gather(*(_echo(c, b"x") for c in chans))
        assert answers == [b"x"] * len(chans)
        return list(chans[:MASS]), list(chans[MASS:])

    mass, bystanders = on_broker_loop(broker, open_all(), timeout=60)
    refs = {c.ref for c in mass}

    async def close_all() -> None:
        for channel in mass:  # all in one go, as a mass kill does
            channel.close()

    on_broker_loop(broker, close_all())

    # The agent reports every close; the broker audits each one (or, before the fix,
    # dropped the agent for flooding: then there is no point waiting).
    def reported() -> bool:
        if _since(broker, "agent.protocol_error", since):
            return True
        closed = _since(broker, "agent.channel.closed", since)
        return refs <= {e["details"]["ref"] for e in closed}

    wait_until(reported, f"{MASS} agent.channel.closed events", timeout=25)

    # The flood guard did not fire and the tunnel is the same one: no drop, no reconnect.
    assert not _since(broker, "agent.protocol_error", since)
    assert not _since(broker, "agent.disconnected", since)
    assert gw.live()[rig.agent_id] is tunnel and not tunnel.conn.is_closed()
    # The bystanders still carry data both ways.
    payload = os.urandom(16 * 1024)

    async def echo_bystanders() -> list[bytes]:
        return list(await asyncio.gather(*(_echo(c, payload) for c in bystanders)))

    assert on_broker_loop(broker, echo_bystanders()) == [payload] * BYSTANDERS
    assert _ssh_echo(ssh, "after") == "after"
    assert ssh.poll() is None
