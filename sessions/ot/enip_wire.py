"""EtherNet/IP encapsulation and CIP requests on the wire (sans-IO, little-endian throughout).

Enforcement lives in :mod:`sessions.ot.enip`. Layout errors raise :class:`EnipProtocolError`.

Encapsulation header (24 bytes): command u16, length u16, session handle u32, status u32,
sender context 8 bytes, options u32; then ``length`` bytes. SendRRData (0x6F) and SendUnitData
(0x70) carry an interface handle u32, a timeout u16 and a common packet format: an address
item (null 0x0000 / connected 0x00A1) and a data item (unconnected 0x00B2 / connected 0x00B1,
the latter with a 2-byte sequence count) holding a CIP message: service u8, path size in
words u8, path, data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

from sessions.ot.framed import OtProtocolError

HEADER = 24
MAX_LENGTH = 65511  # the largest encapsulation data length the 16-bit field allows
NOP, LIST_SERVICES, LIST_IDENTITY, LIST_INTERFACES = 0x0001, 0x0004, 0x0063, 0x0064
REGISTER, UNREGISTER, SEND_RR, SEND_UNIT = 0x0065, 0x0066, 0x006F, 0x0070
PASS_COMMANDS = frozenset(
    {NOP, LIST_SERVICES, LIST_IDENTITY, LIST_INTERFACES, REGISTER, UNREGISTER}
)
NULL_ADDRESS, CONNECTED_ADDRESS, CONNECTED_DATA, UNCONNECTED_DATA = 0x0000, 0x00A1, 0x00B1, 0x00B2
CONNECTION_MANAGER, MESSAGE_ROUTER = 0x06, 0x02
UNCONNECTED_SEND, FORWARD_OPEN, LARGE_FORWARD_OPEN, FORWARD_CLOSE = 0x52, 0x54, 0x5B, 0x4E
MULTIPLE_SERVICE = 0x0A
PRIVILEGE_VIOLATION = 0x0F  # CIP general status the broker answers refused requests with


class EnipProtocolError(OtProtocolError):
    """A frame breaks the encapsulation, CPF or CIP layout; the connection must be closed."""

    code = "enip_malformed"


@dataclass(frozen=True, slots=True)
class Encap:
    """One encapsulation frame (its wire bytes kept for forwarding)."""

    command: int
    session: int
    status: int
    context: bytes
    data: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class Cip:
    """A CIP request: service, the class it addresses (None if the path names a tag), the
    symbolic tag name (or ''), the path's text and the request data."""

    service: int
    cls: int | None
    tag: str
    path: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """SendRRData/SendUnitData contents: the address item, the data item's type and payload."""

    address_type: int
    connection: int | None
    data_type: int
    sequence: int | None
    cip: bytes


class EncapFramer:
    """Streaming splitter for one direction; broken for good after the first error."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: str | None = None

    def feed(self, data: bytes) -> tuple[list[Encap], bytes, EnipProtocolError | None]:
        if self._error is not None:
            return [], bytes(data), EnipProtocolError(self._error)
        self._buf += data
        frames: list[Encap] = []
        pos, buf = 0, self._buf
        while len(buf) - pos >= HEADER:
            command, length, session, status = struct.unpack_from("<HHII", buf, pos)
            if length > MAX_LENGTH:
                self._error = f"encapsulation length {length} over {MAX_LENGTH}"
                rest, self._buf = bytes(buf[pos:]), bytearray()
                return frames, rest, EnipProtocolError(self._error)
            if len(buf) - pos < HEADER + length:
                break
            raw = bytes(buf[pos : pos + HEADER + length])
            frames.append(Encap(command, session, status, raw[12:20], raw[HEADER:], raw))
            pos += HEADER + length
        del buf[:pos]
        return frames, b"", None

    def fail(self, message: str) -> bytes:
        self._error = self._error or message
        held, self._buf = bytes(self._buf), bytearray()
        return held


def parse_message(data: bytes) -> Message:
    """The CPF of SendRRData/SendUnitData: exactly an address item and a data item."""
    if len(data) < 8:
        raise EnipProtocolError("SendRRData/SendUnitData shorter than its fixed part")
    (count,) = struct.unpack_from("<H", data, 6)
    pos, items = 8, []
    for _ in range(count):
        if len(data) - pos < 4:
            raise EnipProtocolError("CPF item header truncated")
        kind, size = struct.unpack_from("<HH", data, pos)
        if len(data) - pos - 4 < size:
            raise EnipProtocolError("CPF item longer than the frame")
        items.append((kind, data[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    if pos != len(data) or count != 2:
        raise EnipProtocolError(f"CPF with {count} items (an address and a data item expected)")
    (akind, addr), (dkind, payload) = items
    if (akind, len(addr)) == (NULL_ADDRESS, 0) and dkind == UNCONNECTED_DATA:
        return Message(akind, None, dkind, None, payload)
    if (
        (akind, len(addr)) == (CONNECTED_ADDRESS, 4)
        and dkind == CONNECTED_DATA
        and len(payload) >= 2
    ):
        (conn,) = struct.unpack("<I", addr)
        (seq,) = struct.unpack_from("<H", payload)
        return Message(akind, conn, dkind, seq, payload[2:])
    raise EnipProtocolError(f"CPF items 0x{akind:04X}/0x{dkind:04X} not understood")


def parse_cip(message: bytes) -> Cip:
    """A CIP request: its service, path (class/instance/attribute or a symbolic tag) and data."""
    if len(message) < 2:
        raise EnipProtocolError("CIP request shorter than service and path size")
    service, words = message[0], message[1]
    if service & 0x80:
        raise EnipProtocolError(f"CIP service 0x{service:02X} is a reply, not a request")
    end = 2 + 2 * words
    if len(message) < end:
        raise EnipProtocolError("CIP path longer than the message")
    cls, tag, parts = _path(message[2:end])
    return Cip(service, cls, tag, " ".join(parts), message[end:])


def _path(path: bytes) -> tuple[int | None, str, list[str]]:
    cls, names, parts, pos = None, [], [], 0
    while pos < len(path):
        seg = path[pos]
        if seg == 0x91:  # ANSI extended symbol: length, name, pad to even
            if pos + 2 > len(path) or pos + 2 + path[pos + 1] > len(path):
                raise EnipProtocolError("CIP symbolic segment longer than the path")
            name = path[pos + 2 : pos + 2 + path[pos + 1]].decode("latin-1")
            names.append(name)
            parts.append(name)
            pos += 2 + path[pos + 1] + (path[pos + 1] % 2)
        elif seg in (0x20, 0x24, 0x28, 0x2C, 0x30):  # 8-bit logical
            if pos + 2 > len(path):
                raise EnipProtocolError("CIP logical segment truncated")
            value = path[pos + 1]
            cls = value if seg == 0x20 else cls
            parts.append(f"{_LOGICAL[seg]} 0x{value:02X}")
            pos += 2
        elif seg in (0x21, 0x25, 0x29, 0x2D, 0x31):  # 16-bit logical (pad byte first)
            if pos + 4 > len(path):
                raise EnipProtocolError("CIP logical segment truncated")
            (value,) = struct.unpack_from("<H", path, pos + 2)
            cls = value if seg == 0x21 else cls
            parts.append(f"{_LOGICAL[seg - 1]} 0x{value:04X}")
            pos += 4
        else:
            raise EnipProtocolError(f"CIP path segment 0x{seg:02X} not understood")
    return (None if names else cls), ".".join(names), parts


_LOGICAL = {0x20: "class", 0x24: "instance", 0x28: "member", 0x2C: "point", 0x30: "attribute"}


def unconnected_send(data: bytes) -> bytes:
    """The embedded request of an Unconnected Send (the route path after it is not judged)."""
    if len(data) < 4:
        raise EnipProtocolError("Unconnected Send shorter than its fixed part")
    (size,) = struct.unpack_from("<H", data, 2)
    if len(data) < 4 + size + (size % 2) + 2:
        raise EnipProtocolError("Unconnected Send message longer than the request")
    return data[4 : 4 + size]


def multiple_service(data: bytes) -> list[bytes]:
    """The requests packed in a Multiple Service Packet (offsets from the count field)."""
    if len(data) < 2:
        raise EnipProtocolError("Multiple Service Packet without a count")
    (count,) = struct.unpack_from("<H", data)
    if count == 0 or len(data) < 2 + 2 * count:
        raise EnipProtocolError("Multiple Service Packet offsets truncated")
    offsets = [*struct.unpack_from(f"<{count}H", data, 2), len(data)]
    if offsets[0] != 2 + 2 * count or offsets != sorted(offsets):
        raise EnipProtocolError("Multiple Service Packet offsets out of order")
    return [data[a:b] for a, b in pairwise(offsets)]


def refusal(frame: Encap, message: Message, service: int, t_o: int | None) -> bytes:
    """The answer to a refused request: a CIP reply with general status 0x0F (privilege
    violation) in the same encapsulation command, session and sender context."""
    reply = bytes([service | 0x80, 0, PRIVILEGE_VIOLATION, 0])
    if message.data_type == UNCONNECTED_DATA:
        items = struct.pack("<HHHH", NULL_ADDRESS, 0, UNCONNECTED_DATA, len(reply)) + reply
    else:
        body = struct.pack("<H", message.sequence or 0) + reply
        items = struct.pack("<HHI", CONNECTED_ADDRESS, 4, t_o or 0)
        items += struct.pack("<HH", CONNECTED_DATA, len(body)) + body
    data = struct.pack("<IHH", 0, 0, 2) + items
    head = struct.pack("<HHII", frame.command, len(data), frame.session, 0)
    return head + frame.context + b"\x00\x00\x00\x00" + data


def unsupported(frame: Encap) -> bytes:
    """The answer to an encapsulation command the broker does not relay: status 0x0001."""
    head = struct.pack("<HHII", frame.command, 0, frame.session, 1)
    return head + frame.context + b"\x00\x00\x00\x00"
