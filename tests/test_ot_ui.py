"""The security reviewer's Modbus operations timeline, from a real session: the real pymodbus
PLC behind a real agent, reached with stock ``ssh -L`` through the front door under a
read-only grant (a read passes, a write is refused by the inspector), then the pages:
``/recordings/{id}/operations`` lists both, filters server-side, marks the refusal, links the
pcap and ops-log downloads; vendors see only their own sessions (403, audited).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from sqlmodel import select

from sessions.db import session_scope
from sessions.models import Recording
from tests.harness.broker import RunningBroker, audit_events, web_login
from tests.harness.components import needs
from tests.harness.plc import PlcServer
from tests.harness.ssh_session import PLC_SETTINGS, SshRig
from tests.harness.wait import TIMEOUT_S
from tests.test_ot_sessions import _client, _forward, _recordings, _until, _wait_closed

pytestmark = needs("sshd")
OTPS = {"victor": "246810"}


@dataclass(frozen=True)
class Connection:
    session_id: str
    pcap_id: str
    ops_id: str


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, plc: PlcServer) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", plc.port, "modbus")])
    rig.add_asset("plc-lab", plc.port, "modbus", settings=PLC_SETTINGS)
    rig.vendor("alice")
    yield rig
    rig.close()


@pytest.fixture
def connection(rig: SshRig, plc: PlcServer) -> Connection:
    """alice, read-only: FC3 read of 40011-40014 passes, FC6 write to 40011 is refused."""
    rig.grant(asset="plc-lab", operation_class="read_only")
    proc, port = _forward(rig, plc.port)
    try:
        client = _client(port)
        assert client.read_holding_registers(10, count=4, device_id=1).registers == [7, 7, 7, 7]
        refused = client.write_register(10, 999, device_id=1)
        assert refused.isError() and refused.exception_code == 1
        client.close()
    finally:
        proc.kill()
        proc.communicate(timeout=5)
    assert plc.holding(10) == [7]
    [pcap_dir] = _recordings(rig, "-tcp1")
    [ops_dir] = _recordings(rig, "-tcp1-ops")
    _wait_closed(pcap_dir)
    _wait_closed(ops_dir)
    engine = rig.broker.services.engine

    def finalized() -> bool:
        with session_scope(engine) as db:
            rows = db.exec(select(Recording).where(Recording.format != "asciicast")).all()
            return len(rows) == 2 and all(r.finalized_at is not None for r in rows)

    _until(finalized, "the pcap and ops-log rows to be finalized")
    with session_scope(engine) as db:
        rows = {r.format: r for r in db.exec(select(Recording)).all()}
        assert Path(rows["pcap"].path).name == pcap_dir.name
        assert Path(rows["ops_jsonl"].path).name == ops_dir.name
        return Connection(rows["pcap"].session_id, rows["pcap"].id, rows["ops_jsonl"].id)


@contextmanager
def _login(broker: RunningBroker, name: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10.0, follow_redirects=False) as client:
        answer = web_login(client, broker.url, name, f"{name}-demo-pw", otp=OTPS.get(name))
        assert answer.status_code == 303, answer.text
        yield client


def _rows(html: str) -> list[str]:
    """The ``<tr class="op …">`` rows of the timeline, in order."""
    return [part.split("</tr>")[0] for part in html.split('<tr class="op')[1:]]


def test_reviewer_sees_the_read_and_the_refused_write(rig: SshRig, connection: Connection) -> None:
    broker = rig.broker
    with _login(broker, "sam") as sam:  # security reviewer
        listing = sam.get(f"{broker.url}/recordings", params={"kind": "pcap"})
        assert f'href="/recordings/{connection.pcap_id}/operations"' in listing.text

        for rid in (connection.pcap_id, connection.ops_id):  # from either recording
            page = sam.get(f"{broker.url}/recordings/{rid}/operations")
            assert page.status_code == 200, page.text
            csp = page.headers["content-security-policy"]
            assert "unsafe-inline" not in csp and "wasm" not in csp
            assert "<script>" not in page.text and "style=" not in page.text
            rows = _rows(page.text)
            assert len(rows) == 2, rows
            read, write = rows
            assert 'data-function="3" data-allowed="true"' in read
            assert "FC 3" in read and "Read Holding Registers" in read
            assert "40011\u201340014" in read and "read [7, 7, 7, 7]" in read
            assert '<span class="state allow">allowed</span>' in read and ">ok<" in read
            assert "op-refused" in write and 'data-allowed="false"' in write
            assert "FC 6" in write and "Write Single Register" in write
            assert "40011" in write and "[999]" in write
            assert '<span class="state deny">refused</span>' in write
            assert "<strong>function 6 (Write Single Register) not allowed</strong>" in write
            assert "refused (exception 1)" in write
            assert "Operations: 2 · writes: 1 ·" in page.text and "refused: 1<" in page.text
            assert f'href="/recordings/{connection.pcap_id}/download"' in page.text
            assert f'href="/recordings/{connection.ops_id}/download"' in page.text
            assert str(broker.services.settings.data_dir) not in page.text  # no paths

        def filtered(**query: str) -> list[str]:
            got = sam.get(f"{broker.url}/recordings/{connection.pcap_id}/operations", params=query)
            assert got.status_code == 200
            return _rows(got.text)

        [only] = filtered(refused="1")
        assert 'data-function="6"' in only
        [only] = filtered(writes="1")
        assert 'data-function="6"' in only
        assert len(filtered(refused="1", writes="1")) == 1
        assert len(filtered(refused="0")) == 2  # only "1" switches a filter on
        checked = sam.get(
            f"{broker.url}/recordings/{connection.pcap_id}/operations", params={"refused": "1"}
        )
        assert 'name="refused" value="1" checked' in checked.text
        assert 'name="writes" value="1" >' in checked.text

        pcap = sam.get(f"{broker.url}/recordings/{connection.pcap_id}/download")
        assert pcap.status_code == 200
        assert pcap.headers["content-type"].startswith("application/vnd.tcpdump.pcap")
        assert struct.unpack("<I", pcap.content[:4])[0] == 0xA1B2C3D4  # pcap magic
        ops = sam.get(f"{broker.url}/recordings/{connection.ops_id}/download")
        assert ops.headers["content-type"].startswith("application/x-ndjson")
        assert len(ops.text.splitlines()) == 2
        downloaded = [e["subject"] for e in audit_events(broker, "recording.downloaded")]
        assert f"recording:{connection.pcap_id}" in downloaded

    refused_alerts = audit_events(broker, "ot.refused")
    assert [e["details"]["function"] for e in refused_alerts] == [6]


def test_vendors_see_only_their_own_operations(rig: SshRig, connection: Connection) -> None:
    broker = rig.broker
    path = f"/recordings/{connection.pcap_id}/operations"
    with _login(broker, "alice") as alice:  # her own session
        own = alice.get(broker.url + path, params={"refused": "1"})
        assert own.status_code == 200 and len(_rows(own.text)) == 1
    with _login(broker, "victor") as victor:  # another vendor
        for target in (path, f"/recordings/{connection.ops_id}/operations"):
            got = victor.get(broker.url + target)
            assert got.status_code == 403, target
            assert "Write Single Register" not in got.text
    denied = audit_events(broker, "recording.access.denied")
    assert {e["subject"] for e in denied} == {
        f"recording:{connection.pcap_id}",
        f"recording:{connection.ops_id}",
    }
    assert all(e["outcome"] == "deny" for e in denied)
    assert all(e["details"]["path"].endswith("/operations") for e in denied)
    with _login(broker, "olga") as olga:  # approver of the asset's owner group: sees them
        assert olga.get(broker.url + path).status_code == 200
    assert httpx2.get(
        broker.url + "/recordings/nope/operations", timeout=TIMEOUT_S
    ).status_code in (303, 404)
