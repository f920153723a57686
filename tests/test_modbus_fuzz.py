"""Fuzzing the Modbus inspector with hypothesis (11,700 examples in all, 30-55 s).

Random byte streams and mutated valid frames (bit flips, length-field changes, truncations,
insertions, concatenations), fed in random chunkings.  Properties: the inspector never raises;
a malformed stream ends in a ``close`` and nothing is forwarded after it; and everything it
forwards re-parses, under the independent checker below, as well-formed frames copied from the
input whose function codes, unit ids and write addresses the obligations allow.  Coils and
holding registers have different ranges (and some ranges hold for some unit ids only), so a write
checked against the wrong table's ranges, or the wrong unit's, is caught.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.decision import COILS, HOLDING_REGISTERS, ModbusObligations, Obligations, WriteRange
from sessions.ot.base import Verdicts
from sessions.ot.modbus import ModbusInspector
from sessions.testing import ManualClock

ALLOWED = (1, 2, 3, 4, 5, 6, 8, 15, 16, 22, 23, 43, 100)
RANGES = (
    WriteRange(HOLDING_REGISTERS, 100, 199),
    WriteRange(HOLDING_REGISTERS, 300, 300),
    WriteRange(HOLDING_REGISTERS, 200, 210, (7, 9)),  # joins 100-199 for units 7 and 9
    WriteRange(COILS, 150, 250),
    WriteRange(COILS, 299, 301, (9,)),
)
OBLIGATIONS = Obligations(modbus=ModbusObligations(ALLOWED, RANGES))
# Only units 1 and 7 may be addressed.
UNITS = (1, 7)
UNIT_OBLIGATIONS = Obligations(modbus=ModbusObligations(ALLOWED, RANGES, UNITS))
COIL_WRITES = (5, 15)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------- independent checker of forwarded bytes


def _writable(fc: int, unit: int, first: int, last: int) -> bool:
    """Every address first..last is in a range of fc's own table that holds for ``unit``."""
    table = COILS if fc in COIL_WRITES else HOLDING_REGISTERS
    spans = [
        (r.first, r.last)
        for r in RANGES
        if r.table == table and (r.unit_ids is None or unit in r.unit_ids)
    ]
    return all(any(lo <= a <= hi for lo, hi in spans) for a in range(first, last + 1))


def check_pdu(pdu: bytes, unit: int, units: tuple[int, ...] | None = None) -> None:
    """Assert ``pdu`` is a well-formed request the obligations allow (written from the spec)."""
    fc, d = pdu[0], pdu[1:]
    assert fc in ALLOWED, fc
    assert units is None or unit in units, unit
    if fc in (1, 2, 3, 4):
        assert len(d) == 4
        addr, qty = struct.unpack(">HH", d)
        assert 1 <= qty <= (2000 if fc <= 2 else 125) and addr + qty <= 0x10000
    elif fc in (5, 6):
        assert len(d) == 4
        addr, value = struct.unpack(">HH", d)
        assert fc == 6 or value in (0x0000, 0xFF00)
        assert _writable(fc, unit, addr, addr)
    elif fc in (15, 16):
        assert len(d) >= 5
        addr, qty, count = struct.unpack(">HHB", d[:5])
        assert len(d) == 5 + count
        if fc == 15:
            assert 1 <= qty <= 1968 and count == (qty + 7) // 8
        else:
            assert 1 <= qty <= 123 and count == 2 * qty
        assert _writable(fc, unit, addr, addr + qty - 1)
    elif fc == 22:
        assert len(d) == 6 and _writable(fc, unit, *(2 * struct.unpack(">H", d[:2])))
    elif fc == 23:
        assert len(d) >= 9
        raddr, rqty, waddr, wqty, count = struct.unpack(">HHHHB", d[:9])
        assert len(d) == 9 + count and count == 2 * wqty
        assert 1 <= rqty <= 125 and raddr + rqty <= 0x10000
        assert 1 <= wqty <= 121 and _writable(fc, unit, waddr, waddr + wqty - 1)
    elif fc == 8:
        assert len(d) >= 2 and len(d) % 2 == 0
    elif fc == 43:
        assert len(d) == 3 and d[0] == 14 and 1 <= d[1] <= 4


def split_frames(stream: bytes) -> list[bytes]:
    """Split a forwarded stream into MBAP frames, asserting the header rules; return raw frames."""
    frames, pos = [], 0
    while pos < len(stream):
        assert len(stream) - pos >= 8, "forwarded a truncated frame"
        _, protocol, length = struct.unpack(">HHH", stream[pos : pos + 6])
        assert protocol == 0 and 2 <= length <= 254
        end = pos + 6 + length
        assert end <= len(stream), "forwarded a truncated frame"
        frames.append(stream[pos:end])
        pos = end
    return frames


def check_forwarded(
    source: bytes,
    verdicts: list[Verdicts],
    replies: list[Verdicts] | None = None,
    units: tuple[int, ...] | None = None,
) -> None:
    """``verdicts``: every call in order; ``replies``: the client-side ones (default: all)."""
    forwarded = b"".join(v.to_server for v in verdicts)
    for frame in split_frames(forwarded):
        check_pdu(frame[7:], frame[6], units)
        assert frame in source, "forwarded bytes the client never sent"
    closed_at = next((i for i, v in enumerate(verdicts) if v.close), None)
    if closed_at is not None:
        assert all(not v.to_server for v in verdicts[closed_at + 1 :])
        # what was stopped is handed back for the recording, and it came from the client
        stopped = verdicts[closed_at].malformed
        assert stopped and stopped in source
    assert all(not v.malformed for i, v in enumerate(verdicts) if i != closed_at)
    client_side = verdicts if replies is None else replies
    for reply in split_frames(b"".join(v.to_client for v in client_side)):
        assert len(reply) == 9 and reply[7] & 0x80 and reply[8] in (1, 2, 3, 6, 10)


# ------------------------------------------------------------------------------- strategies


class Picker(Protocol):
    """Where the frame generator gets its choices: hypothesis draws or a seeded Random."""

    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[int]) -> int: ...
    def blob(self, lo: int, hi: int) -> bytes: ...


class DrawPicker:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[int]) -> int:
        return self.draw(st.sampled_from(options))

    def blob(self, lo: int, hi: int) -> bytes:
        return self.draw(st.binary(min_size=lo, max_size=hi))


class RandomPicker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[int]) -> int:
        return self.rng.choice(options)

    def blob(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))


def request_pdu(pick: Picker) -> bytes:
    """A mostly valid request PDU of a decoded function code, near the interesting edges."""
    fc = pick.choice([1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90])
    kind = pick.integer(0, 3)
    edges = [149, 150, 199, 200, 210, 211, 250, 251, 298, 299, 300, 301, 302, 0, 65535, 65534]
    addr = pick.integer(90, 260) if kind < 2 else pick.choice(edges)
    if kind == 3:
        addr = pick.integer(0, 0xFFFF)
    if fc in (1, 2, 3, 4):
        return struct.pack(">BHH", fc, addr, pick.integer(0, 2001))
    if fc == 5:
        return struct.pack(">BHH", fc, addr, pick.choice([0, 0xFF00, 0x00FF, 1]))
    if fc == 6:
        return struct.pack(">BHH", fc, addr, pick.integer(0, 0xFFFF))
    if fc in (15, 16):
        qty = pick.integer(0, 130 if fc == 16 else 300)
        count = (qty + 7) // 8 if fc == 15 else 2 * qty
        count = pick.choice([count, count, max(0, count - 1), count + 1]) % 256
        return struct.pack(">BHHB", fc, addr, qty, count) + pick.blob(count, count)
    if fc == 22:
        return struct.pack(">BHHH", fc, addr, pick.integer(0, 0xFFFF), pick.integer(0, 0xFFFF))
    if fc == 23:
        wqty = pick.integer(0, 122)
        rqty = pick.integer(0, 126)
        head = struct.pack(">BHHHHB", fc, pick.integer(0, 0xFFFF), rqty, addr, wqty, 2 * wqty)
        return head + pick.blob(2 * wqty, 2 * wqty)
    if fc == 8:
        words = pick.blob(1, 4)
        return bytes([fc]) + words + words
    if fc == 43:
        return bytes([fc, pick.choice([14, 14, 13, 0])]) + pick.blob(2, 3)
    if fc in (20, 21):
        body = struct.pack(">BHHH", 6, 1, addr, 1) + (b"\x00\x01" if fc == 21 else b"")
        return bytes([fc, len(body)]) + body
    if fc == 24:
        return struct.pack(">BH", fc, addr)
    return bytes([fc]) + pick.blob(0, 8)


def frame(pick: Picker) -> bytes:
    pdu = request_pdu(pick)[:253]
    unit = pick.choice([1, 7, 9, pick.integer(0, 255)])  # the units some ranges are for
    return struct.pack(">HHHB", pick.integer(0, 0xFFFF), 0, len(pdu) + 1, unit) + pdu


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    return frame(DrawPicker(draw))


def _mutate(stream: bytearray, kind: str, pos: int, value: int) -> bytearray:
    if not stream:
        return stream
    pos %= len(stream)
    if kind == "flip":
        stream[pos] ^= 1 << (value % 8)
    elif kind == "length":  # overwrite an MBAP length field of some frame
        start = pos - pos % 12
        if start + 6 <= len(stream):
            stream[start + 4 : start + 6] = struct.pack(">H", value % 300)
    elif kind == "truncate":
        del stream[pos:]
    elif kind == "insert":
        stream[pos:pos] = bytes([value % 256]) * (1 + value % 5)
    elif kind == "delete":
        del stream[pos : pos + 1 + value % 7]
    elif kind == "byte":
        stream[pos] = value % 256
    return stream


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "length", "truncate", "insert", "delete", "byte"]),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=4,
)
chunkings = st.lists(st.integers(1, 64), min_size=1, max_size=8)


def answer_for(request: bytes, exception: bool = False) -> bytes:
    """A well-formed response to a forwarded request frame (or an exception response)."""
    fc = request[7]
    if exception or fc not in (1, 2, 3, 4, 5, 6, 15, 16, 23):
        pdu = bytes([fc | 0x80, 4])
    elif fc in (1, 2):
        pdu = bytes([fc, 1, 0b101])
    elif fc in (3, 4, 23):
        pdu = bytes([fc, 4, 0, 1, 0, 2])
    else:
        pdu = request[7:12]
    return request[:4] + struct.pack(">H", len(pdu) + 1) + request[6:7] + pdu


def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos : pos + size])
        pos, i = pos + size, i + 1
    return out


def run(data: bytes, sizes: list[int], obligations: Obligations = OBLIGATIONS) -> list[Verdicts]:
    insp = ModbusInspector(obligations, ManualClock(), max_concurrent=1000)
    return [insp.from_client(chunk) for chunk in chunks(data, sizes)]


# ------------------------------------------------------------------------------------ tests


@fuzz(4500)
@given(data=st.binary(max_size=384), sizes=chunkings)
def test_random_bytes(data: bytes, sizes: list[int]) -> None:
    check_forwarded(data, run(data, sizes))


@fuzz(3500)
@given(rng=st.randoms(use_true_random=False), sizes=chunkings)
def test_mutated_frames(rng: random.Random, sizes: list[int]) -> None:
    """Frames and mutations come from a seeded Random: cheap to generate, still replayable."""
    pick = RandomPicker(rng)
    stream = bytearray(b"".join(frame(pick) for _ in range(rng.randint(1, 8))))
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["flip", "length", "truncate", "insert", "delete", "byte"])
        stream = _mutate(stream, kind, rng.randrange(10_000), rng.randrange(10_000))
    check_forwarded(bytes(stream), run(bytes(stream), sizes))


@fuzz(1000)
@given(parts=st.lists(frames(), min_size=1, max_size=8), sizes=chunkings)
def test_valid_frames_do_not_depend_on_chunking(parts: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(parts)
    whole = run(stream, [len(stream)])
    split = run(stream, sizes)
    check_forwarded(stream, split)
    for attr in ("to_server", "to_client"):
        assert b"".join(getattr(v, attr) for v in split) == b"".join(
            getattr(v, attr) for v in whole
        )
    assert [v.close for v in whole if v.close] == [v.close for v in split if v.close][:1]
    sent = len(split_frames(b"".join(v.to_server for v in split)))
    refused = len(split_frames(b"".join(v.to_client for v in split)))
    assert sent + refused == len(parts) or any(v.close for v in split)


@fuzz(800)
@given(parts=st.lists(frames(), min_size=1, max_size=8), sizes=chunkings)
def test_unit_ids_confine_every_forwarded_frame(parts: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(parts)
    verdicts = run(stream, sizes, UNIT_OBLIGATIONS)
    check_forwarded(stream, verdicts, units=UNITS)
    for reply in split_frames(b"".join(v.to_client for v in verdicts)):
        assert (reply[8] == 10) is (reply[6] not in UNITS)  # 0x0A exactly for the other units


@fuzz(800)
@given(
    fc=st.sampled_from([5, 6, 15, 16, 22, 23]),
    unit=st.sampled_from([1, 7, 9, 200]),
    addr=st.integers(0, 0xFFFF),
    qty=st.integers(1, 120),
)
def test_each_write_is_judged_by_its_own_table_and_unit(
    fc: int, unit: int, addr: int, qty: int
) -> None:
    """Forwarded exactly when the independent checker finds it writable; else exception 02."""
    qty = 1 if fc in (5, 6, 22) else min(qty, 0x10000 - addr)
    if fc == 5:
        pdu = struct.pack(">BHH", fc, addr, 0xFF00)
    elif fc in (6, 22):
        pdu = struct.pack(">BHH", fc, addr, 1) + (b"\x00\x01" if fc == 22 else b"")
    elif fc == 15:
        count = (qty + 7) // 8
        pdu = struct.pack(">BHHB", fc, addr, qty, count) + b"\xff" * count
    elif fc == 16:
        pdu = struct.pack(">BHHB", fc, addr, qty, 2 * qty) + b"\x00\x01" * qty
    else:
        pdu = struct.pack(">BHHHHB", fc, 0, 1, addr, qty, 2 * qty) + b"\x00\x01" * qty
    request = struct.pack(">HHHB", 1, 0, len(pdu) + 1, unit) + pdu
    (v,) = run(request, [len(request)])
    if _writable(fc, unit, addr, addr + qty - 1):
        assert (v.to_server, v.to_client) == (request, b"")
    else:
        assert v.to_server == b"" and v.to_client == request[:4] + bytes([0, 3, unit, fc | 0x80, 2])


@fuzz(700)
@given(
    requests=st.lists(frames(), min_size=1, max_size=6),
    answers=st.binary(max_size=300),
    muts=mutations,
    sizes=chunkings,
)
def test_server_streams(
    requests: list[bytes], answers: bytes, muts: list[tuple[str, int, int]], sizes: list[int]
) -> None:
    insp = ModbusInspector(OBLIGATIONS, ManualClock(), max_concurrent=1000)
    insp.from_client(b"".join(requests))
    # echo-style answers to the requests, mutated, plus random bytes
    stream = bytearray(b"".join(answer_for(r, i % 3 == 2) for i, r in enumerate(requests)))
    stream += answers
    for kind, pos, value in muts:
        stream = _mutate(stream, kind, pos, value)
    out = [insp.from_server(chunk) for chunk in chunks(bytes(stream), sizes)]
    passed = b"".join(v.to_client for v in out)
    assert bytes(stream).startswith(passed), "server bytes must pass unchanged, in order"
    split_frames(passed)
    server_close = "malformed Modbus response"
    closed_at = next(
        (i for i, v in enumerate(out) if (v.close or "").startswith(server_close)), None
    )
    if closed_at is not None:  # a client-side close still lets answers through (draining)
        assert all(not v.to_client for v in out[closed_at + 1 :])


@fuzz(400)
@given(
    parts=st.lists(frames(), min_size=1, max_size=10),
    muts=st.lists(mutations, max_size=1),
    sizes=chunkings,
    steps=st.lists(st.floats(0, 0.5), min_size=1, max_size=8),
    answer=st.booleans(),
)
def test_rate_limited_and_capped(
    parts: list[bytes],
    muts: list[list[tuple[str, int, int]]],
    sizes: list[int],
    steps: list[float],
    answer: bool,
) -> None:
    clock = ManualClock(datetime(2025, 1, 1, tzinfo=UTC))
    obligations = Obligations(modbus=ModbusObligations(ALLOWED, RANGES), rate_limit_rps=4)
    insp = ModbusInspector(obligations, clock, max_concurrent=2, max_queued=3)
    stream = bytearray(b"".join(parts))
    for kind, pos, value in muts[0] if muts else []:
        stream = _mutate(stream, kind, pos, value)
    verdicts: list[Verdicts] = []
    client_side: list[Verdicts] = []
    forwarded = 0
    for i, chunk in enumerate(chunks(bytes(stream), sizes)):
        client_side.append(insp.from_client(chunk))
        clock.advance(steps[i % len(steps)])
        client_side.append(insp.poll())
        verdicts += client_side[-2:]
        pending = [f for v in client_side[-2:] for f in split_frames(v.to_server)]
        while pending:
            forwarded += len(pending)
            if not answer:
                break
            released = [insp.from_server(answer_for(frame)) for frame in pending]
            verdicts += released
            pending = [f for v in released for f in split_frames(v.to_server)]
    check_forwarded(bytes(stream), verdicts, client_side)
    assert insp.in_flight() <= 2 and insp.queued() <= 3
    span = (clock.now() - datetime(2025, 1, 1, tzinfo=UTC)).total_seconds()
    assert forwarded <= 1 + 4 * span + 1e-6
    insp.finish()
