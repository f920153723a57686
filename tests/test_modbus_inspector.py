"""The Modbus/TCP inspector: framing, decoding, enforcement, ops log; then a real pymodbus PLC.

Unit tests drive :class:`sessions.ot.modbus.ModbusInspector` with a ManualClock.  The integration
tests put a tiny asyncio relay (driving the inspector the way the broker's relay must) between
a real pymodbus client and a real pymodbus ``ModbusTcpServer`` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from policies.decision import (
    COILS,
    HOLDING_REGISTERS,
    ModbusObligations,
    Obligations,
    WriteRange,
    parse_decision,
)
from sessions.clock import SystemClock
from sessions.errors import SessionsError
from sessions.ot.base import Verdicts
from sessions.ot.modbus import ModbusInspector
from sessions.ot.modbus_wire import (
    ExceptionCode,
    Frame,
    MbapFramer,
    ModbusProtocolError,
    exception_response,
    parse_request,
    parse_response,
    reference_range,
)
from sessions.ot.pacing import TokenBucket
from sessions.testing import ManualClock

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
TUNE_CODES = (1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 17, 20, 22, 23, 24, 43)


def mbap(tid: int, pdu: bytes, unit: int = 1, protocol: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu


def read(tid: int, fc: int = 3, addr: int = 0, qty: int = 10, unit: int = 1) -> bytes:
    return mbap(tid, struct.pack(">BHH", fc, addr, qty), unit)


def write_reg(tid: int, addr: int, value: int = 1, unit: int = 1) -> bytes:
    return mbap(tid, struct.pack(">BHH", 6, addr, value), unit)


def write_regs(tid: int, addr: int, values: list[int], unit: int = 1) -> bytes:
    body = b"".join(struct.pack(">H", v) for v in values)
    return mbap(tid, struct.pack(">BHHB", 16, addr, len(values), len(body)) + body, unit)


def write_coil(tid: int, addr: int, on: bool = True, unit: int = 1) -> bytes:
    return mbap(tid, struct.pack(">BHH", 5, addr, 0xFF00 if on else 0), unit)


def write_coils(tid: int, addr: int, bits: list[bool], unit: int = 1) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        packed[i // 8] |= bit << (i % 8)
    return mbap(tid, struct.pack(">BHHB", 15, addr, len(bits), len(packed)) + bytes(packed), unit)


def mask_write(tid: int, addr: int, unit: int = 1) -> bytes:
    return mbap(tid, struct.pack(">BHHH", 22, addr, 0x00F2, 0x0025), unit)


def read_write(tid: int, addr: int, qty: int = 1, unit: int = 1, read_addr: int = 5000) -> bytes:
    head = struct.pack(">BHHHHB", 23, read_addr, 2, addr, qty, 2 * qty)
    return mbap(tid, head + b"\x00\x09" * qty, unit)


NOUN_HR = ("holding register", "holding registers")


def hr(first: int, last: int, units: tuple[int, ...] | None = None) -> WriteRange:
    return WriteRange(HOLDING_REGISTERS, first, last, units)


def coils(first: int, last: int, units: tuple[int, ...] | None = None) -> WriteRange:
    return WriteRange(COILS, first, last, units)


def regs_response(tid: int, values: list[int], fc: int = 3) -> bytes:
    body = b"".join(struct.pack(">H", v) for v in values)
    return mbap(tid, bytes([fc, len(body)]) + body)


def exc(tid: int, fc: int, code: int, unit: int = 1) -> bytes:
    return mbap(tid, bytes([fc | 0x80, code]), unit)


def tune(
    ranges: tuple[WriteRange, ...] = (hr(100, 199),),
    rate: float | None = None,
    units: tuple[int, ...] | None = None,
) -> Obligations:
    """Tune codes; by default holding registers 100-199 writable and no coil."""
    return Obligations(modbus=ModbusObligations(TUNE_CODES, ranges, units), rate_limit_rps=rate)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def feed_chunks(insp: ModbusInspector, data: bytes, size: int) -> list[Verdicts]:
    return [insp.from_client(data[i : i + size]) for i in range(0, len(data), size)]


def joined(verdicts: list[Verdicts], attr: str) -> bytes:
    return b"".join(getattr(v, attr) for v in verdicts)


# ---------------------------------------------------------------------------------- framing


def test_framer_yields_whole_frames_from_split_and_coalesced_segments() -> None:
    stream = read(1) + write_reg(2, 5) + read(3, fc=1, qty=7)
    framer = MbapFramer()
    frames = [f for b in stream for f in framer.feed(bytes([b]))]
    assert [f.transaction_id for f in frames] == [1, 2, 3]
    assert b"".join(f.encode() for f in frames) == stream
    assert framer.buffered == 0
    coalesced = MbapFramer().feed(stream)
    assert coalesced == frames
    partial = MbapFramer()
    assert partial.feed(stream[:14]) == frames[:1]
    assert partial.buffered == 14 - len(read(1))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (struct.pack(">HHHB", 1, 1, 6, 1), "protocol id 1"),
        (struct.pack(">HHHB", 1, 0, 1, 1), "length 1"),
        (struct.pack(">HHHB", 1, 0, 0, 1), "length 0"),
        (struct.pack(">HHHB", 1, 0, 255, 1), "length 255"),
    ],
)
def test_framer_rejects_bad_headers_and_stays_broken(header: bytes, message: str) -> None:
    framer = MbapFramer()
    with pytest.raises(ModbusProtocolError, match=message) as info:
        framer.feed(read(9) + header)
    assert isinstance(info.value, SessionsError)
    assert info.value.code == "modbus_malformed"
    assert [f.transaction_id for f in info.value.frames] == [9]
    with pytest.raises(ModbusProtocolError):
        framer.feed(read(10))


def test_framer_accepts_the_largest_pdu() -> None:
    frame = Frame(7, 3, bytes([100]) + b"\x00" * 252)
    assert MbapFramer().feed(frame.encode()) == [frame]


# --------------------------------------------------------------------------------- decoding


def test_parse_request_decodes_reads_and_writes() -> None:
    r = parse_request(struct.pack(">BHH", 3, 10, 5))
    assert (r.function_code, r.start, r.quantity, r.write_span, r.problem) == (3, 10, 5, None, None)
    r = parse_request(struct.pack(">BHH", 5, 7, 0xFF00))
    assert (r.values, r.write_span) == ((True,), (7, 7))
    r = parse_request(struct.pack(">BHH", 6, 7, 513))
    assert (r.values, r.write_span) == ((513,), (7, 7))
    r = parse_request(write_coils(1, 20, [True, False, True] + [False] * 6 + [True])[7:])
    assert r.values == (True, False, True, False, False, False, False, False, False, True)
    assert r.write_span == (20, 29)
    r = parse_request(write_regs(1, 100, [1, 2, 0xFFFF])[7:])
    assert (r.values, r.write_span) == ((1, 2, 0xFFFF), (100, 102))
    r = parse_request(struct.pack(">BHHH", 22, 40, 0xF2, 0x25))
    assert r.write_span == (40, 40)
    assert dict(r.detail) == {"and_mask": 0xF2, "or_mask": 0x25}
    r = parse_request(struct.pack(">BHHHHBHH", 23, 1, 6, 100, 2, 4, 7, 8))
    assert (r.read_start, r.read_quantity, r.start, r.quantity) == (1, 6, 100, 2)
    assert (r.values, r.write_span) == ((7, 8), (100, 101))


def test_parse_request_decodes_the_other_function_codes() -> None:
    for fc in (7, 11, 12, 17):
        assert parse_request(bytes([fc])).function_code == fc
    assert parse_request(struct.pack(">BHH", 8, 4, 0)).detail["subfunction"] == 4
    assert parse_request(struct.pack(">BH", 24, 300)).start == 300
    sub = struct.pack(">BHHH", 6, 4, 1, 2)
    assert parse_request(bytes([20, len(sub)]) + sub).detail["records"] == 1
    wsub = struct.pack(">BHHHHH", 6, 4, 1, 2, 0xAAAA, 0xBBBB)
    assert parse_request(bytes([21, len(wsub)]) + wsub).detail["records"] == 1
    mei = parse_request(bytes([43, 14, 1, 0]))
    assert dict(mei.detail) == {"mei_type": 14, "read_code": 1, "object_id": 0}
    assert parse_request(bytes([43, 13, 1, 2, 3])).detail["mei_type"] == 13
    for fc in (90, 125, 126, 100):
        assert parse_request(bytes([fc, 0xDE, 0xAD])).detail["data"] == "dead"


@pytest.mark.parametrize(
    "pdu",
    [
        b"",
        b"\x00",
        bytes([0x83, 0, 0, 0, 1]),
        struct.pack(">BH", 3, 0),  # truncated read
        struct.pack(">BHHB", 3, 0, 1, 0),  # read with a trailing byte
        struct.pack(">BH", 6, 0),  # truncated write
        struct.pack(">BHHB", 16, 0, 2, 4) + b"\x00\x01",  # byte count beyond the data
        struct.pack(">BHHB", 16, 0, 2, 2) + b"\x00\x01",  # byte count != 2 * quantity
        struct.pack(">BHHB", 15, 0, 9, 1) + b"\x01",  # 9 coils need 2 bytes
        struct.pack(">BHHHHB", 23, 0, 1, 0, 2, 2) + b"\x00\x01",  # byte count != 2 * write qty
        bytes([7, 0]),
        bytes([8, 0]),
        bytes([8, 0, 1, 2]),
        bytes([20, 6]) + b"\x06" * 6,
        bytes([21, 9]) + struct.pack(">BHHH", 6, 1, 1, 2) + b"\x00\x00",  # record too short
        bytes([43]),
        bytes([43, 14, 1]),
        struct.pack(">BHH", 22, 0, 0),
    ],
)
def test_parse_request_rejects_broken_layouts(pdu: bytes) -> None:
    with pytest.raises(ModbusProtocolError):
        parse_request(pdu)


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        (struct.pack(">BHH", 1, 0, 0), ExceptionCode.ILLEGAL_DATA_VALUE),
        (struct.pack(">BHH", 1, 0, 2001), ExceptionCode.ILLEGAL_DATA_VALUE),
        (struct.pack(">BHH", 3, 0, 126), ExceptionCode.ILLEGAL_DATA_VALUE),
        (struct.pack(">BHH", 3, 65530, 7), ExceptionCode.ILLEGAL_DATA_ADDRESS),
        (struct.pack(">BHH", 5, 1, 0x1234), ExceptionCode.ILLEGAL_DATA_VALUE),
        (struct.pack(">BHHB", 16, 0, 0, 0), ExceptionCode.ILLEGAL_DATA_VALUE),
        (struct.pack(">BHHB", 16, 0, 124, 248) + b"\x00" * 248, ExceptionCode.ILLEGAL_DATA_VALUE),
        (struct.pack(">BHHB", 15, 0, 1969, 247) + b"\x00" * 247, ExceptionCode.ILLEGAL_DATA_VALUE),
        (bytes([43, 14, 5, 0]), ExceptionCode.ILLEGAL_DATA_VALUE),
    ],
)
def test_parse_request_flags_values_outside_the_spec(pdu: bytes, code: ExceptionCode) -> None:
    problem = parse_request(pdu).problem
    assert problem is not None and problem[0] == code


def test_parse_request_accepts_the_spec_maximums() -> None:
    assert parse_request(struct.pack(">BHH", 1, 0, 2000)).problem is None
    assert parse_request(struct.pack(">BHH", 4, 65411, 125)).problem is None
    assert parse_request(write_coils(1, 0, [True] * 1968)[7:]).problem is None
    assert parse_request(write_regs(1, 0, [0] * 123)[7:]).problem is None


def test_parse_response() -> None:
    assert parse_response(bytes([0x83, 2])).exception == 2
    assert parse_response(regs_response(1, [1, 2])[7:]).values == (1, 2)
    bits = parse_response(bytes([1, 2, 0b101, 0b1]), parse_request(struct.pack(">BHH", 1, 0, 9)))
    assert bits.values == (True, False, True, False, False, False, False, False, True)
    assert parse_response(bytes([6, 0, 1, 0, 2])).values is None
    assert parse_response(bytes([90, 1, 2, 3])).function_code == 90
    for broken in (b"", bytes([0x83]), bytes([3, 3, 0, 1, 0]), bytes([3, 4, 0]), bytes([6, 0])):
        with pytest.raises(ModbusProtocolError):
            parse_response(broken)


def test_reference_range() -> None:
    assert reference_range(3, 0, 10) == "40001\u201340010"
    assert reference_range(1, 0, 10) == "00001\u201300010"
    assert reference_range(2, 4, 1) == "10005"
    assert reference_range(4, 99, 2) == "30100\u201330101"
    assert reference_range(6, 9998, 1) == "49999"
    assert reference_range(16, 9999, 2) == "410000\u2013410001"
    assert reference_range(8, 0, 1) is None


def test_exception_response_bytes_follow_the_spec() -> None:
    frame = MbapFramer().feed(read(0x1234, fc=6, unit=0x11))[0]
    assert exception_response(frame, ExceptionCode.ILLEGAL_DATA_ADDRESS) == bytes.fromhex(
        "1234 0000 0003 11 86 02"
    )


# ------------------------------------------------------------------------------ enforcement


def test_allowed_read_passes_unchanged_and_its_answer_is_logged(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    request = read(0x0102, fc=3, addr=0, qty=3, unit=7)
    v = insp.from_client(request)
    assert (v.to_server, v.to_client, v.records, v.close) == (request, b"", (), None)
    assert insp.in_flight() == 1 and not insp.drained
    clock.advance(0.25)
    answer = mbap(0x0102, bytes([3, 6, 0, 1, 0, 2, 0, 3]), unit=7)
    v = insp.from_server(answer)
    assert v.to_client == answer and insp.drained
    (record,) = v.records
    assert record == {
        "time": "2025-03-01T08:00:00.000000Z",
        "protocol": "modbus",
        "class": "read",
        "addresses": ["40001\u201340003"],
        "transaction_id": 0x0102,
        "unit": 7,
        "function": 3,
        "function_name": "Read Holding Registers",
        "table": None,
        "start": 0,
        "quantity": 3,
        "range": "40001\u201340003",
        "read_start": None,
        "read_quantity": None,
        "read_range": None,
        "values": None,
        "detail": {},
        "allowed": True,
        "reason": "function 3 allowed",
        "result": "ok",
        "exception": None,
        "response_values": [1, 2, 3],
        "answered_at": "2025-03-01T08:00:00.250000Z",
    }
    json.dumps(record)


@pytest.mark.parametrize("size", [1, 2, 5, 11, 1000])
def test_split_and_coalesced_segments_give_the_same_result(clock: ManualClock, size: int) -> None:
    stream = read(1) + write_reg(2, 150) + write_reg(3, 10) + read(4, fc=1, qty=16)
    verdicts = feed_chunks(ModbusInspector(tune(), clock), stream, size)
    assert joined(verdicts, "to_server") == read(1) + write_reg(2, 150) + read(4, fc=1, qty=16)
    assert joined(verdicts, "to_client") == exc(3, 6, 2)
    assert not any(v.close for v in verdicts)


def test_function_not_allowed_gets_exception_01_and_the_connection_stays_up(
    clock: ManualClock,
) -> None:
    insp = ModbusInspector(tune(), clock)
    v = insp.from_client(mbap(0xBEEF, bytes([8, 0, 1, 0, 0]), unit=3))
    assert v.to_server == b"" and v.close is None
    assert v.to_client == bytes.fromhex("BEEF 0000 0003 03 88 01")
    (record,) = v.records
    assert record["allowed"] is False and record["result"] == "refused"
    assert record["exception"] == 1 and "function 8 (Diagnostics) not allowed" in record["reason"]
    assert insp.from_client(read(2)).to_server == read(2)


def test_unknown_function_codes_are_refused_unless_listed(clock: ManualClock) -> None:
    frame = mbap(1, bytes([100, 1, 2, 3]))
    assert ModbusInspector(tune(), clock).from_client(frame).to_client == exc(1, 100, 1)
    listed = Obligations(modbus=ModbusObligations((100,), ()))
    assert ModbusInspector(listed, clock).from_client(frame).to_server == frame


@pytest.mark.parametrize(
    ("frame", "allowed"),
    [
        (write_reg(1, 100), True),
        (write_reg(1, 199), True),
        (write_reg(1, 99), False),
        (write_reg(1, 200), False),
        (write_regs(1, 190, [0] * 10), True),
        (write_regs(1, 190, [0] * 11), False),
        (write_regs(1, 95, [0] * 10), False),
        # a holding-register range lets no coil write through, even at the same addresses
        (write_coil(1, 150), False),
        (write_coil(1, 250), False),
        (write_coils(1, 192, [True] * 8), False),
        (write_coils(1, 193, [True] * 8), False),
        (mbap(1, struct.pack(">BHHH", 22, 120, 0, 1)), True),
        (mbap(1, struct.pack(">BHHH", 22, 20, 0, 1)), False),
        (mbap(1, struct.pack(">BHHHHBH", 23, 5000, 10, 150, 1, 2, 9)), True),
        (mbap(1, struct.pack(">BHHHHBH", 23, 150, 10, 5000, 1, 2, 9)), False),
        (read(1, addr=5000), True),
    ],
)
def test_write_ranges_are_inclusive_and_confine_every_write(
    clock: ManualClock, frame: bytes, allowed: bool
) -> None:
    v = ModbusInspector(tune(), clock).from_client(frame)
    if allowed:
        assert (v.to_server, v.to_client) == (frame, b"")
    else:
        assert v.to_server == b""
        assert v.to_client == exc(1, frame[7], 2)
        table = "coil" if frame[7] in (5, 15) else "holding register"
        listed = "none" if table == "coil" else "100\u2013199"
        assert v.records[0]["reason"].endswith(f"outside the {table} write ranges ({listed})")


def test_adjacent_write_ranges_cover_a_write_across_them(clock: ManualClock) -> None:
    insp = ModbusInspector(tune((hr(10, 19), hr(0, 9), hr(30, 39))), clock)
    assert insp.from_client(write_regs(1, 5, [0] * 10)).to_server != b""
    v = insp.from_client(write_regs(2, 15, [0] * 10))
    assert v.to_client == exc(2, 16, 2)
    assert v.records[0]["reason"] == (
        "FC16 write to holding registers 15\u201324 outside the holding register write ranges "
        "(0\u201319, 30\u201339)"
    )


# ------------------------------------------------------ write ranges per table and unit id

COIL_WRITES, REGISTER_WRITES = (5, 15), (6, 16, 22, 23)
WRITE_FCS = (5, 6, 15, 16, 22, 23)
MULTI_WRITES = (15, 16, 23)
# Distinct numbers per table, so a write checked against the wrong table shows.
SPLIT = tune((hr(10, 30), coils(40, 60)))
BOUNDS = {fc: (40, 60) if fc in COIL_WRITES else (10, 30) for fc in WRITE_FCS}
NOUNS = {fc: ("coil", "coils") if fc in COIL_WRITES else NOUN_HR for fc in WRITE_FCS}


def writer(fc: int, tid: int, addr: int, qty: int = 1, unit: int = 1) -> bytes:
    """A write of ``qty`` addresses from ``addr`` (single writes: one) by function ``fc``."""
    if fc == 5:
        return write_coil(tid, addr, unit=unit)
    if fc == 6:
        return write_reg(tid, addr, unit=unit)
    if fc == 15:
        return write_coils(tid, addr, [True] * qty, unit=unit)
    if fc == 16:
        return write_regs(tid, addr, [1] * qty, unit=unit)
    if fc == 22:
        return mask_write(tid, addr, unit=unit)
    return read_write(tid, addr, qty, unit=unit)


def ranges_of(fc: int, first: int, last: int, units: tuple[int, ...] | None = None) -> WriteRange:
    return (coils if fc in COIL_WRITES else hr)(first, last, units)


def outside(fc: int, first: int, last: int, listed: str, scope: str = "") -> str:
    one, many = NOUNS[fc]
    where = f"{one} {first}" if first == last else f"{many} {first}\u2013{last}"
    return f"FC{fc} write to {where} outside the {one} write ranges{scope} ({listed})"


def assert_forwarded(v: Verdicts, frame: bytes) -> None:
    assert (v.to_server, v.to_client, v.close) == (frame, b"", None)


def assert_refused(v: Verdicts, frame: bytes, code: int, reason: str) -> None:
    assert v.to_server == b"" and v.close is None
    assert v.to_client == exc(frame[0] << 8 | frame[1], frame[7], code, unit=frame[6])
    (record,) = v.records
    assert (record["allowed"], record["result"], record["exception"]) == (False, "refused", code)
    assert record["reason"] == reason


@pytest.mark.parametrize("fc", WRITE_FCS)
@pytest.mark.parametrize(
    ("where", "allowed"), [("first-1", False), ("first", True), ("last", True), ("last+1", False)]
)
def test_each_write_function_at_the_boundaries_of_its_own_tables_range(
    clock: ManualClock, fc: int, where: str, allowed: bool
) -> None:
    first, last = BOUNDS[fc]
    addr = {"first-1": first - 1, "first": first, "last": last, "last+1": last + 1}[where]
    frame = writer(fc, 1, addr)
    v = ModbusInspector(SPLIT, clock).from_client(frame)
    if allowed:
        assert_forwarded(v, frame)
    else:
        assert_refused(v, frame, 2, outside(fc, addr, addr, f"{first}\u2013{last}"))


@pytest.mark.parametrize("fc", MULTI_WRITES)
def test_a_multi_write_must_lie_wholly_inside_its_range(clock: ManualClock, fc: int) -> None:
    first, last = BOUNDS[fc]
    listed = f"{first}\u2013{last}"
    insp = ModbusInspector(SPLIT, clock, max_concurrent=100)
    whole = writer(fc, 1, first, last - first + 1)
    assert_forwarded(insp.from_client(whole), whole)
    to_the_end = writer(fc, 2, last - 2, 3)
    assert_forwarded(insp.from_client(to_the_end), to_the_end)
    over_the_end = writer(fc, 3, last - 1, 3)
    v = insp.from_client(over_the_end)
    assert_refused(v, over_the_end, 2, outside(fc, last - 1, last + 1, listed))
    over_the_start = writer(fc, 4, first - 1, 3)
    v = insp.from_client(over_the_start)
    assert_refused(v, over_the_start, 2, outside(fc, first - 1, first + 1, listed))
    one_too_many = writer(fc, 5, first, last - first + 2)
    v = insp.from_client(one_too_many)
    assert_refused(v, one_too_many, 2, outside(fc, first, last + 1, listed))


@pytest.mark.parametrize("fc", WRITE_FCS)
def test_the_other_tables_range_admits_no_write(clock: ManualClock, fc: int) -> None:
    other = BOUNDS[6] if fc in COIL_WRITES else BOUNDS[5]
    own = "{}\u2013{}".format(*BOUNDS[fc])
    insp = ModbusInspector(SPLIT, clock, max_concurrent=100)
    for tid, addr in enumerate((other[0], (other[0] + other[1]) // 2, other[1]), start=1):
        frame = writer(fc, tid, addr)
        assert_refused(insp.from_client(frame), frame, 2, outside(fc, addr, addr, own))


def test_a_holding_register_range_lets_no_coil_write_through(clock: ManualClock) -> None:
    """The issue's case: tune write ranges 10-30 meant for holding registers."""
    insp = ModbusInspector(tune((hr(10, 30),)), clock)
    coil = write_coil(1, 15)
    v = insp.from_client(coil)
    assert_refused(v, coil, 2, "FC5 write to coil 15 outside the coil write ranges (none)")
    assert v.records[0]["table"] == "coils"
    assert_forwarded(insp.from_client(write_reg(2, 15)), write_reg(2, 15))
    # and the other way round
    insp = ModbusInspector(tune((coils(10, 30),)), clock)
    assert_forwarded(insp.from_client(coil), coil)
    register = write_reg(2, 15)
    reason = "FC6 write to holding register 15 outside the holding register write ranges (none)"
    assert_refused(insp.from_client(register), register, 2, reason)


@pytest.mark.parametrize("fc", WRITE_FCS)
def test_a_table_without_ranges_takes_no_writes(clock: ManualClock, fc: int) -> None:
    # the other table writable everywhere; this one has no range
    other = tune((coils(0, 65535),) if fc in REGISTER_WRITES else (hr(0, 65535),))
    for obligations in (other, tune(())):
        insp = ModbusInspector(obligations, clock, max_concurrent=100)
        for tid, addr in enumerate((0, 1000, 65535), start=1):
            frame = writer(fc, tid, addr)
            assert_refused(insp.from_client(frame), frame, 2, outside(fc, addr, addr, "none"))


@pytest.mark.parametrize("fc", WRITE_FCS)
def test_a_range_for_unit_1_refuses_the_same_write_to_unit_2(clock: ManualClock, fc: int) -> None:
    insp = ModbusInspector(tune((ranges_of(fc, 10, 30, units=(1,)),)), clock)
    allowed = writer(fc, 1, 20, unit=1)
    assert_forwarded(insp.from_client(allowed), allowed)
    refused = writer(fc, 2, 20, unit=2)
    v = insp.from_client(refused)
    assert_refused(v, refused, 2, outside(fc, 20, 20, "none", " for unit 2"))
    assert v.to_client == exc(2, fc, 2, unit=2)


def test_ranges_for_every_unit_and_for_some_units_combine(clock: ManualClock) -> None:
    insp = ModbusInspector(
        tune((hr(0, 9), hr(10, 30, units=(1,)), coils(5, 5, units=(2, 3)))),
        clock,
        max_concurrent=100,
    )
    across = write_regs(1, 5, [0] * 10, unit=1)  # 5-14: the shared range joined to unit 1's
    assert_forwarded(insp.from_client(across), across)
    shared = write_reg(2, 5, unit=2)
    assert_forwarded(insp.from_client(shared), shared)
    not_for_2 = write_reg(3, 15, unit=2)
    reason = "FC6 write to holding register 15 outside the holding register write ranges for unit 2 (0\u20139)"
    assert_refused(insp.from_client(not_for_2), not_for_2, 2, reason)
    coil_3 = write_coil(4, 5, unit=3)
    assert_forwarded(insp.from_client(coil_3), coil_3)
    coil_1 = write_coil(5, 5, unit=1)
    reason = "FC5 write to coil 5 outside the coil write ranges for unit 1 (none)"
    assert_refused(insp.from_client(coil_1), coil_1, 2, reason)


def test_unit_ids_restrict_the_units_that_may_be_addressed(clock: ManualClock) -> None:
    insp = ModbusInspector(tune((hr(0, 99),), units=(1, 3)), clock, max_concurrent=100)
    assert_forwarded(insp.from_client(read(1, unit=1)), read(1, unit=1))
    assert_forwarded(insp.from_client(write_reg(2, 5, unit=3)), write_reg(2, 5, unit=3))
    v = insp.from_client(read(3, unit=2))
    assert_refused(v, read(3, unit=2), 0x0A, "unit id 2 not allowed (unit ids: 1, 3)")
    assert v.to_client == bytes.fromhex("0003 0000 0003 02 83 0A")  # GATEWAY PATH UNAVAILABLE
    write = write_reg(4, 5, unit=2)
    assert_refused(insp.from_client(write), write, 0x0A, "unit id 2 not allowed (unit ids: 1, 3)")
    # the path comes first: a function the grant lacks, to another unit, is also 0x0A
    diagnostics = mbap(5, bytes([8, 0, 0, 0, 0]), unit=0)
    reason = "unit id 0 not allowed (unit ids: 1, 3)"
    assert_refused(insp.from_client(diagnostics), diagnostics, 0x0A, reason)
    assert_forwarded(insp.from_client(read(6, unit=1)), read(6, unit=1))  # still up
    # an empty list addresses no unit; None (the default) any unit
    nothing = ModbusInspector(tune(units=()), clock)
    reason = "unit id 1 not allowed (unit ids: none)"
    assert_refused(nothing.from_client(read(1)), read(1), 0x0A, reason)
    anything = ModbusInspector(tune(), clock)
    assert_forwarded(anything.from_client(read(1, unit=247)), read(1, unit=247))


def test_unit_ids_from_a_policy_decision_are_enforced(clock: ManualClock) -> None:
    decision = parse_decision(
        {
            "allow": True,
            "reasons": ["tune"],
            "obligations": {
                "modbus": {
                    "allow_function_codes": [3, 5, 6],
                    "write_ranges": [
                        {"table": "coils", "first": 15, "last": 15, "unit_ids": [2]},
                        {"table": "holding_registers", "first": 10, "last": 30},
                    ],
                    "unit_ids": [1, 2],
                }
            },
        }
    )
    assert decision.allow, decision.reasons
    insp = ModbusInspector(decision.obligations, clock, max_concurrent=100)
    assert_forwarded(insp.from_client(write_coil(1, 15, unit=2)), write_coil(1, 15, unit=2))
    assert insp.from_client(write_coil(2, 15, unit=1)).to_client == exc(2, 5, 2, unit=1)
    assert_forwarded(insp.from_client(write_reg(3, 15, unit=1)), write_reg(3, 15, unit=1))
    assert insp.from_client(write_reg(4, 15, unit=3)).to_client == exc(4, 6, 0x0A, unit=3)


def test_file_record_writes_are_admitted_by_the_function_list_only(clock: ManualClock) -> None:
    sub = struct.pack(">BHHHH", 6, 4, 1, 1, 0xAAAA)
    frame = mbap(1, bytes([21, len(sub)]) + sub)
    listed = Obligations(modbus=ModbusObligations((21,), ()))
    assert_forwarded(ModbusInspector(listed, clock).from_client(frame), frame)
    assert ModbusInspector(tune(), clock).from_client(frame).to_client == exc(1, 21, 1)


def test_read_only_default_allows_reads_and_device_id_only(clock: ManualClock) -> None:
    insp = ModbusInspector(None, clock, max_concurrent=100)
    for fc in (1, 2, 3, 4):
        assert insp.from_client(read(fc, fc=fc)).to_server == read(fc, fc=fc)
    device_id = mbap(5, bytes([43, 14, 1, 0]))
    assert insp.from_client(device_id).to_server == device_id
    assert insp.from_client(mbap(6, bytes([43, 13, 0, 0]))).to_client == exc(6, 43, 1)
    assert insp.from_client(write_reg(7, 0)).to_client == exc(7, 6, 1)
    assert insp.from_client(write_coil(8, 0)).to_client == exc(8, 5, 1)
    assert insp.from_client(write_regs(9, 0, [1])).to_client == exc(9, 16, 1)
    assert insp.from_client(mbap(10, bytes([7]))).to_client == exc(10, 7, 1)


def test_empty_obligations_refuse_everything(clock: ManualClock) -> None:
    insp = ModbusInspector(Obligations(), clock)
    assert insp.from_client(read(1)).to_client == exc(1, 3, 1)


def test_obligations_from_a_policy_decision_are_enforced(clock: ManualClock) -> None:
    decision = parse_decision(
        {
            "allow": True,
            "reasons": ["tune"],
            "obligations": {
                "modbus": {
                    "allow_function_codes": list(TUNE_CODES),
                    "write_ranges": [{"table": "holding_registers", "first": 40, "last": 49}],
                },
                "rate_limit_rps": 10,
            },
        }
    )
    assert decision.allow, decision.reasons
    insp = ModbusInspector(decision.obligations, clock)
    assert insp.from_client(write_reg(1, 45)).to_server == write_reg(1, 45)
    assert insp.from_client(write_reg(2, 50)).to_client == exc(2, 6, 2)
    assert insp.from_client(mbap(3, bytes([90, 0]))).to_client == exc(3, 90, 1)
    assert insp.from_client(write_coil(4, 45)).to_client == exc(4, 5, 2)


def test_values_outside_the_spec_get_exception_03_or_02(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    v = insp.from_client(read(1, qty=0) + read(2, qty=126) + read(3, addr=65535, qty=2))
    assert v.to_client == exc(1, 3, 3) + exc(2, 3, 3) + exc(3, 3, 2)
    assert v.to_server == b"" and v.close is None
    assert "quantity 126 outside 1..125" in v.records[1]["reason"]
    v = insp.from_client(mbap(4, struct.pack(">BHH", 5, 150, 0x00FF)))
    assert v.to_client == exc(4, 5, 3)


def test_malformed_request_closes_and_nothing_after_it_is_forwarded(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    bad = mbap(2, read(0)[7:], protocol=5)
    v = insp.from_client(read(1) + bad + read(3))
    assert v.to_server == read(1)
    assert v.close is not None and "protocol id 5" in v.close
    assert insp.closed == v.close
    assert v.malformed == bad + read(3)  # stopped: for the recording, never forwarded
    assert insp.from_client(read(4)) == Verdicts(close=v.close)
    # the transaction already at the PLC is still answered
    assert insp.from_server(regs_response(1, [0] * 10)).to_client == regs_response(1, [0] * 10)
    assert insp.drained


def test_malformed_pdu_layout_closes(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    broken = mbap(1, struct.pack(">BHHB", 16, 100, 2, 2) + b"\x00\x01")
    v = feed_chunks(insp, broken + write_reg(2, 100), 1)
    assert joined(v, "to_server") == b""
    closed = [x for x in v if x.close]
    assert closed[0].close is not None and "byte count" in closed[0].close
    # the bad frame came in byte by byte: its held-back bytes are in what was stopped
    assert joined(v, "malformed") == broken


def test_a_malformed_request_is_logged_refused_with_its_bytes(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock, max_concurrent=1)
    broken = mbap(7, struct.pack(">BHHB", 16, 100, 2, 2) + b"\x00\x01", unit=3)
    v = insp.from_client(read(1) + read(2) + broken + write_reg(8, 100) + read(9)[:5])
    assert v.to_server == read(1)  # read(2) was queued behind the concurrency cap
    assert v.malformed == broken + write_reg(8, 100) + read(9)[:5]
    reason = "malformed Modbus request: function 16 byte count 2 for quantity 2"
    assert v.close == reason
    malformed, not_sent = v.records
    assert malformed == {
        "time": "2025-03-01T08:00:00.000000Z",
        "protocol": "modbus",
        "class": "dangerous",
        "addresses": None,
        "transaction_id": 7,
        "unit": 3,
        "function": 16,
        "function_name": "Write Multiple Registers",
        "table": None,
        "start": None,
        "quantity": None,
        "range": None,
        "values": None,
        "detail": {},
        "allowed": False,
        "reason": reason,
        "result": "refused",
        "exception": None,
        "raw": v.malformed.hex(),
        "raw_length": len(v.malformed),
    }
    json.dumps(malformed)
    assert (not_sent["transaction_id"], not_sent["result"]) == (2, "not_sent")


def test_a_broken_header_split_across_reads_is_stopped_whole(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    bad = mbap(2, read(0)[7:], protocol=5)
    first = insp.from_client(read(1) + bad[:4])  # the header is not complete yet
    assert (first.to_server, first.close, first.malformed) == (read(1), None, b"")
    v = insp.from_client(bad[4:] + read(3))
    assert v.to_server == b"" and v.close is not None
    assert v.malformed == bad + read(3)
    (record,) = v.records
    assert (record["transaction_id"], record["unit"], record["function"]) == (2, 1, 3)
    assert record["raw"] == (bad + read(3)).hex() and record["result"] == "refused"


def test_a_short_broken_header_is_logged_from_what_there_is(clock: ManualClock) -> None:
    header = struct.pack(">HHHB", 0x0102, 0, 300, 4)  # length 300: broken, nothing after it
    v = ModbusInspector(tune(), clock).from_client(header)
    assert v.malformed == header
    (record,) = v.records
    assert (record["transaction_id"], record["unit"], record["function"]) == (0x0102, 4, None)
    assert record["function_name"] is None and record["raw_length"] == 7


def test_the_logged_bytes_of_a_malformed_frame_are_capped(clock: ManualClock) -> None:
    bad = struct.pack(">HHHB", 1, 9, 6, 1) + bytes(range(256)) * 4
    v = ModbusInspector(tune(), clock).from_client(bad)
    assert v.malformed == bad  # the recording keeps every byte
    (record,) = v.records
    assert record["raw"] == bad[:512].hex() and record["raw_length"] == len(bad) == 1031


# ---------------------------------------------------------------------- rate and concurrency


def test_rate_limit_delays_requests_to_the_configured_rate(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(rate=2), clock)
    v = insp.from_client(b"".join(read(t) for t in range(1, 6)))
    assert v.to_server == read(1)
    assert insp.queued() == 4 and v.poll_at == datetime(2025, 3, 1, 8, 0, 0, 500000, tzinfo=UTC)
    clock.advance(0.4)
    assert insp.poll().to_server == b""
    clock.advance(0.1)
    p = insp.poll()
    assert p.to_server == read(2) and p.poll_at == T0.replace(second=1)
    clock.advance(5)  # a long pause earns one token (burst 1), not ten
    assert insp.poll().to_server == read(3)
    assert insp.poll().to_server == b""


def test_a_flood_reaches_the_plc_at_the_configured_rate(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(rate=10), clock, max_queued=10_000)
    sent_at: list[float] = []
    forwarded = b""
    tid = 0
    for _ in range(300):  # 3 simulated seconds, 100 requests per 10 ms tick from the vendor
        for _ in range(100 // 10):
            tid += 1
            forwarded += insp.from_client(read(tid)).to_server
        forwarded += insp.poll().to_server
        for frame in MbapFramer().feed(forwarded):  # the PLC answers at once
            sent_at.append((clock.now() - T0).total_seconds())
            insp.from_server(regs_response(frame.transaction_id, [0] * 10))
        forwarded = b""
        clock.advance(0.01)
    assert 30 <= len(sent_at) <= 31
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert min(gaps) >= 0.1 - 1e-6


def test_burst_allows_short_bursts_up_to_the_bucket_size(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(rate=5), clock, burst=3)
    v = insp.from_client(b"".join(read(t) for t in range(1, 6)))
    assert len(MbapFramer().feed(v.to_server)) == 3


def test_a_shared_bucket_limits_the_asset_across_connections(clock: ManualClock) -> None:
    bucket = TokenBucket(1, clock)
    a = ModbusInspector(tune(), clock, limiter=bucket)
    b = ModbusInspector(tune(), clock, limiter=bucket)
    assert a.from_client(read(1)).to_server == read(1)
    vb = b.from_client(read(1))
    assert vb.to_server == b"" and vb.poll_at == T0.replace(second=1)
    clock.advance(1)
    assert b.poll().to_server == read(1)


def test_clock_stepping_back_earns_no_tokens(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(rate=1), clock)
    insp.from_client(read(1) + read(2))
    clock.set(T0.replace(hour=7))
    assert insp.poll().to_server == b""
    clock.set(T0.replace(second=1))
    assert insp.poll().to_server == read(2)


def test_concurrency_cap_queues_until_answers_arrive(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock, max_concurrent=2)
    v = insp.from_client(read(1) + read(2) + read(3) + read(4))
    assert v.to_server == read(1) + read(2)
    assert (insp.in_flight(), insp.queued()) == (2, 2)
    assert v.poll_at == T0.replace(second=5)  # the response timeout of the first
    v = insp.from_server(regs_response(2, [0] * 10))
    assert v.to_server == read(3) and len(v.records) == 1
    assert (insp.in_flight(), insp.queued()) == (2, 1)


def test_unanswered_requests_time_out_and_free_their_slot(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock, max_concurrent=1, response_timeout_s=2)
    insp.from_client(read(1) + read(2))
    clock.advance(2)
    v = insp.poll()
    assert v.to_server == read(2)
    assert [(r["transaction_id"], r["result"]) for r in v.records] == [(1, "no_response")]
    # a late answer is passed through without a record
    late = insp.from_server(regs_response(1, [0] * 10))
    assert late.to_client == regs_response(1, [0] * 10) and late.records == ()
    assert insp.in_flight() == 1


def test_a_full_queue_answers_server_busy(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock, max_concurrent=1, max_queued=2)
    v = insp.from_client(read(1) + read(2) + read(3))
    assert v.to_client == b"" and not insp.accepting
    v = insp.from_client(read(4))
    assert v.to_client == exc(4, 3, 6) and v.records[0]["reason"] == "request queue full"


# ------------------------------------------------------------------------- responses and log


def test_responses_match_by_transaction_id_in_any_order(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    insp.from_client(read(1, fc=1, addr=0, qty=3) + write_regs(2, 100, [7, 8]) + read(3))
    answers = exc(3, 3, 2) + mbap(2, struct.pack(">BHH", 16, 100, 2)) + mbap(1, bytes([1, 1, 5]))
    verdicts = [insp.from_server(answers[i : i + 3]) for i in range(0, len(answers), 3)]
    assert joined(verdicts, "to_client") == answers
    records = {r["transaction_id"]: r for v in verdicts for r in v.records}
    assert records[3]["result"] == "exception" and records[3]["exception"] == 2
    assert records[2]["result"] == "ok" and records[2]["values"] == [7, 8]
    assert records[2]["range"] == "40101\u201340102"
    assert records[1]["response_values"] == [True, False, True]
    assert insp.drained


def test_duplicate_transaction_ids_are_matched_in_order(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    insp.from_client(read(0, addr=1, qty=1) + read(0, addr=2, qty=1))
    first = insp.from_server(regs_response(0, [11]))
    second = insp.from_server(regs_response(0, [22]))
    assert first.records[0]["start"] == 1 and first.records[0]["response_values"] == [11]
    assert second.records[0]["start"] == 2 and second.records[0]["response_values"] == [22]


def test_write_values_are_logged(clock: ManualClock) -> None:
    insp = ModbusInspector(tune((hr(100, 199), coils(100, 199))), clock)
    v = insp.from_client(write_coils(1, 300, [True, False]) + write_coil(2, 120, on=False))
    assert v.records[0]["values"] == [True, False] and v.records[0]["range"] == "00301\u201300302"
    assert v.records[0]["table"] == "coils"
    insp.from_client(write_coils(3, 100, [True, True, False]))
    (record,) = insp.from_server(mbap(3, struct.pack(">BHH", 15, 100, 3))).records
    assert record["values"] == [True, True, False] and record["allowed"] is True
    assert record["reason"] == "function 15 allowed; write within the coil write ranges"
    (single,) = insp.from_server(mbap(2, struct.pack(">BHH", 5, 120, 0))).records
    assert single["values"] == [False] and single["range"] == "00121"
    insp.from_client(write_reg(4, 150))
    (register,) = insp.from_server(write_reg(4, 150)).records
    assert register["table"] == "holding_registers"
    assert (
        register["reason"] == "function 6 allowed; write within the holding register write ranges"
    )


def test_read_write_multiple_logs_both_halves(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    insp.from_client(mbap(1, struct.pack(">BHHHHBHH", 23, 0, 2, 150, 2, 4, 5, 6)))
    (record,) = insp.from_server(regs_response(1, [9, 9], fc=23)).records
    assert (record["read_range"], record["range"]) == ("40001\u201340002", "40151\u201340152")
    assert record["table"] == "holding_registers"
    assert record["values"] == [5, 6] and record["response_values"] == [9, 9]


def test_malformed_server_frame_closes(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock)
    insp.from_client(read(1) + read(2))
    good = regs_response(1, [0] * 10)
    bad = mbap(2, bytes([3, 5, 0]))
    v = insp.from_server(good + bad + regs_response(9, [1]))
    assert v.to_client == good
    assert v.close is not None and "malformed Modbus response" in v.close
    assert v.malformed == bad + regs_response(9, [1])
    assert [(r["transaction_id"], r["result"]) for r in v.records] == [(1, "ok"), (2, "refused")]
    assert v.records[1]["raw"] == v.malformed.hex()
    assert insp.from_server(regs_response(2, [0])).to_client == b""


def test_begin_close_drops_the_queue_and_drains_in_flight(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(rate=1), clock)
    insp.from_client(read(1) + write_reg(2, 150))
    v = insp.begin_close("grant expired")
    assert [(r["transaction_id"], r["result"]) for r in v.records] == [(2, "not_sent")]
    assert v.records[0]["reason"] == "session closing: grant expired"
    assert insp.from_client(read(3)).to_server == b""
    assert not insp.drained
    assert insp.from_server(regs_response(1, [0] * 10)).records[0]["result"] == "ok"
    assert insp.drained and insp.finish() == []


def test_finish_logs_what_never_got_an_answer(clock: ManualClock) -> None:
    insp = ModbusInspector(tune(), clock, max_concurrent=1)
    insp.from_client(read(1) + read(2))
    records = insp.finish()
    assert [(r["transaction_id"], r["result"]) for r in records] == [
        (2, "not_sent"),
        (1, "no_response"),
    ]
    assert insp.in_flight() == 0 and insp.finish() == []


# -------------------------------------------------------- integration: a real pymodbus PLC


class InspectingRelay:
    """The I/O side the broker must implement: drive the inspector, honour poll_at and close."""

    def __init__(self, upstream: int, obligations: Obligations | None, **options: Any) -> None:
        self.upstream = upstream
        self.obligations = obligations
        self.options = options
        self.records: list[dict[str, Any]] = []
        self.closes: list[str] = []
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
        async with asyncio.timeout(5):
            await asyncio.gather(*self.handlers)
        if self.server is not None:
            await self.server.wait_closed()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.upstream)
        clock = SystemClock()
        insp = ModbusInspector(self.obligations, clock, **self.options)
        wake = asyncio.Event()
        done = asyncio.Event()
        poll_at: list[datetime | None] = [None]

        def apply(v: Verdicts) -> None:
            if v.to_server:
                swriter.write(v.to_server)
            if v.to_client:
                cwriter.write(v.to_client)
            self.records.extend(v.records)
            poll_at[0] = v.poll_at
            wake.set()
            if v.close:
                self.closes.append(v.close)
                done.set()

        async def client_side() -> None:
            while insp.closed is None:
                if not insp.accepting:  # backpressure: the poller drains the queue
                    await asyncio.sleep(0.01)
                    continue
                data = await creader.read(4096)
                if not data:
                    break
                apply(insp.from_client(data))
            done.set()

        async def server_side() -> None:
            while data := await sreader.read(4096):
                apply(insp.from_server(data))
            done.set()

        async def poller() -> None:
            while True:
                wake.clear()
                at = poll_at[0]
                delay = None if at is None else max(0.0, (at - clock.now()).total_seconds())
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except TimeoutError:
                    apply(insp.poll())

        tasks = [asyncio.create_task(c()) for c in (client_side, server_side, poller)]
        await done.wait()
        apply(insp.begin_close(self.closes[-1] if self.closes else "client left"))
        bound = time.monotonic() + 1.0
        while not insp.drained and time.monotonic() < bound:
            await asyncio.sleep(0.01)
        self.records.extend(insp.finish())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (cwriter, swriter):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _block(kind: DataType, value: int | bool) -> list[SimData]:
    return [SimData(0, count=300, values=value, datatype=kind)]


@pytest.fixture
async def plc() -> AsyncIterator[tuple[int, list[float]]]:
    """A real pymodbus TCP server (device 1); yields its port and the arrival times of frames."""
    arrivals: list[float] = []
    framer = MbapFramer()

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending:
            arrivals.extend(time.monotonic() for _ in framer.feed(data))
        return data

    bits, regs = DataType.BITS, DataType.REGISTERS
    device = SimDevice(
        1, simdata=(_block(bits, False), _block(bits, False), _block(regs, 7), _block(regs, 3))
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", 0), trace_packet=trace)
    await server.serve_forever(background=True)
    listener = server.transport
    assert isinstance(listener, asyncio.Server)
    yield listener.sockets[0].getsockname()[1], arrivals
    await server.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
async def relay_factory(
    plc: tuple[int, list[float]],
) -> AsyncIterator[Callable[..., Any]]:
    relays: list[InspectingRelay] = []

    async def make(obligations: Obligations | None, **options: Any) -> tuple[InspectingRelay, int]:
        relay = InspectingRelay(plc[0], obligations, **options)
        relays.append(relay)
        return relay, await relay.start()

    yield make
    for relay in relays:
        await relay.aclose()


async def _client(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert await client.connect()
    return client


async def test_real_plc_read_only_grant_reads_pass_and_writes_are_refused(
    plc: tuple[int, list[float]], relay_factory: Callable[..., Any]
) -> None:
    relay, port = await relay_factory(None)
    client = await _client(port)
    direct = await _client(plc[0])
    try:
        rr = await client.read_holding_registers(10, count=5, device_id=1)
        assert not rr.isError() and rr.registers == [7] * 5
        ir = await client.read_input_registers(0, count=2, device_id=1)
        assert ir.registers == [3, 3]
        wr = await client.write_register(10, 1234, device_id=1)
        assert wr.isError() and wr.exception_code == 1
        wc = await client.write_coil(3, True, device_id=1)
        assert wc.isError() and wc.exception_code == 1
        # the connection stayed up through the refusals
        assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [7]
        assert (await direct.read_holding_registers(10, count=1, device_id=1)).registers == [7]
        assert (await direct.read_coils(3, count=1, device_id=1)).bits[0] is False
    finally:
        client.close()
        direct.close()
    # The relay records a request before its answer (or exception) goes to the client.
    refused = [r for r in relay.records if not r["allowed"]]
    assert [(r["function"], r["exception"]) for r in refused] == [(6, 1), (5, 1)]
    answered = [r for r in relay.records if r["result"] == "ok"]
    assert answered[0]["response_values"] == [7] * 5 and answered[0]["range"] == "40011\u201340015"


async def test_real_plc_tune_grant_writes_inside_ranges_land(
    plc: tuple[int, list[float]], relay_factory: Callable[..., Any]
) -> None:
    relay, port = await relay_factory(tune((hr(10, 19), coils(200, 200))))
    client = await _client(port)
    direct = await _client(plc[0])
    try:
        assert not (await client.write_register(10, 111, device_id=1)).isError()
        assert not (await client.write_registers(15, [1, 2, 3, 4, 5], device_id=1)).isError()
        assert not (await client.write_coil(200, True, device_id=1)).isError()
        outside = await client.write_register(20, 999, device_id=1)
        assert outside.isError() and outside.exception_code == 2
        across = await client.write_registers(18, [5, 5, 5], device_id=1)
        assert across.isError() and across.exception_code == 2
        # each table keeps its own ranges: no coil 15, no register 200
        coil = await client.write_coil(15, True, device_id=1)
        assert coil.isError() and coil.exception_code == 2
        register = await client.write_register(200, 999, device_id=1)
        assert register.isError() and register.exception_code == 2
        regs = await direct.read_holding_registers(10, count=11, device_id=1)
        assert regs.registers == [111, 7, 7, 7, 7, 1, 2, 3, 4, 5, 7]
        assert (await direct.read_holding_registers(200, count=1, device_id=1)).registers == [7]
        assert (await direct.read_coils(200, count=1, device_id=1)).bits[0] is True
        assert (await direct.read_coils(15, count=1, device_id=1)).bits[0] is False
    finally:
        client.close()
        direct.close()
    # The relay records a request before its answer (or exception) goes to the client.
    writes = [r for r in relay.records if r["function"] in (5, 6, 16)]
    assert [(r["function"], r["start"], r["allowed"], r["result"]) for r in writes] == [
        (6, 10, True, "ok"),
        (16, 15, True, "ok"),
        (5, 200, True, "ok"),
        (6, 20, False, "refused"),
        (16, 18, False, "refused"),
        (5, 15, False, "refused"),
        (6, 200, False, "refused"),
    ]


async def test_real_plc_flood_is_throttled_to_the_configured_rate(
    plc: tuple[int, list[float]], relay_factory: Callable[..., Any]
) -> None:
    rate, count = 20.0, 30
    _, port = await relay_factory(tune(rate=rate))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(read(tid, addr=tid, qty=1) for tid in range(count)))
    framer = MbapFramer()
    answers: list[Frame] = []
    async with asyncio.timeout(10):
        while len(answers) < count:
            answers += framer.feed(await reader.read(4096))
    writer.close()
    await writer.wait_closed()
    assert sorted(f.transaction_id for f in answers) == list(range(count))
    assert all(f.pdu == bytes([3, 2, 0, 7]) for f in answers)
    arrivals = plc[1]
    assert len(arrivals) == count
    assert arrivals[-1] - arrivals[0] >= (count - 1) / rate * 0.95
    for i, t in enumerate(arrivals):  # no one-second window sees more than rate (+1 burst)
        assert sum(1 for u in arrivals[i:] if u - t < 1.0) <= rate + 1


async def test_real_plc_malformed_frame_closes_the_connection(
    plc: tuple[int, list[float]], relay_factory: Callable[..., Any]
) -> None:
    relay, port = await relay_factory(None)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(read(1, qty=1) + mbap(2, bytes([3, 0, 0, 0, 1]), protocol=9))
    data = b""
    async with asyncio.timeout(5):
        while chunk := await reader.read(4096):
            data += chunk
    writer.close()
    await writer.wait_closed()
    assert data == mbap(1, bytes([3, 2, 0, 7]))  # the valid request before it was answered
    assert len(plc[1]) == 1
    assert relay.closes and "protocol id 9" in relay.closes[0]
