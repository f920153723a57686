"""Modbus/TCP on the wire: MBAP framing and request/response PDU decoding (sans-IO).

Enforcement lives in :mod:`sessions.ot.modbus`; this module only splits and decodes. Layout
errors raise :class:`ModbusProtocolError` (the inspector then closes the connection).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeAlias

from policies.decision import COILS, HOLDING_REGISTERS
from sessions.errors import SessionsError
from sessions.ot.base import OpClass

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
# design.md "OT operations": diagnostics, UMAS, firmware/program download.
DANGEROUS_FUNCTION_CODES = frozenset({8, 90, 125, 126})

Values: TypeAlias = tuple[int, ...] | tuple[bool, ...]


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
TABLE_PREFIX = {1: 0, 5: 0, 15: 0, 2: 1, 4: 3, 3: 4, 6: 4, 16: 4, 22: 4, 23: 4, 24: 4}
# How reasons name one address / several addresses of a writable table.
TABLE_NOUNS = {
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
    prefix = TABLE_PREFIX.get(function_code)
    if prefix is None or quantity < 1:
        return None
    last = start + quantity
    width = 4 if last <= 9999 else 5
    first_ref = f"{prefix}{start + 1:0{width}d}"
    return first_ref if quantity == 1 else f"{first_ref}\u2013{prefix}{last:0{width}d}"


def feed_frames(
    framer: MbapFramer, data: bytes
) -> tuple[list[Frame], bytes, ModbusProtocolError | None]:
    """The frames ``data`` completes, the bytes from a broken header on, and the error."""
    try:
        return framer.feed(data), b"", None
    except ModbusProtocolError as exc:
        return list(exc.frames), exc.unparsed, exc


def stopped_bytes(
    framer: MbapFramer, frames: list[Frame], unparsed: bytes, error: ModbusProtocolError
) -> bytes:
    """Everything from the malformed frame on: its frames, unparsed bytes, what was held back."""
    return b"".join(f.encode() for f in frames) + unparsed + framer.fail(error.message)


def operation_class(fc: int) -> str:
    """The OT operation table's column of a function code (unknown codes are dangerous)."""
    if fc in DANGEROUS_FUNCTION_CODES or fc not in FUNCTION_NAMES:
        return OpClass.DANGEROUS
    if fc in WRITE_TABLE or fc == 21:
        return OpClass.WRITE
    return OpClass.READ
