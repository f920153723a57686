"""The OT inspector plug-in interface: registry, obligations blocks, settings, pacing, draining.

Unit level (sans-IO inspectors, ManualClock); the protocols' own suites are
test_modbus_inspector.py, test_ot_s7.py and test_ot_enip.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from snap7.s7protocol import S7Protocol
from snap7.type import Area, WordLen

from policies.decision import ModbusObligations, Obligations, parse_decision
from sessions.endpoints import INSPECTED_PROTOCOLS, validate_settings
from sessions.errors import ValidationError
from sessions.ot.base import Inspector, ObligationsError
from sessions.ot.modbus import ModbusInspector, modbus_obligations
from sessions.ot.pacing import TokenBucket
from sessions.ot.registry import PLUGINS, plugin_for
from sessions.ot.s7 import S7Inspector
from sessions.ot.s7_wire import wrap
from sessions.testing import ManualClock

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
COTP_CR = bytes.fromhex("0300001611e00000000100c0010ac1020100c2020102")
proto = S7Protocol()


def test_the_registry_is_keyed_by_declared_protocol_and_drives_inspection() -> None:
    assert {name: p.well_known_port for name, p in PLUGINS.items()} == {
        "modbus": 502, "s7": 102, "enip": 44818,
    }  # fmt: skip
    assert sorted(INSPECTED_PROTOCOLS) == ["enip", "modbus", "s7"]
    assert plugin_for("opcua") is None and plugin_for("tcp") is None
    for name, plugin in PLUGINS.items():
        assert plugin.name == name
        inspector: Inspector = plugin.inspector(None, ManualClock(T0), None)
        assert inspector.accepting and inspector.drained and inspector.finish() == []


def test_endpoint_settings_are_validated_by_the_protocol_plugin() -> None:
    s7 = {"write_ranges": {"tune": [{"area": "M", "first": 0, "last": 9}]}}
    assert validate_settings("s7", s7) == {
        "write_ranges": {"tune": [{"area": "M", "db": None, "first": 0, "last": 9}]}
    }
    with pytest.raises(ValidationError, match=re.escape("settings.write_ranges.tune[0].last")):
        validate_settings("s7", {"write_ranges": {"tune": [{"area": "M", "first": 0}]}})
    with pytest.raises(ValidationError, match="unknown enip setting"):
        validate_settings("enip", {"unit_ids": [1]})
    with pytest.raises(ValidationError, match="opcua endpoints take no settings"):
        validate_settings("opcua", {"x": 1})


def test_protocols_blocks_are_shape_checked_by_the_decision_and_parsed_by_their_module() -> None:
    ok = parse_decision({"allow": True, "reasons": ["r"], "obligations": {
        "protocols": {"s7": {"allow": ["read_var"]}}}})  # fmt: skip
    assert ok.allow and ok.obligations.protocols == {"s7": {"allow": ["read_var"]}}
    for bad in ([], {"s7": []}, {"": {}}):
        d = parse_decision({"allow": True, "reasons": ["r"], "obligations": {"protocols": bad}})
        assert not d.allow and "obligations.protocols" in d.reasons[0]
    # the protocol's own module refuses a block it cannot use: the connection is refused
    with pytest.raises(ObligationsError, match="write_ranges"):
        S7Inspector(
            Obligations(protocols={"s7": {"allow": [], "write_ranges": {}}}), ManualClock(T0)
        )


def test_a_protocols_modbus_block_takes_precedence_over_the_legacy_modbus_block() -> None:
    legacy = Obligations(modbus=ModbusObligations((1, 2, 3)))
    assert modbus_obligations(legacy).allow_function_codes == (1, 2, 3)
    both = Obligations(
        modbus=ModbusObligations((1, 2, 3)),
        protocols={"modbus": {"allow_function_codes": [3], "write_ranges": [], "unit_ids": [1]}},
    )
    assert modbus_obligations(both) == ModbusObligations((3,), (), (1,))
    with pytest.raises(ObligationsError, match=re.escape("obligations.protocols.modbus")):
        ModbusInspector(Obligations(protocols={"modbus": {"codes": [3]}}), ManualClock(T0))


def read_db(start: int) -> bytes:
    return wrap(proto.build_read_request(Area.DB, 1, start, WordLen.Byte, 2))


def test_requests_are_paced_by_the_shared_bucket_and_released_by_poll() -> None:
    clock = ManualClock(T0)
    bucket = TokenBucket(2.0, clock)  # 2 requests/s, shared by the asset's connections
    insp = S7Inspector(None, clock, limiter=bucket)
    insp.from_client(COTP_CR)
    first, second = read_db(0), read_db(2)
    v = insp.from_client(first + second)
    assert v.to_server == first and v.poll_at is not None
    assert insp.poll().to_server == b""  # not yet due
    clock.advance(0.5)
    assert insp.poll().to_server == second


def test_ending_drops_queued_requests_and_logs_unanswered_ones() -> None:
    clock = ManualClock(T0)
    insp = S7Inspector(None, clock, limiter=TokenBucket(1.0, clock))
    insp.from_client(COTP_CR)
    insp.from_client(read_db(0) + read_db(2))
    assert not insp.drained  # the first is at the PLC
    v = insp.begin_close("grant revoked")
    assert [(r["result"], r["reason"]) for r in v.records] == [
        ("not_sent", "session closing: grant revoked")
    ]
    assert not insp.accepting and insp.from_client(read_db(4)).to_server == b""
    [left] = insp.finish()
    assert left["result"] == "no_response" and left["addresses"] == ["DB1.DBB 0\u20131"]


def test_an_unanswered_request_times_out_and_frees_the_refusals_behind_it() -> None:
    clock = ManualClock(T0)
    insp = S7Inspector(None, clock)
    insp.from_client(COTP_CR)
    assert insp.from_client(read_db(0)).poll_at == T0 + timedelta(seconds=5)
    write = wrap(proto.build_write_request(Area.DB, 1, 0, WordLen.Byte, b"\x01"))
    held = insp.from_client(write)
    assert held.to_client == b"" and held.records[0]["result"] == "refused"
    clock.advance(4.9)
    assert insp.poll().to_client == b""
    clock.advance(0.1)
    v = insp.poll()
    assert [r["result"] for r in v.records] == ["no_response"] and insp.drained
    assert v.to_client[7:9] == b"\x32\x03"  # the held refusal: an S7 Ack-Data
