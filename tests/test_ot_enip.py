"""EtherNet/IP + CIP inspection: the sans-IO inspector, a fuzz run, and end to end against
cpppo's EtherNet/IP simulator (its own process) through the front door (``ssh -L``): cpppo's
client reads and writes tags, pycomm3's CIPDriver asks for a stop; outcomes are checked by
reading the simulator directly.
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
from typing import Any

import pytest
from cpppo.server.enip import client as cpppo_client
from pycomm3 import CIPDriver

from policies.decision import Obligations
from sessions.errors import ValidationError
from sessions.ot.base import ObligationsError
from sessions.ot.enip import (
    READ_ONLY,
    EnipInspector,
    operation_of,
    requests_in,
    validate_enip_settings,
)
from sessions.ot.enip_wire import (
    PASS_COMMANDS,
    SEND_RR,
    SEND_UNIT,
    EncapFramer,
    parse_cip,
    parse_message,
)
from sessions.ot.registry import plugin_for
from sessions.recording import assemble
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.components import needs
from tests.harness.ot_peers import EnipSimulator
from tests.harness.ssh_session import SshRig
from tests.test_ot_sessions import _forward, _recordings, _until, _wait_closed

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
TUNE = Obligations(protocols={"enip": {"allow": sorted(READ_ONLY | {"write_tag"})}})
SESSION = 0x1234


def encap(command: int, data: bytes, context: bytes = b"ctx00001", session: int = SESSION) -> bytes:
    return struct.pack("<HHII", command, len(data), session, 0) + context + bytes(4) + data


def symbol(tag: str) -> bytes:
    raw = tag.encode()
    return b"\x91" + bytes([len(raw)]) + raw + (b"\x00" if len(raw) % 2 else b"")


def cip(service: int, path: bytes, data: bytes = b"") -> bytes:
    return bytes([service, len(path) // 2]) + path + data


def rr(message: bytes, context: bytes = b"ctx00001") -> bytes:
    items = struct.pack("<HHHH", 0, 0, 0xB2, len(message)) + message
    return encap(SEND_RR, struct.pack("<IHH", 0, 5, 2) + items, context)


REGISTER = encap(0x65, struct.pack("<HH", 1, 0), session=0)
READ_TAG = rr(cip(0x4C, symbol("Setpoint"), struct.pack("<H", 2)))
WRITE_TAG = rr(cip(0x4D, symbol("Setpoint"), struct.pack("<HHhh", 0xC3, 2, 5, 6)), b"ctx00002")
IDENTITY = b"\x20\x01\x24\x01"
STOP = rr(cip(0x07, IDENTITY), b"ctx00003")
RESET = rr(cip(0x05, IDENTITY), b"ctx00004")


def cip_reply(frame: bytes) -> tuple[int, int]:
    """(service, general status) of the CIP reply in one SendRRData answer."""
    message = parse_message(frame[24:]).cip
    return message[0], message[2]


def test_reads_pass_writes_and_stop_are_refused_with_a_cip_privilege_violation() -> None:
    insp = EnipInspector(None, ManualClock(T0))  # no obligations: the read-only default
    assert insp.from_client(REGISTER).to_server == REGISTER
    assert insp.from_client(READ_TAG).to_server == READ_TAG
    for frame, name in ((WRITE_TAG, "write_tag"), (STOP, "stop")):
        v = insp.from_client(frame)
        assert v.to_server == b"" and v.to_client == b""  # held behind the read's answer
        [record] = v.records
        assert (record["function_name"], record["allowed"], record["class"]) == (
            name, False, "write" if name == "write_tag" else "dangerous")  # fmt: skip
    answer = encap(SEND_RR, struct.pack("<IHH", 0, 0, 2) + struct.pack("<HHHH", 0, 0, 0xB2, 6)
                   + bytes([0xCC, 0, 0, 0, 7, 0]))  # fmt: skip
    v = insp.from_server(answer)
    assert v.to_client.startswith(answer) and v.records[0]["result"] == "ok"
    refusals = v.to_client[len(answer) :]
    first = refusals[: 24 + struct.unpack_from("<H", refusals, 2)[0]]
    assert cip_reply(first) == (0xCD, 0x0F) and first[12:20] == b"ctx00002"
    assert cip_reply(refusals[len(first) :]) == (0x87, 0x0F)


def test_tune_writes_tags_but_not_attributes_or_reset() -> None:
    insp = EnipInspector(TUNE, ManualClock(T0))
    assert insp.from_client(WRITE_TAG).to_server == WRITE_TAG
    set_attr = rr(cip(0x10, IDENTITY + b"\x30\x01", b"\x01"), b"ctx00009")
    for frame in (RESET, set_attr):
        assert insp.from_client(frame).to_server == b""
    # an Unconnected Send is judged by what it carries; a Multiple Service Packet by all of it
    inner = cip(0x07, IDENTITY)
    wrapped = cip(0x52, b"\x20\x06\x24\x01", struct.pack("<BBH", 10, 5, len(inner)) + inner
                  + (b"\x00" if len(inner) % 2 else b"") + b"\x01\x00\x01\x00")  # fmt: skip
    assert [operation_of(r) for r in requests_in(parse_cip(wrapped)) or []] == ["stop"]
    parts = [cip(0x4C, symbol("A"), b"\x01\x00"), cip(0x07, IDENTITY)]
    offsets = [2 + 2 * len(parts), 2 + 2 * len(parts) + len(parts[0])]
    packet = cip(
        0x0A, b"\x20\x02\x24\x01", struct.pack("<3H", len(parts), *offsets) + b"".join(parts)
    )
    assert [operation_of(r) for r in requests_in(parse_cip(packet)) or []] == ["read_tag", "stop"]
    v = insp.from_client(rr(packet, b"ctx00010"))
    assert v.to_server == b"" and v.records[0]["reason"] == "EtherNet/IP stop not allowed"


def test_malformed_frames_close_the_connection_and_unknown_commands_are_answered() -> None:
    insp = EnipInspector(TUNE, ManualClock(T0))
    v = insp.from_client(encap(0x0099, b""))  # not an encapsulation command the broker relays
    assert v.to_server == b"" and struct.unpack_from("<I", v.to_client, 8)[0] == 1
    bad = rr(b"\x4c\x05\x91")  # path longer than the message
    v = insp.from_client(READ_TAG + bad + READ_TAG)
    assert v.to_server == READ_TAG and v.malformed == bad + READ_TAG
    assert v.close is not None and v.close.startswith("malformed EtherNet/IP request")
    assert v.records[-1]["raw"] == v.malformed.hex()


def test_obligations_and_settings_are_validated() -> None:
    with pytest.raises(ObligationsError, match="allow"):
        EnipInspector(Obligations(protocols={"enip": {"allow": ["all"]}}), ManualClock(T0))
    insp = EnipInspector(Obligations(), ManualClock(T0))  # no enip block: set-up only
    assert insp.from_client(REGISTER + READ_TAG).to_server == REGISTER
    assert validate_enip_settings({}, "settings") == {}
    with pytest.raises(ValidationError, match="unknown"):
        validate_enip_settings({"write_tags": []}, "settings")
    plugin = plugin_for("enip")
    assert plugin is not None and plugin.well_known_port == 44818


# ---- fuzz ----------------------------------------------------------------------------------

SEEDS = [REGISTER, READ_TAG, WRITE_TAG, STOP, RESET, encap(0x63, b""), encap(0x66, b""),
         rr(cip(0x0E, IDENTITY + b"\x30\x01"), b"ctx00011")]  # fmt: skip


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.6 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.8:
            del data[rng.randrange(len(data) + 1) :]
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 6))
    return bytes(data)


def _allowed_only(wire: bytes) -> int:
    frames, rest, error = EncapFramer().feed(wire)
    assert error is None and rest == b""
    judged = 0
    for frame in frames:
        if frame.command in PASS_COMMANDS:
            continue
        assert frame.command in (SEND_RR, SEND_UNIT)
        requests = requests_in(parse_cip(parse_message(frame.data).cip))
        for request in requests or []:
            assert operation_of(request) in READ_ONLY, request
        judged += 1
    return judged


def test_fuzz_forwards_nothing_malformed_or_disallowed() -> None:
    rng, passed = random.Random(44818), 0
    for i in range(12_000):
        insp = EnipInspector(None, ManualClock(T0))
        if i % 3 == 0:
            data = rng.randbytes(rng.randint(1, 80))
        else:
            picked = [rng.choice(SEEDS) for _ in range(rng.randint(1, 3))]
            data = b"".join(_mutate(rng, f) if rng.random() < 0.7 else f for f in picked)
        cut = rng.randint(0, len(data)) if i % 5 == 0 else len(data)
        forwarded = insp.from_client(data[:cut]).to_server + insp.from_client(data[cut:]).to_server
        passed += _allowed_only(forwarded)
    assert passed > 1000  # the run exercised the forwarding path, not only refusals


# ---- end to end: cpppo's simulator behind the agent ----------------------------------------


@pytest.fixture
def sim() -> Iterator[EnipSimulator]:
    simulator = EnipSimulator("Setpoint=INT[4]")
    yield simulator
    simulator.stop()


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, sim: EnipSimulator) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", sim.port, "enip")])
    rig.add_asset("plc-logix", sim.port, "enip")
    rig.vendor("alice")
    yield rig
    rig.close()


def _tags(port: int, *operations: str) -> list[tuple[int, Any]]:
    """cpppo's client: (status, value) of each operation, in order."""
    with cpppo_client.connector(host="127.0.0.1", port=port, timeout=10) as conn:
        ops = cpppo_client.parse_operations(list(operations))
        return [(sts, val) for _, _, _, _, sts, val in conn.pipeline(operations=ops, depth=1)]


def _stop(port: int) -> Any:
    """pycomm3: an unconnected Stop (0x07) to the Identity object."""
    with CIPDriver(f"127.0.0.1:{port}") as driver:
        return driver.generic_message(service=0x07, class_code=0x01, instance=1, connected=False)


@needs("sshd")
def test_read_only_reads_pass_a_write_tag_never_lands(rig: SshRig, sim: EnipSimulator) -> None:
    rig.grant(asset="plc-logix", operation_class="read_only")
    proc, port = _forward(rig, sim.port, asset="plc-logix")
    try:
        results = _tags(port, "Setpoint[0-3]", "Setpoint[0-1]=(INT)5,6", "Setpoint[0-1]")
        stop = _stop(port)
    finally:
        proc.kill()
        proc.communicate(5)
    assert results == [(0, [0, 0, 0, 0]), (0x0F, None), (0, [0, 0])]
    assert stop.error == "Permission denied"
    assert sim.read("Setpoint[0-1]") == [0, 0]  # the simulator's own answer: unchanged
    _until(lambda: len(audit_events(rig.broker, "ot.refused")) >= 2, "the refusal alerts")
    refused = audit_events(rig.broker, "ot.refused")
    assert {e["details"]["function_name"] for e in refused} == {"write_tag", "stop"}
    assert {e["details"]["protocol"] for e in refused} == {"enip"}


@needs("sshd", "tshark")
def test_tune_writes_land_stop_is_refused_and_tshark_decodes(
    rig: SshRig, sim: EnipSimulator, tmp_path: Path
) -> None:
    rig.grant(asset="plc-logix", operation_class="tune")
    proc, port = _forward(rig, sim.port, asset="plc-logix")
    try:
        assert _tags(port, "Setpoint[1-2]=(INT)7,8") == [(0, True)]
        stop = _stop(port)
    finally:
        proc.kill()
        proc.communicate(5)
    assert stop.error == "Permission denied"
    assert sim.read("Setpoint[0-3]") == [0, 7, 8, 0]

    [pcap_dir] = _recordings(rig, "-tcp1")
    [ops_dir] = _recordings(rig, "-tcp1-ops")
    _wait_closed(pcap_dir)
    _wait_closed(ops_dir)
    ops = [json.loads(line) for line in assemble(ops_dir).decode().splitlines()]
    assert [(o["function_name"], o["allowed"], o["result"]) for o in ops] == [
        ("write_tag", True, "ok")
    ]
    tshark = shutil.which("tshark")
    assert tshark is not None and sim.port != 44818
    pcap = tmp_path / "enip.pcap"
    pcap.write_bytes(assemble(pcap_dir))
    out = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-Y", "enip && cip", "-T", "fields", "-e", "cip.sc"],
        capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert "0x4d" in out.stdout.split() or "0x0000004d" in out.stdout, out.stdout
