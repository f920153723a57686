"""S7comm on the wire: TPKT (RFC 1006) / COTP (ISO 8073) framing and S7 PDU decoding (sans-IO).

Enforcement lives in :mod:`sessions.ot.s7`. Layout errors raise :class:`S7ProtocolError`
(the inspector closes the connection and records the stopped bytes).

Frames: TPKT ``03 00 LEN(u16)`` then COTP: ``LI TYPE ...``; data (DT, type 0xF0, LI 2) carries
``TPDU-nr|EOT`` and the S7 PDU. An S7 PDU split over several DT frames (EOT clear) is
reassembled before it is judged; its frames are forwarded together or not at all.
S7 header: ``32 ROSCTR RED(u16) PDUREF(u16) PARLEN(u16) DATLEN(u16)`` (+ ``ERRCLS ERRCOD`` on
ack/ack-data), then parameters and data, whose lengths must add up exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sessions.ot.framed import OtProtocolError

TPKT_HEADER = 4
MAX_S7_PDU = 8192  # the largest PDU size an S7 CPU negotiates (S7-1500); longer is hostile
# COTP TPDU types
CR, CC, DR, DC, DT, ER = 0xE0, 0xD0, 0x80, 0xC0, 0xF0, 0x70
# ROSCTR
JOB, ACK, ACK_DATA, USERDATA = 1, 2, 3, 7
# Job functions
SETUP, READ_VAR, WRITE_VAR = 0xF0, 0x04, 0x05
REQUEST_DOWNLOAD, DOWNLOAD_BLOCK, DOWNLOAD_ENDED = 0x1A, 0x1B, 0x1C
START_UPLOAD, UPLOAD, END_UPLOAD = 0x1D, 0x1E, 0x1F
PLC_CONTROL, PLC_STOP = 0x28, 0x29
# Memory areas (S7ANY addressing) and the names settings and obligations use for them
AREAS = {0x81: "I", 0x82: "Q", 0x83: "M", 0x84: "DB", 0x1C: "C", 0x1D: "T"}
AREA_CODES = {name: code for code, name in AREAS.items()}
# Bytes per element of an S7ANY transport size (BIT addresses one bit: one byte is touched)
ELEMENT_BYTES = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 4, 0x1C: 2, 0x1D: 2}


class S7ProtocolError(OtProtocolError):
    """A frame breaks TPKT/COTP/S7 layout; the connection must be closed."""

    code = "s7_malformed"


@dataclass(frozen=True, slots=True)
class Tpkt:
    """One TPKT frame: its wire bytes and the COTP TPDU type."""

    raw: bytes
    cotp_type: int

    @property
    def payload(self) -> bytes:
        """The bytes after the COTP header (DT: an S7 PDU or a fragment of one)."""
        return self.raw[TPKT_HEADER + 1 + self.raw[TPKT_HEADER] :]

    @property
    def eot(self) -> bool:
        return self.cotp_type != DT or bool(self.raw[TPKT_HEADER + 2] & 0x80)


class TpktFramer:
    """Streaming TPKT splitter for one direction; broken for good after the first error."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: str | None = None

    def feed(self, data: bytes) -> tuple[list[Tpkt], bytes, S7ProtocolError | None]:
        """Frames completed by ``data``; on a bad header also the bytes from it on and the error."""
        if self._error is not None:
            return [], bytes(data), S7ProtocolError(self._error)
        self._buf += data
        frames: list[Tpkt] = []
        pos, buf = 0, self._buf
        while len(buf) - pos >= TPKT_HEADER:
            version, reserved, length = (
                buf[pos],
                buf[pos + 1],
                struct.unpack_from(">H", buf, pos + 2)[0],
            )
            problem = None
            if version != 3 or reserved != 0:
                problem = f"TPKT version {version}/{reserved} (must be 3/0)"
            elif not 7 <= length <= MAX_S7_PDU + 64:
                problem = f"TPKT length {length} outside 7..{MAX_S7_PDU + 64}"
            if problem is None and len(buf) - pos >= TPKT_HEADER + 2:
                problem = _cotp_problem(buf[pos + TPKT_HEADER], buf[pos + TPKT_HEADER + 1], length)
            if problem is not None:
                self._error = problem
                rest = bytes(buf[pos:])
                self._buf = bytearray()
                return frames, rest, S7ProtocolError(problem)
            if len(buf) - pos < length:
                break
            raw = bytes(buf[pos : pos + length])
            frames.append(Tpkt(raw, raw[TPKT_HEADER + 1] & 0xF0))
            pos += length
        del buf[:pos]
        return frames, b"", None

    def fail(self, message: str) -> bytes:
        """Break the framer (a later layer found the stream malformed); return what it held."""
        self._error = self._error or message
        held, self._buf = bytes(self._buf), bytearray()
        return held


def _cotp_problem(li: int, kind: int, length: int) -> str | None:
    if li + 1 > length - TPKT_HEADER:
        return f"COTP length indicator {li} longer than the TPKT frame"
    if kind & 0xF0 not in (CR, CC, DR, DC, DT, ER):
        return f"COTP TPDU type 0x{kind:02X} unknown"
    if kind & 0xF0 == DT and li != 2:
        return f"COTP data TPDU with length indicator {li} (must be 2)"
    return None


@dataclass(frozen=True, slots=True)
class Item:
    """One S7ANY variable address: area code, DB number, bit address, transport size, count."""

    area: int
    db: int
    address: int
    transport: int
    count: int

    @property
    def first_byte(self) -> int:
        return self.address >> 3

    @property
    def length(self) -> int:
        """Bytes the item touches (at least one)."""
        return max(1, ELEMENT_BYTES.get(self.transport, 1) * self.count)

    def describe(self) -> str:
        area = AREAS.get(self.area, f"0x{self.area:02X}")
        where = f"DB{self.db}." if area == "DB" else ""
        last = self.first_byte + self.length - 1
        span = str(self.first_byte) if last == self.first_byte else f"{self.first_byte}\u2013{last}"
        return f"{where}{area if area != 'DB' else 'DBB'} {span}"


@dataclass(frozen=True, slots=True)
class S7Pdu:
    """A decoded S7 PDU (header fields, parameters, data; items for read/write var)."""

    rosctr: int
    ref: int
    params: bytes
    data: bytes
    error: int = 0
    items: tuple[Item, ...] = ()
    values: tuple[bytes, ...] = field(default=())

    @property
    def function(self) -> int | None:
        """Jobs: the function code; userdata: ``0x4SUB`` style, group * 256 + sub-function."""
        if self.rosctr == USERDATA:
            return (self.params[5] & 0x0F) * 256 + self.params[6]
        return self.params[0] if self.params else None


def parse_pdu(pdu: bytes) -> S7Pdu:
    """Decode an S7 PDU; raise :class:`S7ProtocolError` if its layout is broken."""
    if len(pdu) < 10 or pdu[0] != 0x32:
        raise S7ProtocolError("not an S7 PDU (protocol id 0x32, 10-byte header)")
    rosctr, ref, plen, dlen = pdu[1], *struct.unpack_from(">HHH", pdu, 4)
    head, error = 10, 0
    if rosctr in (ACK, ACK_DATA):
        if len(pdu) < 12:
            raise S7ProtocolError("S7 ack header truncated")
        head, error = 12, struct.unpack_from(">H", pdu, 10)[0]
    elif rosctr not in (JOB, USERDATA):
        raise S7ProtocolError(f"S7 ROSCTR {rosctr} unknown")
    if head + plen + dlen != len(pdu):
        raise S7ProtocolError(f"S7 parameter {plen} + data {dlen} bytes do not fill the PDU")
    params, data = pdu[head : head + plen], pdu[head + plen :]
    if rosctr == JOB and not params:
        raise S7ProtocolError("S7 job without a function")
    if rosctr == USERDATA and (len(params) < 8 or params[:3] != b"\x00\x01\x12"):
        raise S7ProtocolError("S7 userdata parameter header malformed")
    if rosctr == JOB and params[0] in (READ_VAR, WRITE_VAR):
        items = _items(params)
        values = _values(data, len(items)) if params[0] == WRITE_VAR else ()
        for item, value in zip(items, values, strict=False):
            if len(value) != item.length:  # the data, not the address, is what gets written
                raise S7ProtocolError(
                    f"S7 write data of {len(value)} bytes for an item of {item.length}"
                )
        return S7Pdu(rosctr, ref, params, data, error, items, values)
    return S7Pdu(rosctr, ref, params, data, error)


def _items(params: bytes) -> tuple[Item, ...]:
    if len(params) < 2 or params[1] == 0:
        raise S7ProtocolError("S7 read/write without items")
    count, pos, items = params[1], 2, []
    for _ in range(count):
        if len(params) - pos < 2:
            raise S7ProtocolError("S7 item truncated")
        spec, length = params[pos], params[pos + 1]
        if spec != 0x12 or length < 1 or len(params) - pos - 2 < length:
            raise S7ProtocolError("S7 item specification malformed")
        body = params[pos + 2 : pos + 2 + length]
        if body[0] != 0x10 or length != 10:  # only S7ANY addressing is understood
            raise S7ProtocolError(f"S7 item syntax 0x{body[0]:02X} not supported")
        transport, qty, db, area = body[1], *struct.unpack_from(">HH", body, 2), body[6]
        address = int.from_bytes(body[7:10], "big")
        items.append(Item(area, db, address, transport, qty))
        pos += 2 + length
    if pos != len(params):
        raise S7ProtocolError("S7 items do not fill the parameters")
    return tuple(items)


def _values(data: bytes, count: int) -> tuple[bytes, ...]:
    pos, values = 0, []
    for i in range(count):
        if len(data) - pos < 4:
            raise S7ProtocolError("S7 write data item truncated")
        transport, bits = data[pos + 1], struct.unpack_from(">H", data, pos + 2)[0]
        size = bits if transport in (0x03, 0x07, 0x09) else (bits + 7) // 8
        if len(data) - pos - 4 < size:
            raise S7ProtocolError("S7 write data shorter than its length")
        values.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size + (size % 2 if i < count - 1 else 0)
    if pos != len(data):
        raise S7ProtocolError("S7 write data does not fill the data section")
    return tuple(values)


def job_refusal(pdu: S7Pdu, code: int = 0x8703) -> bytes:
    """An Ack-Data answering ``pdu`` with header error ``code`` (0x8703: access refused)."""
    params = bytes([pdu.params[0], len(pdu.items)]) if pdu.items else pdu.params[:1]
    head = struct.pack(">BBHHHHH", 0x32, ACK_DATA, 0, pdu.ref, len(params), 0, code)
    return wrap(head + params)


def userdata_refusal(pdu: S7Pdu, code: int = 0x8703) -> bytes:
    """A userdata response to ``pdu`` carrying error ``code`` and return code 0x0A."""
    p = pdu.params
    params = bytes([0, 1, 0x12, 8, 0x12, 0x80 | (p[5] & 0x0F), p[6], p[7], 0, 0]) + code.to_bytes(
        2, "big"
    )
    data = b"\x0a\x00\x00\x00"
    head = struct.pack(">BBHHHH", 0x32, USERDATA, 0, pdu.ref, len(params), len(data))
    return wrap(head + params + data)


def wrap(pdu: bytes) -> bytes:
    """One S7 PDU as TPKT + COTP DT (EOT set)."""
    return struct.pack(">BBH", 3, 0, TPKT_HEADER + 3 + len(pdu)) + b"\x02\xf0\x80" + pdu
