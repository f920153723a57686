"""When the agent ends a session, the vendor is told why: one line, from the far side.

The plant's kill switch (``conduit-agent stop-all``, the real command) and an agent that dies
both end every session through that agent; stock ``ssh`` prints
``conduit: session ended: <why>`` on stderr and exits 1 (not 255 with nothing said), and
``conduit forward`` (``ssh -N -L``) gets the same words in the disconnect message.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from agents.wire import MAX_CLOSE_REASON
from broker.gateway.tunnel import ChannelEnd
from tests.harness.broker import RunningBroker
from tests.harness.cli import REPO, clean_env
from tests.harness.components import needs
from tests.harness.plc import PlcServer
from tests.harness.ssh_session import PLC_SETTINGS, SshRig
from tests.harness.wait import TIMEOUT_S
from tests.test_ot_sessions import _forward
from tests.test_ssh_sessions import _ended, _start, ended_event

pytestmark = needs("sshd")
KILL_SWITCH = "the plant's agent stopped all sessions (kill switch)"


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, plc: PlcServer) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", plc.port, "modbus")])
    rig.add_asset("plc-lab", plc.port, "modbus", settings=PLC_SETTINGS)
    rig.vendor("alice")
    yield rig
    rig.close()


def _stop_all(rig: SshRig) -> None:
    """The plant operator's kill switch, as documented: ``conduit-agent stop-all``."""
    done = subprocess.run(
        [sys.executable, "-m", "agents", "stop-all", "--config", str(rig.agent.config)],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_kill_switch_tells_the_ssh_vendor_why(rig: SshRig) -> None:
    rig.grant()
    proc = _start(rig)
    _stop_all(rig)
    _ended(rig, proc, KILL_SWITCH, "agent_kill_switch", "deny")
    assert proc.returncode == 1


def test_a_dead_agent_tells_the_ssh_vendor_why(rig: SshRig) -> None:
    rig.grant()
    proc = _start(rig)
    rig.agent.proc.kill()  # the agent host lost power, say
    _ended(rig, proc, "the agent for lab-ssh disconnected", "agent_gone", "error")
    assert proc.returncode == 1


def test_kill_switch_tells_conduit_forward_why(rig: SshRig, plc: PlcServer) -> None:
    rig.grant(asset="plc-lab")
    proc, port = _forward(rig, plc.port)
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=10, retries=0)
    try:
        assert client.connect()
        assert not client.read_holding_registers(0, count=1, device_id=1).isError()
        _stop_all(rig)
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        client.close()
        proc.kill()
    assert f"conduit: session ended: {KILL_SWITCH}" in err, err
    ended = ended_event(rig, "agent_kill_switch", "deny")
    kinds = sorted(r["kind"] for r in ended["details"]["recordings"])
    assert kinds == ["ops_jsonl", "pcap"]  # the forward's evidence, each with its final hash
    assert all(r["final_chain"] != "incomplete" for r in ended["details"]["recordings"])


def test_an_agents_close_reason_cannot_drive_the_vendors_terminal() -> None:
    """What an agent says reaches the vendor's terminal: one line, printable characters only."""
    end = ChannelEnd()
    end.said(b"\x1b]0;owned\x07\x1b[2J" + b"x" * 500 + b"\nsecond line")
    told = end.explain("plc-1")
    assert told is not None and "\x1b" not in told and "\x07" not in told
    assert "second line" not in told and len(end.reason) <= MAX_CLOSE_REASON
