"""Forwarded TCP connections as pcap, and decoded operations as JSONL, through a RecordingWriter.

:class:`PcapRecorder` writes a classic pcap file (little-endian magic ``0xa1b2c3d4``, version
2.4, microsecond timestamps, link type 1 = Ethernet) of *one* connection with synthetic
Ethernet/IPv4/TCP headers around the bytes the broker forwarded: a three-way handshake, one
PSH|ACK segment per :meth:`~PcapRecorder.client_data`/:meth:`~PcapRecorder.server_data` call
(split into segments of at most :data:`MAX_SEGMENT` payload bytes, the IPv4 total-length limit),
and a FIN (or RST) teardown. Sequence and acknowledgement numbers, IPv4 header checksums and TCP
checksums are correct, so tshark/Wireshark reassemble the stream and their dissectors decode it
by the server port (502 Modbus/TCP, 4840 OPC UA, 102 S7comm).

Addresses: the pcap shows the addresses the caller passes. The broker passes the vendor's real
IP (it is in the audit log anyway) with a synthetic ephemeral client port, and the asset's
endpoint IP with its real port. An address that is not IPv4 (IPv6, a host name) is replaced by
:data:`SYNTHETIC_CLIENT_IP` / :data:`SYNTHETIC_SERVER_IP`, from 198.18.0.0/15 (RFC 2544), which
no plant network uses, so a synthetic address is never mistaken for a real host in 10.0.0.0/8.
MACs are locally administered constants (:data:`CLIENT_MAC`, :data:`SERVER_MAC`).

Every packet is one :meth:`RecordingWriter.write` (the global header is the first), so every
chunk holds whole packets and any prefix of chunks, e.g. after a crash, is a valid pcap file.

:class:`OpsLogRecorder` writes one canonical JSON object per line (sorted keys, compact, UTF-8),
e.g. the Modbus inspector's decoded operations, stamped with ``time`` from the clock.

Threads (as :class:`~sessions.asciicast.AsciicastRecorder`): call the data and record methods
from one thread, the event loop (they only buffer); a :class:`~sessions.recording.FlushTimer`
flushes; ``close`` does blocking disk I/O (stop the timer first, then
``await asyncio.to_thread(recorder.close, reason)``). :class:`RecordingError` from the writer
propagates (strict mode: end the session).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sessions.clock import Clock
from sessions.errors import ValidationError
from sessions.recording import RecordingWriter, canonical_json, format_time

LINKTYPE_ETHERNET = 1
PCAP_MAGIC = 0xA1B2C3D4
MAX_SEGMENT = 65535 - 20 - 20  # IPv4 total length limit minus IPv4 and TCP headers
SYNTHETIC_CLIENT_IP = "198.18.0.1"
SYNTHETIC_SERVER_IP = "198.18.0.2"
CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")
CLIENT_ISN = 0x10000000
SERVER_ISN = 0x20000000
WINDOW_SHIFT = 7  # window scale option: advertised window 0xFFFF << 7 (about 8 MiB)
ACK_AFTER = 4 << 20  # the receiver acknowledges after this many unacknowledged bytes

_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_ETH_IP_TCP = 14 + 20 + 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``.

    The ones'-complement sum of 16-bit words is the number modulo 0xFFFF (2**16 is 1 modulo
    0xFFFF), except that a non-zero sum is 0xFFFF rather than 0. It is byte-order independent
    (RFC 1071, 2(B)), so the faster little-endian conversion is used and the result swapped.
    """
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "little") % 0xFFFF
    if total == 0 and any(data):
        total = 0xFFFF
    return ~((total >> 8) | (total & 0xFF) << 8) & 0xFFFF


def _ipv4(address: str, synthetic: str) -> bytes:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ipaddress.IPv4Address(synthetic).packed
    if isinstance(ip, ipaddress.IPv6Address):
        return (ip.ipv4_mapped or ipaddress.IPv4Address(synthetic)).packed
    return ip.packed


@dataclass
class _Side:
    mac: bytes
    ip: bytes
    port: int
    nxt: int  # next sequence number this side sends
    acked: int  # the highest acknowledgement the peer sent for this side's data
    ip_id: int = 0


class PcapRecorder:
    """Records one TCP connection as pcap. Use from one thread (the event loop).

    The constructor writes the pcap header and the handshake (SYN, SYN/ACK, ACK). ``client`` and
    ``server`` are ``(ip, port)``; ports must be 1-65535 and the two endpoints must differ.
    ``snaplen`` (256-262144) bounds every frame: payloads are split at
    ``min(MAX_SEGMENT, snaplen - 54)``, never truncated. Timestamps are the injected clock's,
    never decreasing. Raises :class:`~sessions.errors.ValidationError` (``invalid``) for bad
    arguments and :class:`~sessions.recording.RecordingError` as the writer does.
    """

    def __init__(
        self,
        writer: RecordingWriter,
        *,
        client: tuple[str, int],
        server: tuple[str, int],
        clock: Clock,
        snaplen: int = 65535,
    ) -> None:
        if not all(0 < port < 65536 for port in (client[1], server[1])):
            raise ValidationError(f"pcap: ports {client[1]}, {server[1]} are not 1-65535")
        if not 256 <= snaplen <= 262144:
            raise ValidationError(f"pcap: snaplen {snaplen} is not 256-262144")
        self._writer = writer
        self._clock = clock
        self._segment = min(MAX_SEGMENT, snaplen - _ETH_IP_TCP)
        self._last_us = 0
        self._client = _Side(CLIENT_MAC, _ipv4(client[0], SYNTHETIC_CLIENT_IP), client[1],
                             CLIENT_ISN, CLIENT_ISN)  # fmt: skip
        self._server = _Side(SERVER_MAC, _ipv4(server[0], SYNTHETIC_SERVER_IP), server[1],
                             SERVER_ISN, SERVER_ISN)  # fmt: skip
        if (self._client.ip, self._client.port) == (self._server.ip, self._server.port):
            raise ValidationError("pcap: client and server are the same endpoint")
        self._closed = False
        writer.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        options = struct.pack("!BBHBBBB", 2, 4, self._segment, 1, 3, 3, WINDOW_SHIFT)
        self._packet(self._client, self._server, _SYN, b"", options=options, ack=False)
        self._packet(self._server, self._client, _SYN | _ACK, b"", options=options)
        self._packet(self._client, self._server, _ACK, b"")

    def client_data(self, data: bytes) -> None:
        """Record bytes forwarded from the client (vendor) to the server (asset)."""
        self._data(self._client, self._server, data)

    def server_data(self, data: bytes) -> None:
        """Record bytes forwarded from the server (asset) to the client (vendor)."""
        self._data(self._server, self._client, data)

    def finish(self, *, closed_by: str = "client", reset: bool = False) -> None:
        """Write the teardown: FIN/ACK, FIN/ACK, ACK started by ``closed_by`` (``"client"`` or
        ``"server"``), or with ``reset`` a single RST/ACK from it (the broker cut the
        connection). Called by :meth:`close`; a second call does nothing.
        """
        if closed_by not in ("client", "server"):
            raise ValidationError(f"pcap: closed_by {closed_by!r} is not client or server")
        if self._closed:
            return
        self._closed = True
        first, second = (self._client, self._server)
        if closed_by == "server":
            first, second = second, first
        if reset:
            self._packet(first, second, _RST | _ACK, b"")
            return
        self._packet(first, second, _FIN | _ACK, b"")
        self._packet(second, first, _FIN | _ACK, b"")
        self._packet(first, second, _ACK, b"")

    def close(self, reason: str, *, closed_by: str = "client", reset: bool = False) -> None:
        """:meth:`finish`, then ``writer.close(reason)`` (signed manifest; blocking disk I/O).

        Stop the writer's :class:`~sessions.recording.FlushTimer` first. Raises
        :class:`~sessions.recording.RecordingError` like the writer does.
        """
        self.finish(closed_by=closed_by, reset=reset)
        self._writer.close(reason)

    def _data(self, src: _Side, dst: _Side, data: bytes) -> None:
        if self._closed:
            raise ValidationError("pcap: data after the connection was closed", code="closed")
        view = memoryview(data)
        for start in range(0, len(view), self._segment):
            self._packet(src, dst, _PSH | _ACK, bytes(view[start : start + self._segment]))
            if (src.nxt - src.acked) % (1 << 32) >= ACK_AFTER:
                self._packet(dst, src, _ACK, b"")

    def _packet(
        self, src: _Side, dst: _Side, flags: int, payload: bytes, *, options: bytes = b"",
        ack: bool = True,
    ) -> None:  # fmt: skip
        ack_no = dst.nxt if ack else 0
        if ack:
            dst.acked = dst.nxt
        offset = (20 + len(options)) // 4 << 4
        tcp = struct.pack("!HHIIBBHHH", src.port, dst.port, src.nxt, ack_no, offset, flags,
                          0xFFFF, 0, 0) + options + payload  # fmt: skip
        pseudo = src.ip + dst.ip + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), src.ip_id, 0x4000, 64, 6, 0,
                         src.ip, dst.ip)  # fmt: skip
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        frame = dst.mac + src.mac + b"\x08\x00" + ip + tcp
        src.ip_id = (src.ip_id + 1) & 0xFFFF
        src.nxt = (src.nxt + len(payload) + (1 if flags & (_SYN | _FIN) else 0)) % (1 << 32)
        now_us = (self._clock.now() - _EPOCH) // timedelta(microseconds=1)
        self._last_us = max(self._last_us, now_us)
        sec, usec = divmod(self._last_us, 1_000_000)
        self._writer.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)


class OpsLogRecorder:
    """Decoded operations as JSONL: one canonical JSON object per :meth:`record`, in call order.

    Lines are ``canonical_json`` (sorted keys, no whitespace, UTF-8, no NaN) with U+2028/U+2029
    escaped, so no reader splits a line. ``time`` (ISO-8601 UTC, microseconds, ``Z``) is added
    from the clock unless the record has one. Same threading contract as :class:`PcapRecorder`.
    """

    def __init__(self, writer: RecordingWriter, clock: Clock) -> None:
        self._writer = writer
        self._clock = clock

    def record(self, operation: Mapping[str, object]) -> None:
        """Append one operation. Raises :class:`~sessions.errors.ValidationError` (nothing is
        written) if it is not JSON-serialisable, :class:`RecordingError` as the writer does."""
        obj = dict(operation)
        obj.setdefault("time", format_time(self._clock.now()))
        try:
            line = canonical_json(obj)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"ops log: record is not JSON: {exc}") from exc
        line = line.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")
        self._writer.write(line + b"\n")

    def close(self, reason: str) -> None:
        """``writer.close(reason)``: flush and sign (blocking disk I/O; stop the timer first)."""
        self._writer.close(reason)
