"""broker.core.relay.ForwardRelay on its own: a malformed Modbus frame from the vendor.

Small fakes for the vendor's streams and the agent channel; the recording is the real
``TcpRecording`` (signed pcap + ops log) read back with ``assemble`` and Debian's ``tshark``.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

from broker.core.relay import ALERT_OUTCOMES, ForwardRelay
from broker.runtime.session_recorder import RecorderFactory, TcpRecording
from sessions.clock import SystemClock
from sessions.ot.modbus import ModbusInspector
from sessions.recording import Ed25519Signer, VerifyStatus, assemble, verify_recording
from tests.harness.components import needs

TSHARK = "/usr/bin/tshark"
PLC = ("127.0.0.1", 502)


def mbap(tid: int, pdu: bytes, unit: int = 1, protocol: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu


READ = mbap(1, struct.pack(">BHH", 3, 0, 2))
BAD = mbap(2, struct.pack(">BHH", 3, 0, 2), protocol=0x6666)  # protocol id must be 0
AFTER = mbap(3, struct.pack(">BHH", 3, 9, 1))


class _Vendor:
    """The vendor's side: hands out ``chunks``, then stays open (the relay must cut it)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.written = bytearray()
        self.closed = False

    async def read(self, n: int = -1, /) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        await asyncio.Event().wait()
        return b""

    def write(self, data: bytes, /) -> None:
        self.written += data

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class _Channel:
    """The agent channel to the PLC: records what reaches it; ``answers`` once sent something."""

    def __init__(self, *answers: bytes) -> None:
        self.sent = bytearray()
        self.answers = list(answers)
        self._closed = asyncio.Event()
        self._sent = asyncio.Event()

    async def read(self, n: int = -1) -> bytes:
        await self._sent.wait()
        if self.answers:
            return self.answers.pop(0)
        await self._closed.wait()
        return b""

    def write(self, data: bytes) -> None:
        self.sent += data
        self._sent.set()

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        self._closed.set()


class _Maintenance:
    def add_recording(self, session_id: str, *, fmt: str, path: str) -> str:
        return f"{session_id}-{fmt}"

    def finish_recording(self, row_id: str, **_: Any) -> None:
        return None


class _Audit:
    def append(self, kind: str, **_: Any) -> None:
        return None


async def _recording(root: Path, signer: Ed25519Signer) -> TcpRecording:
    factory = RecorderFactory(
        root,
        signer,
        SystemClock(),
        _Maintenance(),  # type: ignore[arg-type]
        _Audit(),  # type: ignore[arg-type]
        record_input=False,
    )
    recording = await factory.tcp(
        "s1",
        1,
        client=("198.18.0.1", 40001),
        server=PLC,
        operations=True,
        strict=True,
        on_failure=lambda why: None,
    )
    assert recording is not None
    return recording


def _relay(
    vendor: _Vendor,
    channel: _Channel,
    recording: TcpRecording,
    alerts: list[tuple[str, dict[str, Any]]],
) -> ForwardRelay:
    return ForwardRelay(
        vendor_in=vendor,
        vendor_out=vendor,
        channel=channel,  # type: ignore[arg-type]
        session=None,
        clock=SystemClock(),
        recording=recording,
        inspector=ModbusInspector(None, SystemClock()),
        alert=lambda kind, details: alerts.append((kind, details)),
        drain_s=0.1,
    )


def _segments(tmp_path: Path, pcap_dir: Path) -> dict[str, bytes]:
    """The TCP payload in the pcap per source address, via tshark."""
    pcap = tmp_path / "connection.pcap"
    pcap.write_bytes(assemble(pcap_dir))
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), "-Y", "tcp.len > 0",
         "-T", "fields", "-e", "ip.src", "-e", "tcp.payload"],
        capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    payloads: dict[str, bytes] = {}
    for line in out.stdout.splitlines():
        src, payload = line.split("\t")
        payloads[src] = payloads.get(src, b"") + bytes.fromhex(payload)
    return payloads


needs_tshark = needs("tshark")


@needs_tshark
async def test_a_malformed_frame_is_refused_recorded_and_never_forwarded(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    recording = await _recording(tmp_path, signer)
    vendor, channel = _Vendor(READ + BAD + AFTER), _Channel()
    alerts: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        reason = await _relay(vendor, channel, recording, alerts).run()

    # the PLC got the valid request only; the connection was cut
    assert bytes(channel.sent) == READ and vendor.closed
    assert reason == "malformed Modbus request: MBAP protocol id 26214 (must be 0)"
    # one alert, audited as refused, carrying the stopped bytes
    [(kind, details)] = alerts
    assert kind == "ot.malformed" and ALERT_OUTCOMES[kind] == "refused"
    assert details["reason"] == reason
    assert details["raw"] == (BAD + AFTER).hex() and details["raw_length"] == len(BAD + AFTER)
    assert (details["transaction_id"], details["unit"], details["function"]) == (2, 1, 3)

    pcap_dir, ops_dir = tmp_path / "s1-tcp1", tmp_path / "s1-tcp1-ops"
    for directory in (pcap_dir, ops_dir):
        assert verify_recording(directory, signer.public_key).status == VerifyStatus.OK
    ops = [json.loads(line) for line in assemble(ops_dir).decode().splitlines()]
    [refused] = [o for o in ops if o["result"] == "refused"]
    assert refused["reason"] == reason and refused["raw"] == (BAD + AFTER).hex()
    assert [(o["transaction_id"], o["result"]) for o in ops] == [(2, "refused"), (1, "no_response")]
    # client -> server: the request that was forwarded, then the bytes that were stopped
    assert _segments(tmp_path, pcap_dir) == {"198.18.0.1": READ + BAD + AFTER}


@needs_tshark
async def test_a_malformed_answer_is_refused_and_recorded_from_the_plc(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    recording = await _recording(tmp_path, signer)
    answer = mbap(1, bytes([3, 4, 0, 7, 0, 7]))
    garbage = mbap(1, bytes([3, 5, 0]))  # byte count 5 with one byte of data
    vendor, channel = _Vendor(READ), _Channel(answer + garbage)
    alerts: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        reason = await _relay(vendor, channel, recording, alerts).run()
    assert reason.startswith("malformed Modbus response") and bytes(vendor.written) == answer
    [(kind, details)] = alerts
    assert kind == "ot.malformed" and details["raw"] == garbage.hex()
    assert _segments(tmp_path, tmp_path / "s1-tcp1") == {
        "198.18.0.1": READ,
        PLC[0]: answer + garbage,  # server -> client, though the vendor never received it
    }
