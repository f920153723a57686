"""S7comm inspection: the sans-IO inspector with frames built by python-snap7's own protocol
code, a fuzz run, and end to end against python-snap7's real S7 server through the front door
(``ssh -L``) under read_only and tune grants, checked from the server's memory.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import snap7
from snap7.error import S7ProtocolError as ClientRefused
from snap7.s7protocol import S7Protocol
from snap7.type import Area, WordLen
from sqlmodel import select

from policies.decision import Obligations
from sessions.db import session_scope
from sessions.errors import ValidationError
from sessions.models import Recording
from sessions.ot.base import ObligationsError
from sessions.ot.registry import plugin_for
from sessions.ot.s7 import READ_ONLY, S7Inspector, operation_of, validate_s7_settings
from sessions.ot.s7_wire import ACK_DATA, CR, DC, DR, TpktFramer, parse_pdu, wrap
from sessions.recording import assemble
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.components import needs, require
from tests.harness.ot_peers import S7Plc
from tests.harness.ssh_session import SshRig
from tests.test_ot_sessions import _forward, _recordings, _until, _wait_closed
from tests.test_ot_ui import _login, _rows

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
COTP_CR = bytes.fromhex("0300001611e00000000100c0010ac1020100c2020102")
TUNE = Obligations(protocols={"s7": {
    "allow": sorted(READ_ONLY | {"write_var"}),
    "write_ranges": [{"area": "DB", "db": 1, "first": 0, "last": 15}],
}})  # fmt: skip
S7_SETTINGS = {"write_ranges": {"tune": [{"area": "DB", "db": 1, "first": 0, "last": 15}]}}
proto = S7Protocol()


def connected(obligations: Obligations | None = TUNE) -> S7Inspector:
    insp = S7Inspector(obligations, ManualClock(T0))
    assert insp.from_client(COTP_CR).to_server == COTP_CR
    return insp


def read_db(start: int, n: int) -> bytes:
    return wrap(proto.build_read_request(Area.DB, 1, start, WordLen.Byte, n))


def write_db(start: int, data: bytes, db: int = 1) -> bytes:
    return wrap(proto.build_write_request(Area.DB, db, start, WordLen.Byte, data))


def pdu_of(frame: bytes) -> bytes:
    return frame[7:]


# ---- the inspector -------------------------------------------------------------------------


def test_read_only_default_reads_pass_writes_and_stop_are_refused_in_s7_terms() -> None:
    insp = connected(None)  # no obligations: the read-only default
    for frame, name in ((write_db(0, b"\x01"), "write_var"),
                        (wrap(proto.build_plc_control_request("stop")), "plc_stop"),
                        (wrap(proto.build_plc_control_request("hot_start")), "plc_start")):  # fmt: skip
        v = insp.from_client(frame)
        assert v.to_server == b"" and v.close is None
        answer = parse_pdu(pdu_of(v.to_client))
        assert answer.rosctr == ACK_DATA and answer.error == 0x8703  # access to object refused
        assert answer.ref == parse_pdu(pdu_of(frame)).ref
        [record] = v.records
        assert (record["function_name"], record["allowed"], record["result"]) == (
            name, False, "refused")  # fmt: skip
        assert record["protocol"] == "s7" and record["reason"] == f"S7 {name} not allowed"
    read = read_db(0, 8)
    assert insp.from_client(read).to_server == read
    # a refusal while a request is at the PLC waits for that answer: answers stay in order
    v = insp.from_client(write_db(0, b"\x01"))
    assert v.to_client == b"" and v.records[0]["result"] == "refused"
    ref = parse_pdu(pdu_of(read)).ref
    answer = wrap(struct.pack(">BBHHHHH", 0x32, ACK_DATA, 0, ref, 2, 12, 0) + b"\x04\x01"
                  + b"\xff\x04\x00\x40" + bytes(8))  # fmt: skip
    v = insp.from_server(answer)
    assert v.to_client.startswith(answer) and v.records[0]["result"] == "ok"
    assert parse_pdu(pdu_of(v.to_client[len(answer) :])).error == 0x8703


def test_tune_writes_land_only_inside_the_declared_byte_ranges() -> None:
    insp = connected()
    for frame, where in ((write_db(14, b"\x01\x02\x03"), "DB1.DBB 14\u201316"),
                         (write_db(0, b"\x01", db=2), "DB2.DBB 0")):  # fmt: skip
        v = insp.from_client(frame)
        assert v.to_server == b"" and parse_pdu(pdu_of(v.to_client)).error == 0x8703
        assert v.records[0]["reason"] == (
            f"S7 write to {where} outside the write ranges (DB1 0\u201315)"
        )
    inside = write_db(10, b"\x01\x02\x03\x04\x05\x06")  # bytes 10..15
    assert insp.from_client(inside).to_server == inside
    assert operation_of(parse_pdu(pdu_of(wrap(proto.build_plc_control_request("stop"))))) == (
        "plc_stop"
    )


def test_malformed_frames_close_the_connection_and_are_recorded_never_forwarded() -> None:
    insp = connected()
    read = read_db(0, 2)
    bad = bytearray(read_db(0, 2))
    bad[7] = 0x33  # not the S7 protocol id
    v = insp.from_client(read + bytes(bad) + read)
    assert v.to_server == read and v.malformed == bytes(bad) + read
    assert v.close is not None and v.close.startswith("malformed S7 request")
    assert v.records[-1]["raw"] == v.malformed.hex()
    assert insp.from_client(read).to_server == b""  # closed for good


def test_data_before_the_cotp_connection_and_client_acks_are_refused() -> None:
    insp = S7Inspector(TUNE, ManualClock(T0))
    v = insp.from_client(read_db(0, 1))
    assert v.close is not None and v.to_server == b""
    ack = wrap(struct.pack(">BBHHHHH", 0x32, ACK_DATA, 0, 77, 1, 0, 0) + b"\x1b")
    v = connected().from_client(ack)  # an answer to a job the PLC never sent
    assert v.close is not None and "never sent" in v.close


def test_obligations_and_settings_are_validated() -> None:
    with pytest.raises(ObligationsError, match="allow"):
        S7Inspector(Obligations(protocols={"s7": {"allow": ["everything"]}}), ManualClock(T0))
    with pytest.raises(ObligationsError, match="unknown"):
        S7Inspector(Obligations(protocols={"s7": {"alow": []}}), ManualClock(T0))
    # obligations without an s7 block: set-up only, nothing else
    insp = connected(Obligations())
    assert insp.from_client(read_db(0, 1)).to_server == b""
    assert validate_s7_settings(S7_SETTINGS, "settings") == S7_SETTINGS
    for bad, field in (({"write_ranges": {"tune": [{"area": "DB", "first": 0, "last": 1}]}}, "db"),
                       ({"write_ranges": {"tune": [{"area": "X", "first": 0, "last": 1}]}}, "area"),
                       ({"write_ranges": {"bad": []}}, "operation class"),
                       ({"ranges": {}}, "unknown")):  # fmt: skip
        with pytest.raises(ValidationError, match=field):
            validate_s7_settings(bad, "settings")
    plugin = plugin_for("s7")
    assert plugin is not None and plugin.well_known_port == 102


# ---- fuzz ----------------------------------------------------------------------------------

SEEDS = [
    read_db(0, 8), write_db(2, b"\x01\x02"), write_db(40, b"\x01"),
    wrap(proto.build_plc_control_request("stop")), wrap(proto.build_plc_control_request("hot_start")),
    wrap(proto.build_setup_communication_request()), wrap(proto.build_list_blocks_request()),
    wrap(proto.build_start_upload_request(0x41, 1)), wrap(proto.build_download_request(0x41, 1, b"\x00" * 8)),
    bytes.fromhex("0300000702f080"),
]  # fmt: skip


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7:
            del data[rng.randrange(len(data) + 1) :]
        elif choice < 0.85:
            data += rng.randbytes(rng.randint(1, 8))
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 4))
    return bytes(data)


def _allowed_only(wire: bytes) -> int:
    """Everything forwarded is well-formed TPKT/COTP and every S7 request in it is allowed."""
    frames, rest, error = TpktFramer().feed(wire)
    assert error is None and rest == b""
    payload, judged = b"", 0
    for frame in frames:
        if frame.cotp_type in (CR, DR, DC):  # connection set-up and disconnect
            continue
        payload += frame.payload
        if not frame.eot:
            continue  # a fragment: judged with the rest of its PDU
        pdu, payload = parse_pdu(payload), b""
        if pdu.rosctr == 1 and pdu.params[0] == 0xF0:
            continue
        name = operation_of(pdu)
        assert name in READ_ONLY | {"write_var"}, name
        if name == "write_var":
            assert all(i.db == 1 and i.first_byte + i.length <= 16 for i in pdu.items)
        judged += 1
    return judged


def test_fuzz_forwards_nothing_malformed_or_disallowed() -> None:
    rng, passed = random.Random(1042), 0
    for i in range(12_000):
        insp = connected()
        if i % 3 == 0:
            data = rng.randbytes(rng.randint(1, 64))
        else:
            picked = [rng.choice(SEEDS) for _ in range(rng.randint(1, 3))]
            data = b"".join(_mutate(rng, f) if rng.random() < 0.7 else f for f in picked)
        cut = rng.randint(0, len(data)) if i % 5 == 0 else len(data)  # split segments too
        forwarded = insp.from_client(data[:cut]).to_server + insp.from_client(data[cut:]).to_server
        passed += _allowed_only(forwarded)
    assert passed > 1000  # the run exercised the forwarding path, not only refusals


# ---- end to end: snap7's server behind the agent -------------------------------------------


@pytest.fixture
def s7plc() -> Iterator[S7Plc]:
    plc = S7Plc()
    yield plc
    plc.stop()


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, s7plc: S7Plc) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", s7plc.port, "s7")])
    rig.add_asset("cpu-lab", s7plc.port, "s7", settings=S7_SETTINGS)
    rig.vendor("alice")
    yield rig
    rig.close()


def _s7_client(port: int) -> snap7.client.Client:
    client = snap7.client.Client()
    client.connect("127.0.0.1", 0, 1, tcp_port=port)
    return client


@needs("sshd")
def test_read_only_reads_the_server_and_a_write_var_never_lands(rig: SshRig, s7plc: S7Plc) -> None:
    rig.grant(asset="cpu-lab", operation_class="read_only")
    proc, port = _forward(rig, s7plc.port, asset="cpu-lab")
    try:
        client = _s7_client(port)
        assert bytes(client.db_read(1, 0, 8)) == bytes(s7plc.db1[:8]) == bytes(range(8))
        with pytest.raises(ClientRefused, match="Access to object refused"):
            client.db_write(1, 0, bytearray(b"\xff\xff"))
        assert bytes(client.db_read(1, 0, 2)) == b"\x00\x01"  # still connected
        client.disconnect()
    finally:
        proc.kill()
        proc.communicate(5)
    assert bytes(s7plc.db1) == bytes(range(32))  # the server's memory: unchanged
    _until(lambda: audit_events(rig.broker, "ot.refused"), "the refusal alert")
    [event] = audit_events(rig.broker, "ot.refused")
    assert event["details"]["protocol"] == "s7" and event["details"]["function_name"] == "write_var"


@needs("sshd", "tshark")
def test_tune_writes_inside_land_outside_and_stop_are_refused_and_tshark_decodes(
    rig: SshRig, s7plc: S7Plc, tmp_path: Path
) -> None:
    rig.grant(asset="cpu-lab", operation_class="tune")
    proc, port = _forward(rig, s7plc.port, asset="cpu-lab")
    try:
        client = _s7_client(port)
        client.db_write(1, 4, bytearray(b"\xaa\xbb"))
        with pytest.raises(ClientRefused):
            client.db_write(1, 20, bytearray(b"\xcc"))
        with pytest.raises(ClientRefused):
            client.db_write(1, 15, bytearray(b"\xcc\xcc"))  # straddles the range's end
        with pytest.raises(ClientRefused):
            client.plc_stop()
        client.disconnect()
    finally:
        proc.kill()
        proc.communicate(5)
    expected = bytearray(range(32))
    expected[4:6] = b"\xaa\xbb"
    assert bytes(s7plc.db1) == bytes(expected) and s7plc.cpu_state == "RUN"

    [pcap_dir] = _recordings(rig, "-tcp1")
    [ops_dir] = _recordings(rig, "-tcp1-ops")
    _wait_closed(pcap_dir)
    _wait_closed(ops_dir)
    ops = [json.loads(line) for line in assemble(ops_dir).decode().splitlines()]
    assert [(o["function_name"], o["allowed"]) for o in ops] == [
        ("write_var", True), ("write_var", False), ("write_var", False), ("plc_stop", False),
    ]  # fmt: skip
    _timeline_shows_s7(rig)
    require("tshark")
    tshark = shutil.which("tshark")
    assert tshark is not None and s7plc.port != 102
    pcap = tmp_path / "s7.pcap"
    pcap.write_bytes(assemble(pcap_dir))
    out = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-Y", "s7comm", "-T", "fields", "-e", "s7comm.param.func"],
        capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    funcs = out.stdout.split()
    assert "0x05" in funcs and "0x29" in funcs and "0xf0" in funcs, out.stdout


def _timeline_shows_s7(rig: SshRig) -> None:
    """The one operations timeline shows S7 records in S7 terms, refusals and stop marked."""
    engine = rig.broker.services.engine

    def ops_row() -> str | None:
        with session_scope(engine) as db:
            row = db.exec(select(Recording).where(Recording.format == "ops_jsonl")).first()
            return row.id if row is not None and row.finalized_at is not None else None

    _until(ops_row, "the ops-log row to be finalized")
    with _login(rig.broker, "sam") as sam:  # security reviewer
        page = sam.get(f"{rig.broker.url}/recordings/{ops_row()}/operations")
    assert page.status_code == 200, page.text
    written, outside, straddling, stop = _rows(page.text)
    assert "s7 5" in written and "write_var" in written and "DB1.DBB 4\u20135" in written
    assert "op-refused" not in written and "op-write" in written
    assert "op-refused" in outside and "DB1.DBB 20" in outside and "op-refused" in straddling
    assert "op-dangerous" in stop and "plc_stop" in stop and "S7 plc_stop not allowed" in stop


def test_write_data_longer_than_its_address_says_is_malformed_not_forwarded() -> None:
    # params: one byte at DB1.DBB 15 (inside the range); data: 8 bytes that would spill over
    honest = pdu_of(write_db(15, b"\x01"))
    ref = parse_pdu(honest).ref
    params = honest[10:24]
    data = b"\x00\x04" + struct.pack(">H", 64) + bytes(8)
    head = struct.pack(">BBHHHH", 0x32, 1, 0, ref, len(params), len(data))
    v = connected().from_client(wrap(head + params + data))
    assert v.to_server == b"" and v.close is not None and "8 bytes for an item of 1" in v.close


def test_block_upload_and_download_need_the_program_class() -> None:
    program = Obligations(protocols={"s7": {"allow": ["read_var", "upload", "download"]}})
    upload = wrap(proto.build_start_upload_request(0x41, 1))
    download = wrap(proto.build_download_request(0x41, 5, b"\x00" * 8))
    for frame, name in ((upload, "upload"), (download, "download")):
        refused = connected(TUNE).from_client(frame)
        assert refused.to_server == b"" and refused.records[0]["function_name"] == name
        assert refused.records[0]["class"] == "engineering"
        assert connected(program).from_client(frame).to_server == frame
