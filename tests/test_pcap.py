"""pcap and ops-log recordings, read back by Debian's real ``tshark``, verified and tampered with."""

from __future__ import annotations

import asyncio
import json
import random
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sessions.errors import ValidationError
from sessions.pcap import (
    MAX_SEGMENT,
    SYNTHETIC_CLIENT_IP,
    SYNTHETIC_SERVER_IP,
    OpsLogRecorder,
    PcapRecorder,
    _checksum,
)
from sessions.recording import (
    Ed25519Signer,
    FlushTimer,
    LocalStore,
    RecordingWriter,
    VerifyStatus,
    assemble,
    verify_recording,
)
from sessions.testing import ManualClock
from tests.harness.components import TSHARK, needs
from tests.harness.wait import async_wait_until

needs_tshark = needs("tshark")
T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)
VENDOR = ("192.0.2.10", 50123)
PLC = ("127.0.0.1", 502)


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def _writer(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock, rid: str, kind: str = "pcap"
) -> RecordingWriter:
    return RecordingWriter(LocalStore(tmp_path / "rec"), rid, kind=kind, signer=signer, clock=clock)


def _pcap_file(tmp_path: Path, rid: str) -> Path:
    out = tmp_path / f"{rid}.pcap"
    out.write_bytes(assemble(tmp_path / "rec" / rid))
    return out


def tshark(pcap: Path, *args: str) -> list[str]:
    """Lines of ``tshark -r PCAP ARGS`` (stderr noise such as the root warning is ignored)."""
    home = pcap.parent / "tshark-home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), *args],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().splitlines()


def mbap(trans_id: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", trans_id, 0, len(pdu) + 1, unit) + pdu


# (request PDU, response PDU, expected function code)
MODBUS = [
    (bytes.fromhex("03 0000 0003"), bytes.fromhex("03 06 0001 0002 0003"), 3),
    (bytes.fromhex("06 0004 00ff"), bytes.fromhex("06 0004 00ff"), 6),
    (bytes.fromhex("10 000a 0002 04 1234 5678"), bytes.fromhex("10 000a 0002"), 16),
    (bytes.fromhex("03 ff00 0001"), bytes.fromhex("83 02"), 3),  # exception: illegal address
]


def _record_modbus(tmp_path: Path, signer: Ed25519Signer, clock: ManualClock) -> Path:
    writer = _writer(tmp_path, signer, clock, "modbus")
    rec = PcapRecorder(writer, client=VENDOR, server=PLC, clock=clock)
    for n, (req, resp, _) in enumerate(MODBUS, 1):
        clock.advance(0.25)
        rec.client_data(mbap(n, 1, req))
        writer.flush()
        clock.advance(0.002)
        rec.server_data(mbap(n, 1, resp))
        writer.flush()
    clock.advance(0.5)
    rec.close("client disconnected")
    return tmp_path / "rec" / "modbus"


@needs_tshark
def test_modbus_pcap_decodes_in_tshark_with_the_function_codes_in_order(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    path = _record_modbus(tmp_path, signer, clock)
    result = verify_recording(path, signer.public_key)
    assert result.status == VerifyStatus.OK and result.kind == "pcap" and result.chunks >= 8
    pcap = _pcap_file(tmp_path, "modbus")

    lines = tshark(
        pcap,
        "-Y",
        "modbus",
        "-T",
        "fields",
        "-e",
        "modbus.func_code",
        "-e",
        "modbus.exception_code",
    )
    assert lines == ["3\t", "3\t", "6\t", "6\t", "16\t", "16\t", "3\t", "3\t2"]
    trans = tshark(pcap, "-Y", "mbtcp", "-T", "fields", "-e", "mbtcp.trans_id", "-e", "ip.src")
    assert trans == [f"{n}\t{ip}" for n in range(1, 5) for ip in (VENDOR[0], PLC[0])]
    regs = tshark(
        pcap,
        "-Y",
        "modbus.func_code == 16 && tcp.dstport == 502",
        "-T",
        "fields",
        "-e",
        "modbus.reference_num",
        "-e",
        "modbus.regval_uint16",
    )
    assert regs == ["10\t4660,22136"]

    # Handshake, one segment per call, teardown; checksums good; no TCP analysis warnings.
    frames = tshark(
        pcap,
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.relative_sequence_numbers:TRUE",
        "-T",
        "fields",
        "-e",
        "tcp.flags.str",
        "-e",
        "tcp.seq",
        "-e",
        "tcp.ack",
        "-e",
        "tcp.checksum.status",
        "-e",
        "ip.checksum.status",
        "-e",
        "tcp.analysis.flags",
        "-e",
        "frame.time_epoch",
    )
    rows = [line.split("\t") for line in frames]
    assert len(rows) == 3 + 8 + 3
    assert [r[0].replace("·", "") for r in rows[:3]] == ["S", "AS", "A"]
    assert [r[0].replace("·", "") for r in rows[-3:]] == ["AF", "AF", "A"]
    assert {(r[3], r[4]) for r in rows} == {("1", "1")}  # 1 = good (0 bad, 2 unverified)
    assert all(r[5] == "" for r in rows)
    assert rows[3][1:3] == ["1", "1"]  # first client segment: relative seq 1, ack 1
    assert float(rows[3][6]) == pytest.approx(T0.timestamp() + 0.25, abs=1e-6)


@needs_tshark
@pytest.mark.parametrize(("snaplen", "segment"), [(65535, 65535 - 54), (262144, MAX_SEGMENT)])
def test_payloads_over_64_kib_are_segmented_and_read_back_whole(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock, snaplen: int, segment: int
) -> None:
    writer = _writer(tmp_path, signer, clock, "bulk")
    rec = PcapRecorder(
        writer, client=VENDOR, server=("127.0.0.1", 20000), clock=clock, snaplen=snaplen
    )
    big = bytes(range(256)) * 800  # 204800 bytes
    rec.client_data(big)
    writer.flush()
    rec.server_data(b"ok")
    rec.close("done")
    assert verify_recording(tmp_path / "rec" / "bulk", signer.public_key).status == "ok"
    pcap = _pcap_file(tmp_path, "bulk")

    lens = tshark(
        pcap,
        "-o",
        "tcp.check_checksum:TRUE",
        "-Y",
        "tcp.len > 0",
        "-T",
        "fields",
        "-e",
        "tcp.len",
        "-e",
        "tcp.checksum.status",
        "-e",
        "tcp.analysis.flags",
    )
    rest = len(big) - 3 * segment
    assert lens == [f"{segment}\t1\t"] * 3 + [f"{rest}\t1\t", "2\t1\t"]
    conv = "\n".join(tshark(pcap, "-q", "-z", "conv,tcp"))
    assert f"{VENDOR[0]}:{VENDOR[1]}" in conv and "127.0.0.1:20000" in conv
    # The reassembled client stream is exactly the bytes forwarded.
    follow = tshark(pcap, "-q", "-z", "follow,tcp,raw,0")
    client = [x for x in follow if x and not x.startswith(("=", "\t")) and ":" not in x]
    assert bytes.fromhex("".join(client)) == big


@needs_tshark
def test_small_snaplen_splits_rather_than_truncates(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = _writer(tmp_path, signer, clock, "snap")
    rec = PcapRecorder(writer, client=VENDOR, server=PLC, clock=clock, snaplen=1514)
    rec.client_data(mbap(1, 1, bytes.fromhex("10 0000 007b f6") + bytes(246)) * 10)
    rec.close("done")
    pcap = _pcap_file(tmp_path, "snap")
    lens = tshark(
        pcap,
        "-Y",
        "tcp.len > 0",
        "-T",
        "fields",
        "-e",
        "tcp.len",
        "-e",
        "frame.len",
        "-e",
        "frame.cap_len",
    )
    assert [line.split("\t")[0] for line in lens] == ["1460", "1130"]
    assert all(line.split("\t")[1] == line.split("\t")[2] for line in lens)
    counts = tshark(pcap, "-Y", "modbus", "-T", "fields", "-e", "modbus.word_cnt")
    assert ",".join(counts).split(",") == ["123"] * 10  # PDUs reassembled across segments


def _opcua_hello(url: str) -> bytes:
    body = struct.pack("<IIIII", 0, 65536, 65536, 0, 0) + struct.pack("<i", len(url)) + url.encode()
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


@needs_tshark
def test_opcua_port_decodes_hello_and_acknowledge(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = _writer(tmp_path, signer, clock, "opcua")
    rec = PcapRecorder(writer, client=VENDOR, server=("10.20.0.5", 4840), clock=clock)
    rec.client_data(_opcua_hello("opc.tcp://10.20.0.5:4840"))
    ack = b"ACKF" + struct.pack("<IIIIII", 28, 0, 65536, 65536, 0, 0)
    rec.server_data(ack)
    rec.close("done", closed_by="server")
    pcap = _pcap_file(tmp_path, "opcua")
    lines = tshark(
        pcap,
        "-Y",
        "opcua",
        "-T",
        "fields",
        "-e",
        "opcua.transport.type",
        "-e",
        "opcua.transport.endpoint",
    )
    assert lines == ["HEL\topc.tcp://10.20.0.5:4840", "ACK\t"]
    first_fin = tshark(pcap, "-Y", "tcp.flags.fin == 1", "-T", "fields", "-e", "ip.src")[0]
    assert first_fin == "10.20.0.5"


@needs_tshark
def test_non_ipv4_addresses_become_synthetic_and_reset_is_one_rst(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = _writer(tmp_path, signer, clock, "v6")
    rec = PcapRecorder(
        writer, client=("2001:db8::1", 50000), server=("plc.example", 502), clock=clock
    )
    rec.client_data(mbap(7, 1, bytes.fromhex("03 0000 0001")))
    rec.close("policy: window ended", reset=True)
    pcap = _pcap_file(tmp_path, "v6")
    lines = tshark(pcap, "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.flags.reset")
    assert lines[0] == f"{SYNTHETIC_CLIENT_IP}\t{SYNTHETIC_SERVER_IP}\t0"
    assert lines[-1] == f"{SYNTHETIC_CLIENT_IP}\t{SYNTHETIC_SERVER_IP}\t1"
    assert len(lines) == 5


@needs_tshark
def test_a_crashed_recording_is_a_readable_pcap_up_to_the_last_flush(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = _writer(tmp_path, signer, clock, "crash")
    rec = PcapRecorder(writer, client=VENDOR, server=PLC, clock=clock)
    rec.client_data(mbap(1, 1, MODBUS[0][0]))
    writer.flush()
    rec.server_data(mbap(1, 1, MODBUS[0][1]))  # never flushed: the broker died
    result = verify_recording(tmp_path / "rec" / "crash", signer.public_key)
    assert result.status == VerifyStatus.INCOMPLETE
    pcap = _pcap_file(tmp_path, "crash")
    assert tshark(pcap, "-Y", "modbus", "-T", "fields", "-e", "mbtcp.trans_id") == ["1"]


def test_flipping_a_byte_breaks_verification_naming_the_chunk(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    path = _record_modbus(tmp_path, signer, clock)
    chunk = path / "chunk-000003.pcap"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01  # a byte of Modbus payload
    chunk.write_bytes(bytes(data))
    result = verify_recording(path, signer.public_key)
    assert result.status == VerifyStatus.BROKEN
    assert result.summary() == "BROKEN: chunk 3 (chunk-000003.pcap): sha256 mismatch"
    assert (result.broken_seq, result.broken_file) == (3, "chunk-000003.pcap")


def test_ops_log_lines_are_canonical_json_in_order_and_verify(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = _writer(tmp_path, signer, clock, "ops", kind="ops_jsonl")
    log = OpsLogRecorder(writer, clock)
    ops = [
        {"unit": 1, "function": 3, "address": [0, 2], "allowed": True, "reason": "read"},
        {
            "unit": 1,
            "function": 16,
            "address": [10, 11],
            "values": [4660, 22136],
            "allowed": False,
            "reason": "write to 40011 refused \u2028 by policy «ro»",
        },
        {"time": "2025-03-01T07:59:59.000000Z", "unit": 2, "function": 6, "allowed": True},
    ]
    for n, op in enumerate(ops):
        clock.advance(0.5)
        log.record(op)
        if n == 0:
            writer.flush()
    with pytest.raises(ValidationError, match="not JSON"):
        log.record({"value": float("nan")})
    with pytest.raises(ValidationError, match="not JSON"):
        log.record({"value": object()})
    log.close("done")

    path = tmp_path / "rec" / "ops"
    result = verify_recording(path, signer.public_key)
    assert (result.status, result.kind, result.chunks) == ("ok", "ops_jsonl", 2)
    assert (path / "chunk-000001.jsonl").exists()
    raw = assemble(path)
    lines = raw.decode("utf-8").splitlines()  # splitlines also splits at U+2028: escaped
    assert len(lines) == 3 and raw.endswith(b"\n")
    parsed = [json.loads(line) for line in lines]
    assert [p["function"] for p in parsed] == [3, 16, 6]
    assert parsed[0]["time"] == "2025-03-01T08:00:00.500000Z"
    assert parsed[1]["time"] == "2025-03-01T08:00:01.000000Z"
    assert parsed[2]["time"] == "2025-03-01T07:59:59.000000Z"
    assert parsed[1]["reason"] == "write to 40011 refused \u2028 by policy «ro»"
    assert "«ro»".encode() in raw  # UTF-8, not \u escapes
    for line, obj in zip(lines, parsed, strict=True):
        assert list(obj) == sorted(obj) and line == json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).replace("\u2028", "\\u2028")

    (path / "chunk-000002.jsonl").write_bytes(raw[-40:])
    broken = verify_recording(path, signer.public_key)
    assert (broken.status, broken.broken_file) == ("broken", "chunk-000002.jsonl")


def _reference_checksum(data: bytes) -> int:
    """RFC 1071 the slow way: add big-endian 16-bit words with end-around carry."""
    data += b"\0" * (len(data) % 2)
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_internet_checksum_matches_rfc_1071() -> None:
    assert _checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D  # RFC 1071, 3
    rng = random.Random(1071)
    samples = [b"", b"\0\0", b"\xff\xff", b"\xff\xff" * 5, b"\x12", bytes(65495)]
    samples += [rng.randbytes(rng.choice([1, 2, 3, 20, 61, 1500, 65495])) for _ in range(200)]
    for data in samples:
        assert _checksum(data) == _reference_checksum(data), data[:16]


def test_bad_arguments_are_refused(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = _writer(tmp_path, signer, clock, "bad")
    for kwargs in (
        {"client": VENDOR, "server": ("127.0.0.1", 0)},
        {"client": VENDOR, "server": PLC, "snaplen": 100},
        {"client": ("127.0.0.1", 502), "server": PLC},
    ):
        with pytest.raises(ValidationError):
            PcapRecorder(writer, clock=clock, **kwargs)
    assert writer.pending == 0
    rec = PcapRecorder(writer, client=VENDOR, server=PLC, clock=clock)
    rec.finish()
    with pytest.raises(ValidationError):
        rec.client_data(b"late")
    with pytest.raises(ValidationError):
        rec.finish(closed_by="broker")


@needs_tshark
async def test_flush_timer_and_event_loop_writes(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = RecordingWriter(
        LocalStore(tmp_path / "rec"),
        "live",
        kind="pcap",
        signer=signer,
        clock=clock,
        flush_interval_s=0.05,
    )
    ops_writer = _writer(tmp_path, signer, clock, "live-ops", kind="ops_jsonl")
    rec = PcapRecorder(writer, client=VENDOR, server=PLC, clock=clock)
    log = OpsLogRecorder(ops_writer, clock)
    async with FlushTimer(writer), FlushTimer(ops_writer, interval_s=0.05):
        for n in range(1, 4):
            pcap_chunks, ops_chunks = writer.chunks, ops_writer.chunks
            rec.client_data(mbap(n, 1, MODBUS[0][0]))
            log.record({"unit": 1, "function": 3, "n": n})

            def both_flushed(pcap: int = pcap_chunks, ops: int = ops_chunks) -> bool:
                return writer.chunks > pcap and ops_writer.chunks > ops

            # The timers flush both while the request is outstanding.
            await async_wait_until(both_flushed, "both timers' flushes")
            rec.server_data(mbap(n, 1, MODBUS[0][1]))
        assert writer.chunks >= 3 and ops_writer.chunks >= 3
    await asyncio.to_thread(rec.close, "done")
    await asyncio.to_thread(log.close, "done")
    for rid in ("live", "live-ops"):
        assert verify_recording(tmp_path / "rec" / rid, signer.public_key).status == "ok"
    pcap = _pcap_file(tmp_path, "live")
    assert tshark(pcap, "-Y", "mbtcp", "-T", "fields", "-e", "mbtcp.trans_id") == [
        "1",
        "1",
        "2",
        "2",
        "3",
        "3",
    ]
