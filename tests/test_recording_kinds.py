"""A forward to an inspected endpoint shows its protocol, not ``tcp``: on the recordings list
and page, in ``GET /api/recordings`` and ``conduit recordings list``, and ``kind`` filters by it.

Through the real flow: a Modbus forward (``ssh -L``, as ``conduit forward`` runs) to the real
PLC behind the agent, under a grant requested and approved over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from broker.http.recording_rows import kind_label
from tests.harness.broker import RunningBroker, audit_events, web_login
from tests.harness.cli import cli_env, run_conduit
from tests.harness.components import needs
from tests.harness.plc import PlcServer
from tests.harness.ssh_session import PLC_SETTINGS, SshRig
from tests.harness.wait import TIMEOUT_S, wait_until
from tests.test_ot_sessions import _client, _forward

pytestmark = needs("sshd")


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, plc: PlcServer) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", plc.port, "modbus")])
    rig.add_asset("plc-lab", plc.port, "modbus", settings=PLC_SETTINGS)
    rig.vendor("alice")
    yield rig
    rig.close()


def _recordings(rig: SshRig, **params: str) -> list[dict[str, object]]:
    answer = httpx2.get(
        f"{rig.broker.url}/api/recordings",
        params=params,
        headers={"Authorization": f"Bearer {rig.sign_in('adam')}"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, object]] = answer.json()["recordings"]
    return rows


def test_a_modbus_forward_shows_its_protocol_everywhere(
    rig: SshRig, plc: PlcServer, tmp_path: Path
) -> None:
    rig.grant(asset="plc-lab", operation_class="read_only")
    proc, port = _forward(rig, plc.port)
    try:
        client = _client(port)
        assert client.read_holding_registers(10, count=1, device_id=1).registers == [7]
        client.close()
    finally:
        proc.kill()
        proc.communicate(5)
    wait_until(lambda: bool(audit_events(rig.broker, "session.ended")), "session.ended")
    # A terminal session beside it keeps its kind.
    rig.grant()
    done = rig.ssh("echo terminal")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: len(_recordings(rig)) == 3, "pcap, ops log and asciicast rows")

    rows = _recordings(rig)
    kinds = sorted((str(r["format"]), str(r["session_kind"]), str(r["protocol"])) for r in rows)
    assert kinds == [
        ("asciicast", "ssh", "None"),
        ("ops_jsonl", "Modbus", "modbus"),
        ("pcap", "Modbus", "modbus"),
    ]
    # kind filters by the protocol (any case) as well as by the format.
    assert {r["format"] for r in _recordings(rig, kind="modbus")} == {"pcap", "ops_jsonl"}
    assert {r["format"] for r in _recordings(rig, kind="Modbus")} == {"pcap", "ops_jsonl"}
    assert [r["format"] for r in _recordings(rig, kind="asciicast")] == ["asciicast"]
    assert _recordings(rig, kind="s7") == []
    pcap = next(r for r in rows if r["format"] == "pcap")

    # The pages a security reviewer reads.
    with httpx2.Client(timeout=TIMEOUT_S) as browser:
        web_login(browser, rig.broker.url, "sam", "sam-demo-pw")
        listing = browser.get(f"{rig.broker.url}/recordings", params={"kind": "modbus"})
        assert listing.status_code == 200
        assert re.search(r"pcap <span class=\"muted\">\(Modbus\)</span>", listing.text)
        assert "asciicast" not in listing.text.split("<tbody>", 1)[1]
        page = browser.get(f"{rig.broker.url}/recordings/{pcap['id']}")
        assert page.status_code == 200 and f"{pcap['session_id']} (Modbus)" in page.text

    # And the CLI.
    env = cli_env(rig.broker, tmp_path, "adam")
    listed = run_conduit("recordings", "list", "--kind", "modbus", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and all(" Modbus " in line for line in lines), listed.stdout
    everything = run_conduit("recordings", env=env)  # plain `conduit recordings` lists too
    assert everything.returncode == 0 and len(everything.stdout.splitlines()) == 3


def test_older_sessions_keep_their_stored_kind() -> None:
    """Sessions from before 0011 have no protocol row: they show what they showed."""
    assert kind_label("tcp", None) == "tcp"
    assert kind_label("ssh", None) == "ssh"
    assert kind_label("tcp", "tcp") == "tcp"  # a plain TCP endpoint
    assert kind_label("tcp", "s7") == "S7"
    assert kind_label("tcp", "opcua") == "opcua"  # declared, no inspector: its name
