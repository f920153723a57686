"""Modbus/TCP inspection: MBAP framing, request/response decoding, policy enforcement (sans-IO).

The relay between a vendor's tool (the *client*) and the PLC (the *server*) hands every byte it
reads to a :class:`ModbusInspector` and writes back only what the inspector returns.  Nothing
here does I/O or reads the wall clock: time comes from the injected :class:`Clock`.

Obligations (``policies.decision.Obligations``; docs/policy.md "OT operation table")::

    modbus.allow_function_codes: tuple[int, ...]      # e.g. (1, 2, 3, 4, 7, 11, ...)
    modbus.write_ranges: tuple[WriteRange, ...]       # (table, first, last, unit_ids | None)
    modbus.unit_ids: tuple[int, ...] | None           # unit ids that may be addressed; None: any
    rate_limit_rps: float | None                      # requests/s towards the asset

Writes are confined per Modbus table.  FC 5 and 15 write coils (table ``coils``); FC 6, 16, 22
and the write half of 23 write holding registers (``holding_registers``).  A write must lie
wholly inside the union of the ranges of *its own table* that apply to the request's unit id
(a range with ``unit_ids`` None applies to every unit); a table with no such range takes no
writes.  Addresses are PDU addresses (0-based, as on the wire).  FC 21 (write file record) is
confined by no range: only the function-code list admits it.  FC 43 passes only as MEI type 14
(read device identification).  ``obligations=None`` means the read-only default: FC 1, 2, 3, 4
and 43/14, no writes, any unit id, no rate limit.  Deny by default: a function code that is not
listed is refused.

Outcomes per client request, in this order:

* MBAP or PDU structure broken (protocol id != 0, length outside 2..254, a known function
  code's layout or byte count inconsistent, FC 0 or >= 0x80) -> :class:`ModbusProtocolError`;
  the inspector forwards nothing from the bad frame on, reports ``Verdicts.close``, hands the
  stopped bytes (the bad frame and everything after it that it was given) back in
  ``Verdicts.malformed`` for the recording, and logs a ``refused`` record with their hex.
* unit id outside ``modbus.unit_ids`` (when set) -> exception 0A GATEWAY PATH UNAVAILABLE.
* function code not allowed (or FC 43 with MEI type != 14) -> exception 01 ILLEGAL FUNCTION.
* well framed but out of the spec's value domain (quantity 0 or too large, coil value other
  than 0xFF00/0x0000, bad device-id read code) -> exception 03 ILLEGAL DATA VALUE, as a
  real device would answer; address + quantity beyond 65536 -> exception 02.
* write outside the write ranges of its table and unit -> exception 02 ILLEGAL DATA ADDRESS,
  the reason naming the table and the ranges ("FC5 write to coil 15 outside the coil write
  ranges (none)").
* queue full (the relay kept reading while :attr:`ModbusInspector.accepting` was False)
  -> exception 06 SERVER DEVICE BUSY.
* otherwise queued, and forwarded once the token bucket (``rate_limit_rps``) and the
  concurrency cap allow it.  Exception responses go straight back to the client with the
  request's transaction and unit ids; the connection stays up.

Driving it (the I/O relay, one inspector per client connection)::

    v = inspector.from_client(data)   # or from_server(data), poll(), begin_close(reason)
    plc.write(v.to_server); client.write(v.to_client); ops_log.extend(v.records)
    pcap.record(v.malformed, same direction as data)   # stopped, never forwarded
    if v.poll_at: arm a timer for v.poll_at (replacing the previous one) -> poll()
    if v.close: audit it, stop reading the client, drain, close
    read from the client only while inspector.accepting (TCP backpressure on a flood)

Ending a session: ``begin_close(reason)``, keep relaying ``from_server`` until
``inspector.drained`` or a short bound (a transaction already at the PLC gets its answer),
then log ``finish()`` and close both sockets.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any, TypeAlias

from policies.decision import COILS, HOLDING_REGISTERS, ModbusObligations, Obligations, WriteRange
from sessions.clock import Clock
from sessions.errors import SessionsError

MBAP_HEADER_LEN = 7
MAX_PDU_LEN = 253
READ_ONLY_FUNCTION_CODES = (1, 2, 3, 4, 43)
REGISTER_WRITE_FUNCTION_CODES = (5, 6, 15, 16, 22, 23)  # coil and register writes
# The table each of those writes into (FC 23: its write half).
WRITE_TABLE: Mapping[int, str] = {
    5: COILS,
    15: COILS,
    6: HOLDING_REGISTERS,
    16: HOLDING_REGISTERS,
    22: HOLDING_REGISTERS,
    23: HOLDING_REGISTERS,
}
MEI_READ_DEVICE_ID = 14
RAW_LOGGED = 512  # bytes of a malformed frame kept (as hex) in its ops-log record

Values: TypeAlias = tuple[int, ...] | tuple[bool, ...]
Record: TypeAlias = dict[str, Any]


class ExceptionCode(IntEnum):
    """Modbus exception codes the inspector answers with."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_DATA_ADDRESS = 2
    ILLEGAL_DATA_VALUE = 3
    SERVER_DEVICE_BUSY = 6
    GATEWAY_PATH_UNAVAILABLE = 0x0A


FUNCTION_NAMES: Mapping[int, str] = {
    1: "Read Coils",
    2: "Read Discrete Inputs",
    3: "Read Holding Registers",
    4: "Read Input Registers",
    5: "Write Single Coil",
    6: "Write Single Register",
    7: "Read Exception Status",
    8: "Diagnostics",
    11: "Get Comm Event Counter",
    12: "Get Comm Event Log",
    15: "Write Multiple Coils",
    16: "Write Multiple Registers",
    17: "Report Server ID",
    20: "Read File Record",
    21: "Write File Record",
    22: "Mask Write Register",
    23: "Read/Write Multiple Registers",
    24: "Read FIFO Queue",
    43: "Encapsulated Interface Transport",
    90: "UMAS (Schneider)",
    125: "Firmware/Program Download (125)",
    126: "Firmware/Program Download (126)",
}

# Reference-number prefix of the table a function code addresses ("40001" style).
_TABLE_PREFIX = {1: 0, 5: 0, 15: 0, 2: 1, 4: 3, 3: 4, 6: 4, 16: 4, 22: 4, 23: 4, 24: 4}
# How reasons name one address / several addresses of a writable table.
_TABLE_NOUNS = {
    COILS: ("coil", "coils"),
    HOLDING_REGISTERS: ("holding register", "holding registers"),
}


class ModbusProtocolError(SessionsError):
    """A frame breaks MBAP or the PDU layout; the connection must be closed.

    ``frames`` holds the well-formed frames the same :meth:`MbapFramer.feed` call completed
    before the malformed one (the stream was valid up to there); ``unparsed`` the bytes from
    the malformed frame's header to the end of what the framer held (empty when raised for a
    PDU, whose frame the caller has).
    """

    code = "modbus_malformed"

    def __init__(
        self, message: str, *, frames: tuple[Frame, ...] = (), unparsed: bytes = b""
    ) -> None:
        super().__init__(message)
        self.frames = frames
        self.unparsed = unparsed


def function_name(code: int) -> str:
    """Human name of a function code (``"unknown"`` for codes the module does not know)."""
    return FUNCTION_NAMES.get(code, "unknown")


# --------------------------------------------------------------------------------- framing


@dataclass(frozen=True, slots=True)
class Frame:
    """One MBAP frame: the protocol id is always 0 and the length is implied by ``pdu``."""

    transaction_id: int
    unit_id: int
    pdu: bytes

    @property
    def function_code(self) -> int:
        return self.pdu[0]

    def encode(self) -> bytes:
        """The frame's wire bytes (identical to the bytes it was parsed from)."""
        header = self.transaction_id.to_bytes(2, "big") + b"\x00\x00"
        return header + (len(self.pdu) + 1).to_bytes(2, "big") + bytes([self.unit_id]) + self.pdu


class MbapFramer:
    """Streaming MBAP splitter for one direction, robust to split and coalesced segments.

    :meth:`feed` returns the frames completed so far and keeps any partial frame buffered.  A
    header with protocol id != 0 or a length field outside 2..254 raises
    :class:`ModbusProtocolError` as soon as the 7 header bytes are in; after that the framer is
    broken and every later :meth:`feed` raises again.  PDU layouts are checked by
    :func:`parse_request` / :func:`parse_response`, not here.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Append ``data`` and return every frame it completes (in stream order)."""
        if self._error is not None:
            raise ModbusProtocolError(self._error)
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= MBAP_HEADER_LEN:
            protocol = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            length = int.from_bytes(buf[pos + 4 : pos + 6], "big")
            if protocol != 0:
                self._error = f"MBAP protocol id {protocol} (must be 0)"
            elif not 2 <= length <= MAX_PDU_LEN + 1:
                self._error = f"MBAP length {length} outside 2..{MAX_PDU_LEN + 1}"
            if self._error is not None:
                unparsed = bytes(buf[pos:])
                self._buf = bytearray()
                raise ModbusProtocolError(self._error, frames=tuple(frames), unparsed=unparsed)
            end = pos + 6 + length
            if len(buf) < end:
                break
            tid = int.from_bytes(buf[pos : pos + 2], "big")
            frames.append(Frame(tid, buf[pos + 6], bytes(buf[pos + 7 : end])))
            pos = end
        del buf[:pos]
        return frames

    def fail(self, message: str) -> bytes:
        """Break the framer (a later layer found the stream malformed); return what it held."""
        if self._error is None:
            self._error = message
        held, self._buf = bytes(self._buf), bytearray()
        return held


# -------------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request PDU.

    ``write_span`` is the inclusive (first, last) address range a register/coil write touches
    (checked against ``write_ranges``); ``problem`` is an (exception code, reason) pair when the
    request is well framed but outside the spec's value domain; ``detail`` carries
    function-specific fields for the ops log (sub-function, MEI type, opaque data in hex).
    """

    function_code: int
    start: int | None = None
    quantity: int | None = None
    values: Values | None = None
    write_span: tuple[int, int] | None = None
    read_start: int | None = None
    read_quantity: int | None = None
    detail: Mapping[str, int | str] = field(default_factory=dict)
    problem: tuple[ExceptionCode, str] | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response PDU: an exception code, or the values it carries (reads)."""

    function_code: int
    exception: int | None = None
    values: Values | None = None


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "big")


def _regs(data: bytes) -> tuple[int, ...]:
    return tuple(_u16(data, i) for i in range(0, len(data) - 1, 2))


def _bits(data: bytes, count: int) -> tuple[bool, ...]:
    return tuple(bool(data[i // 8] >> (i % 8) & 1) for i in range(min(count, 8 * len(data))))


def _need(fc: int, data: bytes, size: int) -> None:
    if len(data) != size:
        raise ModbusProtocolError(
            f"function {fc} request has {len(data)} data bytes, layout needs {size}"
        )


def _domain(
    start: int, quantity: int, limit: int, what: str = "quantity"
) -> tuple[ExceptionCode, str] | None:
    if not 1 <= quantity <= limit:
        return ExceptionCode.ILLEGAL_DATA_VALUE, f"{what} {quantity} outside 1..{limit}"
    if start + quantity > 0x10000:
        return ExceptionCode.ILLEGAL_DATA_ADDRESS, f"address {start} + {quantity} beyond 65535"
    return None


def _parse_read(fc: int, data: bytes) -> Request:
    _need(fc, data, 4)
    start, qty = _u16(data, 0), _u16(data, 2)
    return Request(fc, start, qty, problem=_domain(start, qty, 2000 if fc < 3 else 125))


def _parse_write_single(fc: int, data: bytes) -> Request:
    _need(fc, data, 4)
    addr, value = _u16(data, 0), _u16(data, 2)
    if fc == 6:
        return Request(fc, addr, 1, (value,), (addr, addr))
    problem = None
    if value not in (0xFF00, 0x0000):
        problem = ExceptionCode.ILLEGAL_DATA_VALUE, f"coil value 0x{value:04X} not 0xFF00/0x0000"
    return Request(fc, addr, 1, (value == 0xFF00,), (addr, addr), problem=problem)


def _parse_write_multiple(fc: int, data: bytes) -> Request:
    if len(data) < 5 or len(data) != 5 + data[4]:
        raise ModbusProtocolError(f"function {fc} request byte count does not match its length")
    start, qty, count = _u16(data, 0), _u16(data, 2), data[4]
    problem = _domain(start, qty, 1968 if fc == 15 else 123)
    if problem is not None and problem[0] == ExceptionCode.ILLEGAL_DATA_VALUE:
        return Request(fc, start, qty, problem=problem)
    expected = (qty + 7) // 8 if fc == 15 else 2 * qty
    if count != expected:
        raise ModbusProtocolError(f"function {fc} byte count {count} for quantity {qty}")
    values: Values = _bits(data[5:], qty) if fc == 15 else _regs(data[5:])
    return Request(fc, start, qty, values, (start, start + qty - 1), problem=problem)


def _parse_mask_write(fc: int, data: bytes) -> Request:
    _need(fc, data, 6)
    addr = _u16(data, 0)
    detail = {"and_mask": _u16(data, 2), "or_mask": _u16(data, 4)}
    return Request(fc, addr, 1, write_span=(addr, addr), detail=detail)


def _parse_read_write(fc: int, data: bytes) -> Request:
    if len(data) < 9 or len(data) != 9 + data[8]:
        raise ModbusProtocolError("function 23 request byte count does not match its length")
    rstart, rqty, wstart, wqty = _u16(data, 0), _u16(data, 2), _u16(data, 4), _u16(data, 6)
    count = data[8]
    problem = _domain(rstart, rqty, 125, "read quantity") or _domain(
        wstart, wqty, 121, "write quantity"
    )
    if problem is not None and problem[0] == ExceptionCode.ILLEGAL_DATA_VALUE:
        return Request(fc, wstart, wqty, read_start=rstart, read_quantity=rqty, problem=problem)
    if count != 2 * wqty:
        raise ModbusProtocolError(f"function 23 byte count {count} for write quantity {wqty}")
    return Request(
        fc,
        wstart,
        wqty,
        _regs(data[9:]),
        (wstart, wstart + wqty - 1),
        read_start=rstart,
        read_quantity=rqty,
        problem=problem,
    )


def _parse_empty(fc: int, data: bytes) -> Request:
    _need(fc, data, 0)
    return Request(fc)


def _parse_diagnostics(fc: int, data: bytes) -> Request:
    if len(data) < 2 or len(data) % 2:
        raise ModbusProtocolError("function 8 request needs a sub-function and 2-byte words")
    return Request(fc, detail={"subfunction": _u16(data, 0), "data": data[2:].hex()})


def _parse_file_record(fc: int, data: bytes) -> Request:
    if not data or len(data) != 1 + data[0]:
        raise ModbusProtocolError(f"function {fc} request byte count does not match its length")
    pos, records, problem = 1, 0, None
    while pos < len(data):
        if len(data) - pos < 7:
            raise ModbusProtocolError(f"function {fc} sub-request truncated")
        if data[pos] != 6 and problem is None:
            problem = ExceptionCode.ILLEGAL_DATA_VALUE, f"file reference type {data[pos]} not 6"
        pos += 7 + (2 * _u16(data, pos + 5) if fc == 21 else 0)
        records += 1
    if pos != len(data) or records == 0:
        raise ModbusProtocolError(f"function {fc} sub-requests do not fill the byte count")
    return Request(fc, detail={"records": records, "data": data[1:].hex()}, problem=problem)


def _parse_fifo(fc: int, data: bytes) -> Request:
    _need(fc, data, 2)
    return Request(fc, _u16(data, 0))


def _parse_mei(fc: int, data: bytes) -> Request:
    if not data:
        raise ModbusProtocolError("function 43 request without an MEI type")
    if data[0] != MEI_READ_DEVICE_ID:
        return Request(fc, detail={"mei_type": data[0], "data": data[1:].hex()})
    _need(fc, data, 3)
    detail = {"mei_type": data[0], "read_code": data[1], "object_id": data[2]}
    problem = None
    if not 1 <= data[1] <= 4:
        problem = ExceptionCode.ILLEGAL_DATA_VALUE, f"read device id code {data[1]} not 1..4"
    return Request(fc, detail=detail, problem=problem)


def _parse_opaque(fc: int, data: bytes) -> Request:
    return Request(fc, detail={"data": data.hex()})


_REQUEST_PARSERS: Mapping[int, Callable[[int, bytes], Request]] = {
    1: _parse_read,
    2: _parse_read,
    3: _parse_read,
    4: _parse_read,
    5: _parse_write_single,
    6: _parse_write_single,
    7: _parse_empty,
    8: _parse_diagnostics,
    11: _parse_empty,
    12: _parse_empty,
    15: _parse_write_multiple,
    16: _parse_write_multiple,
    17: _parse_empty,
    20: _parse_file_record,
    21: _parse_file_record,
    22: _parse_mask_write,
    23: _parse_read_write,
    24: _parse_fifo,
    43: _parse_mei,
}


def parse_request(pdu: bytes) -> Request:
    """Decode a client request PDU; raise :class:`ModbusProtocolError` if its layout is broken.

    Function codes without a parser here (90, 125, 126 and unknown ones) are opaque: any data
    is accepted and kept in ``detail["data"]``.
    """
    if not pdu:
        raise ModbusProtocolError("empty PDU")
    fc = pdu[0]
    if fc == 0 or fc >= 0x80:
        raise ModbusProtocolError(f"function code {fc} is not a request")
    return _REQUEST_PARSERS.get(fc, _parse_opaque)(fc, pdu[1:])


def parse_response(pdu: bytes, request: Request | None = None) -> Response:
    """Decode a server response PDU; raise :class:`ModbusProtocolError` if its layout is broken.

    Checked layouts: exception responses (one code byte), reads with a byte count (FC 1-4, 23)
    and write echoes (FC 5, 6, 15, 16: 4 bytes; 22: 6 bytes).  Other function codes pass as
    opaque.  With ``request`` given, coil/input bits are cut to the requested quantity.
    """
    if not pdu:
        raise ModbusProtocolError("empty response PDU")
    fc, data = pdu[0], pdu[1:]
    if fc & 0x80:
        if len(data) != 1:
            raise ModbusProtocolError(f"exception response with {len(data)} data bytes")
        return Response(fc & 0x7F, exception=data[0])
    if fc in (1, 2, 3, 4, 23):
        if not data or len(data) != 1 + data[0] or (fc > 2 and data[0] % 2):
            raise ModbusProtocolError(f"function {fc} response byte count is inconsistent")
        if fc > 2:
            return Response(fc, values=_regs(data[1:]))
        wanted = request.quantity if request and request.quantity else 8 * data[0]
        return Response(fc, values=_bits(data[1:], wanted))
    if (fc in (5, 6, 15, 16) and len(data) != 4) or (fc == 22 and len(data) != 6):
        raise ModbusProtocolError(f"function {fc} response has {len(data)} data bytes")
    return Response(fc)


def exception_response(frame: Frame, code: ExceptionCode) -> bytes:
    """The exception answer to ``frame``: same transaction and unit ids, PDU fc|0x80, code."""
    pdu = bytes([frame.function_code | 0x80, code])
    return Frame(frame.transaction_id, frame.unit_id, pdu).encode()


def reference_range(function_code: int, start: int, quantity: int) -> str | None:
    """``start``/``quantity`` as Modicon reference numbers, e.g. FC 3, 0, 10 -> "40001\u201340010".

    Coils are 0xxxx, discrete inputs 1xxxx, input registers 3xxxx, holding registers 4xxxx;
    six digits once an address passes 9999.  None for function codes without a table.
    """
    prefix = _TABLE_PREFIX.get(function_code)
    if prefix is None or quantity < 1:
        return None
    last = start + quantity
    width = 4 if last <= 9999 else 5
    first_ref = f"{prefix}{start + 1:0{width}d}"
    return first_ref if quantity == 1 else f"{first_ref}\u2013{prefix}{last:0{width}d}"


# ------------------------------------------------------------------------------ enforcement


class TokenBucket:
    """Requests-per-second limiter on the injected clock; share one per asset across relays.

    Holds at most ``burst`` tokens (default 1: requests are spaced by at least 1/rate) and starts
    full.  A clock that steps backwards earns no tokens.
    """

    def __init__(self, rate: float, clock: Clock, burst: float = 1.0) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError("TokenBucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = clock.now()

    def _refill(self, now: datetime) -> None:
        elapsed = (now - self._last).total_seconds()
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now

    def try_take(self, now: datetime) -> bool:
        """Take one token if there is one at ``now``."""
        self._refill(now)
        if self._tokens >= 1 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1)
            return True
        return False

    def available_at(self, now: datetime) -> datetime:
        """The earliest time a token will be there (``now`` if one already is)."""
        self._refill(now)
        missing = 1 - self._tokens
        if missing <= 1e-9:
            return now
        return max(now, self._last) + timedelta(seconds=math.ceil(missing / self.rate * 1e6) / 1e6)


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What the relay must do after one inspector call.

    Write ``to_server`` to the PLC and ``to_client`` to the vendor's tool (each a run of whole
    frames), append ``records`` to the ops log, and if ``close`` is set, close the connection
    (after an audit event; in-flight answers may still be drained).  If ``poll_at`` is set,
    call :meth:`ModbusInspector.poll` at that time (earlier is harmless).  ``malformed`` holds
    bytes of the inspected direction that were stopped at a malformed frame (the frame and
    everything after it in that call): record them in that direction, never forward them.
    """

    to_server: bytes = b""
    to_client: bytes = b""
    records: tuple[Record, ...] = ()
    close: str | None = None
    poll_at: datetime | None = None
    malformed: bytes = b""


@dataclass(slots=True)
class _Txn:
    frame: Frame
    request: Request
    record: Record
    deadline: datetime | None = None
    done: bool = False


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ModbusInspector:
    """Enforces Modbus obligations on one client connection (see the module docstring).

    ``max_concurrent``: forwarded requests awaiting an answer before further ones queue.
    ``max_queued``: requests held (rate or concurrency) before :attr:`accepting` turns False
    and further requests get exception 06.  ``response_timeout_s``: an unanswered forwarded
    request frees its slot after this long and is logged as ``no_response``.  ``limiter``
    overrides the bucket built from ``rate_limit_rps`` (pass a shared one for a per-asset limit).

    Ops-log records (one dict per request, JSON-ready): ``time``, ``transaction_id``, ``unit``,
    ``function``, ``function_name``, ``start``, ``quantity``, ``range`` (e.g. "40001\u201340010"),
    ``read_start``/``read_quantity``/``read_range`` (FC 23), ``values`` (written values),
    ``table`` (writes: ``coils`` or ``holding_registers``, else None), ``detail``, ``allowed``,
    ``reason``, ``result`` (ok, exception, refused, no_response, not_sent), ``exception``,
    ``response_values`` (read results) and ``answered_at``.  Refused requests are logged at
    once; forwarded ones when answered, timed out, or at :meth:`finish`.  A malformed frame
    (either direction) gets one ``refused`` record whose ``reason`` is the protocol error, with
    ``raw`` (hex of the first :data:`RAW_LOGGED` stopped bytes) and ``raw_length``; only such
    records carry ``raw``.
    """

    def __init__(
        self,
        obligations: Obligations | None,
        clock: Clock,
        *,
        max_concurrent: int = 16,
        max_queued: int = 64,
        response_timeout_s: float = 5.0,
        burst: float = 1.0,
        limiter: TokenBucket | None = None,
    ) -> None:
        if max_concurrent < 1 or max_queued < 1 or response_timeout_s <= 0:
            raise ValueError("max_concurrent, max_queued and response_timeout_s must be positive")
        self._clock = clock
        if obligations is None:
            modbus = ModbusObligations(READ_ONLY_FUNCTION_CODES)
            rate = None
        else:
            modbus = obligations.modbus
            rate = obligations.rate_limit_rps
        self._allowed = frozenset(modbus.allow_function_codes)
        self._write_ranges = modbus.write_ranges
        self._units = None if modbus.unit_ids is None else frozenset(modbus.unit_ids)
        self._merged: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (table, unit) -> union
        if limiter is None and rate is not None:
            limiter = TokenBucket(rate, clock, burst)
        self._limiter = limiter
        self._max_concurrent = max_concurrent
        self._max_queued = max_queued
        self._timeout = timedelta(seconds=response_timeout_s)
        self._client = MbapFramer()
        self._server = MbapFramer()
        self._queue: deque[_Txn] = deque()
        self._in_flight: dict[int, deque[_Txn]] = {}
        self._in_flight_count = 0
        self._order: deque[_Txn] = deque()  # in-flight in forwarding order (done ones lazily)
        self._closed: str | None = None
        self._server_broken = False
        self._closing = False

    # -- state --------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Requests forwarded to the PLC and not yet answered (or timed out)."""
        return self._in_flight_count

    def queued(self) -> int:
        """Allowed requests held back by the rate limit or the concurrency cap."""
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        """False while the queue is full: the relay should stop reading from the client."""
        return len(self._queue) < self._max_queued and not self._closing

    @property
    def drained(self) -> bool:
        """Every forwarded transaction has been answered (or timed out)."""
        return self._in_flight_count == 0

    @property
    def closed(self) -> str | None:
        """Why the connection must close (malformed frame), or None."""
        return self._closed

    # -- entry points -------------------------------------------------------------------

    def from_client(self, data: bytes) -> Verdicts:
        """Inspect bytes from the vendor's tool; never raises on hostile input."""
        now = self._clock.now()
        if self._closed is not None or self._closing:
            return Verdicts(close=self._closed)
        records = self._expire(now)
        forward = bytearray()
        replies = bytearray()
        frames, unparsed, error = _feed(self._client, data)
        bad_at = len(frames)
        for i, frame in enumerate(frames):
            try:
                request = parse_request(frame.pdu)
            except ModbusProtocolError as exc:
                error, bad_at = exc, i
                break
            refusal = self._check(request, frame.unit_id)
            if refusal is None and len(self._queue) >= self._max_queued:
                refusal = ExceptionCode.SERVER_DEVICE_BUSY, "request queue full"
            record = self._record(now, frame, request)
            if refusal is None:
                record.update(allowed=True, reason=self._allow_reason(request))
                self._queue.append(_Txn(frame, request, record))
                forward += self._forward(now)
                continue
            code, reason = refusal
            replies += exception_response(frame, code)
            record.update(allowed=False, reason=reason, result="refused", exception=int(code))
            records.append(record)
        malformed = b""
        if error is not None:
            self._closed = f"malformed Modbus request: {error.message}"
            malformed = _stopped(self._client, frames[bad_at:], unparsed, error)
            records.append(_malformed_record(now, malformed, self._closed))
            records += self._discard_queue(self._closed)
        return self._verdicts(now, bytes(forward), bytes(replies), records, malformed)

    def from_server(self, data: bytes) -> Verdicts:
        """Match the PLC's answers to forwarded requests; pass them through unchanged."""
        now = self._clock.now()
        if self._server_broken:
            return Verdicts(close=self._closed)
        records = self._expire(now)
        answers = bytearray()
        frames, unparsed, error = _feed(self._server, data)
        bad_at = len(frames)
        for i, frame in enumerate(frames):
            pending = self._in_flight.get(frame.transaction_id)
            txn = pending[0] if pending else None
            try:
                response = parse_response(frame.pdu, txn.request if txn else None)
            except ModbusProtocolError as exc:
                error, bad_at = exc, i
                break
            answers += frame.encode()
            if txn is not None:
                self._pop_in_flight(txn)
                records.append(self._answered(now, txn, response))
        malformed = b""
        if error is not None:
            self._server_broken = True
            reason = f"malformed Modbus response: {error.message}"
            self._closed = self._closed or reason
            malformed = _stopped(self._server, frames[bad_at:], unparsed, error)
            records.append(_malformed_record(now, malformed, reason))
            records += self._discard_queue(self._closed)
        return self._verdicts(now, self._forward(now), bytes(answers), records, malformed)

    def poll(self) -> Verdicts:
        """Release queued requests that are now due and expire unanswered ones."""
        now = self._clock.now()
        records = self._expire(now)
        return self._verdicts(now, self._forward(now), b"", records)

    def begin_close(self, reason: str) -> Verdicts:
        """Stop taking requests (session ending); queued ones are dropped and logged.

        Afterwards :meth:`from_client` ignores its input; keep feeding :meth:`from_server`
        until :attr:`drained` or a short bound passes, then call :meth:`finish`.
        """
        now = self._clock.now()
        self._closing = True
        records = self._expire(now) + self._discard_queue(f"session closing: {reason}")
        return self._verdicts(now, b"", b"", records)

    def finish(self) -> list[Record]:
        """Log every request still queued or in flight (the connection is gone)."""
        self._closing = True
        records = self._discard_queue("connection ended")
        for txn in self._order:
            if not txn.done:
                txn.record.update(result="no_response", reason="connection ended before answer")
                records.append(txn.record)
        self._in_flight.clear()
        self._order.clear()
        self._in_flight_count = 0
        return records

    # -- internals ----------------------------------------------------------------------

    def _check(self, request: Request, unit: int) -> tuple[ExceptionCode, str] | None:
        fc = request.function_code
        if self._units is not None and unit not in self._units:
            allowed = ", ".join(map(str, sorted(self._units))) or "none"
            return (
                ExceptionCode.GATEWAY_PATH_UNAVAILABLE,
                f"unit id {unit} not allowed (unit ids: {allowed})",
            )
        if fc not in self._allowed:
            return (
                ExceptionCode.ILLEGAL_FUNCTION,
                f"function {fc} ({function_name(fc)}) not allowed",
            )
        if fc == 43 and request.detail.get("mei_type") != MEI_READ_DEVICE_ID:
            mei = request.detail.get("mei_type")
            return ExceptionCode.ILLEGAL_FUNCTION, f"function 43 MEI type {mei} not allowed"
        if request.problem is not None:
            return request.problem
        table = WRITE_TABLE.get(fc)
        if table is None:
            return None
        span = request.write_span
        if span is None:  # every write parser sets a span; refuse if one ever does not
            return ExceptionCode.ILLEGAL_DATA_ADDRESS, f"FC{fc} write without an address"
        ranges = self._ranges_for(table, unit)
        if any(first <= span[0] and span[1] <= last for first, last in ranges):
            return None
        one, many = _TABLE_NOUNS[table]
        where = f"{one} {span[0]}" if span[0] == span[1] else f"{many} {_span(*span)}"
        per_unit = any(r.table == table and r.unit_ids is not None for r in self._write_ranges)
        scope = f" for unit {unit}" if per_unit else ""
        listed = ", ".join(_span(first, last) for first, last in ranges) or "none"
        return (
            ExceptionCode.ILLEGAL_DATA_ADDRESS,
            f"FC{fc} write to {where} outside the {one} write ranges{scope} ({listed})",
        )

    def _ranges_for(self, table: str, unit: int) -> list[tuple[int, int]]:
        """The union of the ranges that confine writes into ``table`` for ``unit``."""
        merged = self._merged.get((table, unit))
        if merged is None:
            merged = _merge(self._write_ranges, table, unit)
            self._merged[(table, unit)] = merged
        return merged

    @staticmethod
    def _allow_reason(request: Request) -> str:
        fc = request.function_code
        table = WRITE_TABLE.get(fc)
        if table is not None:
            return f"function {fc} allowed; write within the {_TABLE_NOUNS[table][0]} write ranges"
        return f"function {fc} allowed"

    def _record(self, now: datetime, frame: Frame, request: Request) -> Record:
        fc = request.function_code
        start, qty = request.start, request.quantity
        rstart, rqty = request.read_start, request.read_quantity
        return {
            "time": _iso(now),
            "transaction_id": frame.transaction_id,
            "unit": frame.unit_id,
            "function": fc,
            "function_name": function_name(fc),
            "table": WRITE_TABLE.get(fc),
            "start": start,
            "quantity": qty,
            "range": None
            if start is None
            else reference_range(fc, start, 1 if qty is None else qty),
            "read_start": rstart,
            "read_quantity": rqty,
            "read_range": None
            if rstart is None or rqty is None
            else reference_range(fc, rstart, rqty),
            "values": list(request.values) if request.values is not None else None,
            "detail": dict(request.detail),
            "allowed": False,
            "reason": "",
            "result": "pending",
            "exception": None,
            "response_values": None,
            "answered_at": None,
        }

    def _answered(self, now: datetime, txn: _Txn, response: Response) -> Record:
        record = txn.record
        record["answered_at"] = _iso(now)
        if response.function_code != txn.request.function_code:
            record["result"] = "mismatched_response"
        elif response.exception is not None:
            record.update(result="exception", exception=response.exception)
        else:
            record["result"] = "ok"
        if response.values is not None:
            record["response_values"] = list(response.values)
        return record

    def _pop_in_flight(self, txn: _Txn) -> None:
        tid = txn.frame.transaction_id
        pending = self._in_flight[tid]
        pending.remove(txn)
        if not pending:
            del self._in_flight[tid]
        txn.done = True
        self._in_flight_count -= 1

    def _oldest_in_flight(self) -> _Txn | None:
        while self._order and self._order[0].done:
            self._order.popleft()
        return self._order[0] if self._order else None

    def _discard_queue(self, reason: str) -> list[Record]:
        records = []
        while self._queue:
            txn = self._queue.popleft()
            txn.record.update(result="not_sent", reason=reason)
            records.append(txn.record)
        return records

    def _expire(self, now: datetime) -> list[Record]:
        records: list[Record] = []
        while (txn := self._oldest_in_flight()) is not None:
            if txn.deadline is None or txn.deadline > now:
                break
            self._pop_in_flight(txn)
            txn.record.update(result="no_response", reason="no answer within timeout")
            records.append(txn.record)
        return records

    def _forward(self, now: datetime) -> bytes:
        if self._closed is not None or self._closing:
            return b""
        out = bytearray()
        while self._queue and self._in_flight_count < self._max_concurrent:
            if self._limiter is not None and not self._limiter.try_take(now):
                break
            txn = self._queue.popleft()
            txn.deadline = now + self._timeout
            self._in_flight.setdefault(txn.frame.transaction_id, deque()).append(txn)
            self._order.append(txn)
            self._in_flight_count += 1
            out += txn.frame.encode()
        return bytes(out)

    def _verdicts(
        self,
        now: datetime,
        to_server: bytes,
        to_client: bytes,
        records: list[Record],
        malformed: bytes = b"",
    ) -> Verdicts:
        oldest = self._oldest_in_flight()
        times = [oldest.deadline] if oldest is not None and oldest.deadline is not None else []
        if self._queue and self._in_flight_count < self._max_concurrent and self._limiter:
            times.append(self._limiter.available_at(now))
        poll_at = min(times) if times else None
        return Verdicts(to_server, to_client, tuple(records), self._closed, poll_at, malformed)


def _feed(framer: MbapFramer, data: bytes) -> tuple[list[Frame], bytes, ModbusProtocolError | None]:
    """The frames ``data`` completes, the bytes from a broken header on, and the error."""
    try:
        return framer.feed(data), b"", None
    except ModbusProtocolError as exc:
        return list(exc.frames), exc.unparsed, exc


def _stopped(
    framer: MbapFramer, frames: list[Frame], unparsed: bytes, error: ModbusProtocolError
) -> bytes:
    """Everything from the malformed frame on: its frames, unparsed bytes, what was held back."""
    return b"".join(f.encode() for f in frames) + unparsed + framer.fail(error.message)


def _malformed_record(now: datetime, raw: bytes, reason: str) -> Record:
    """The ops-log record of stopped bytes; ids and function code read from the MBAP header."""
    fc = raw[7] if len(raw) > 7 else None
    return {
        "time": _iso(now),
        "transaction_id": int.from_bytes(raw[:2], "big") if len(raw) >= 2 else None,
        "unit": raw[6] if len(raw) > 6 else None,
        "function": fc,
        "function_name": None if fc is None else function_name(fc),
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
        "raw": raw[:RAW_LOGGED].hex(),
        "raw_length": len(raw),
    }


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}\u2013{last}"


def _merge(ranges: tuple[WriteRange, ...], table: str, unit: int) -> list[tuple[int, int]]:
    """The ranges that apply to ``table`` and ``unit``, sorted, overlapping/adjacent joined."""
    merged: list[tuple[int, int]] = []
    applicable = sorted((r.first, r.last) for r in ranges if r.applies_to(table, unit))
    for first, last in applicable:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged
