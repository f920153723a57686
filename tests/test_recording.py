"""Recordings: hash chain, signatures, flush timer, tamper detection, asciicast encoding, keys."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import os
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from cryptography.hazmat.primitives import serialization

from broker.keys.recording import load_recording_signer, public_key_path
from broker.runtime.errors import BrokerError
from sessions.asciicast import BINARY_EVENT, BINARY_MARKER, AsciicastRecorder, output_bytes
from sessions.errors import SessionsError
from sessions.files import temp_name
from sessions.recording import (
    CHAIN_FILE,
    MANIFEST_FILE,
    Ed25519Signer,
    FlushTimer,
    LocalStore,
    RecordingError,
    RecordingSink,
    RecordingWriter,
    VerifyStatus,
    assemble,
    canonical_json,
    fingerprint,
    genesis,
    link,
    load_public_key,
    parse_public_key,
    verify_recording,
)
from sessions.testing import ManualClock
from tests.harness.wait import async_wait_until

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def _record(
    root: Path,
    signer: Ed25519Signer,
    clock: ManualClock,
    chunks: list[bytes],
    *,
    close: bool = True,
    rid: str = "rec-1",
) -> Path:
    writer = RecordingWriter(
        LocalStore(root),
        rid,
        kind="asciicast",
        signer=signer,
        clock=clock,
        meta={"session_id": "s-1", "asset": "plc-7"},
    )
    for data in chunks:
        writer.write(data)
        writer.flush()
        clock.advance(1)
    if close:
        writer.close("client_closed")
    return root / rid


FIVE = [f"chunk {i} ".encode() * 3 for i in range(1, 6)]  # same size each


def _entries(rec: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (rec / CHAIN_FILE).read_text().splitlines()]


# ---------------------------------------------------------------- writing and the chain


def test_chunks_chain_signatures_and_manifest(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    rec = _record(tmp_path / "store", signer, clock, FIVE)
    assert sorted(os.listdir(rec)) == [
        CHAIN_FILE,
        *[f"chunk-{i:06d}.cast" for i in range(1, 6)],
        MANIFEST_FILE,
    ]
    assert stat.S_IMODE(rec.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in rec.iterdir()} == {0o600}

    prev = genesis("rec-1")
    for seq, entry in enumerate(_entries(rec), 1):
        data = (rec / entry["file"]).read_bytes()
        assert data == FIVE[seq - 1]
        assert entry["seq"] == seq and entry["size"] == len(data) and entry["prev"] == prev
        assert entry["chain"] == link(prev, entry["sha256"], seq)
        unsigned = {k: v for k, v in entry.items() if k != "sig"}
        signer.public_key.verify(
            base64.b64decode(entry["sig"]),
            b"conduit-recording-chain-v1\n" + canonical_json(unsigned),
        )
        prev = entry["chain"]
    assert _entries(rec)[0]["at"] == "2026-03-04T05:06:07.000000Z"

    manifest = json.loads((rec / MANIFEST_FILE).read_text())
    assert manifest["final_chain"] == prev
    assert manifest["chunks"] == 5 and manifest["size"] == sum(map(len, FIVE))
    assert manifest["meta"] == {"session_id": "s-1", "asset": "plc-7"}
    assert manifest["end_reason"] == "client_closed"
    assert manifest["started_at"] == "2026-03-04T05:06:07.000000Z"
    assert manifest["ended_at"] == "2026-03-04T05:06:12.000000Z"
    assert manifest["signer"] == signer.fingerprint

    result = verify_recording(rec, signer.public_key)
    assert result.status == VerifyStatus.OK, result.reason
    assert result.summary() == (
        f"OK: 5 chunks, {sum(map(len, FIVE))} bytes, kind asciicast, signed by {signer.fingerprint}"
    )
    assert assemble(rec) == b"".join(FIVE)


def test_empty_flush_writes_nothing_and_an_empty_recording_verifies(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = RecordingWriter(LocalStore(tmp_path), "empty", kind="pcap", signer=signer, clock=clock)
    assert writer.flush() is None
    writer.write(b"")
    assert writer.pending == 0
    writer.close("idle")
    result = verify_recording(tmp_path / "empty", signer.public_key)
    assert (result.status, result.chunks, result.kind) == (VerifyStatus.OK, 0, "pcap")
    with pytest.raises(RecordingError) as closed:
        writer.write(b"late")
    assert closed.value.code == "recording_closed"


def test_recording_ids_are_single_safe_path_components(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    store = LocalStore(tmp_path)
    for bad in ("../x", "a/b", "", ".hidden", "x" * 129):
        with pytest.raises(RecordingError) as err:
            RecordingWriter(store, bad, kind="asciicast", signer=signer, clock=clock)
        assert err.value.code == "invalid_recording_id"
    RecordingWriter(store, "r1", kind="asciicast", signer=signer, clock=clock)
    with pytest.raises(RecordingError) as dup:
        RecordingWriter(store, "r1", kind="asciicast", signer=signer, clock=clock)
    assert dup.value.code == "recording_exists"
    assert store.list_files("r1") == [CHAIN_FILE]
    with store.open("r1", CHAIN_FILE) as fh:
        assert fh.read() == b""


def test_a_write_is_never_split_across_chunks(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = RecordingWriter(
        LocalStore(tmp_path), "r", kind="ops_jsonl", signer=signer, clock=clock, max_chunk_bytes=8
    )
    writer.write(b'{"op":"FC16 write 40001-40010"}\n')
    writer.write(b'{"op":"FC3 read"}\n')
    writer.flush()
    (entry,) = _entries(tmp_path / "r")
    assert entry["file"] == "chunk-000001.jsonl"
    assert (tmp_path / "r" / entry["file"]).read_bytes().count(b"\n") == 2


# ---------------------------------------------------------------- tampering


@pytest.fixture
def rec(tmp_path: Path, signer: Ed25519Signer, clock: ManualClock) -> Path:
    return _record(tmp_path / "store", signer, clock, FIVE)


def _verify(rec: Path, signer: Ed25519Signer) -> Any:
    return verify_recording(rec, signer.public_key)


def test_one_flipped_byte_in_a_middle_chunk_names_that_chunk(
    rec: Path, signer: Ed25519Signer
) -> None:
    path = rec / "chunk-000003.cast"
    data = bytearray(path.read_bytes())
    data[4] ^= 0x01
    path.write_bytes(bytes(data))
    result = _verify(rec, signer)
    assert result.status == VerifyStatus.BROKEN
    assert result.summary() == "BROKEN: chunk 3 (chunk-000003.cast): sha256 mismatch"
    assert (result.broken_seq, result.broken_file, result.chunks) == (3, "chunk-000003.cast", 2)


def test_deleted_chunk(rec: Path, signer: Ed25519Signer) -> None:
    (rec / "chunk-000004.cast").unlink()
    assert _verify(rec, signer).reason == "chunk 4 (chunk-000004.cast): chunk file missing"


def test_reordered_chunk_files(rec: Path, signer: Ed25519Signer) -> None:
    a, b = rec / "chunk-000002.cast", rec / "chunk-000003.cast"
    tmp = rec / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    assert _verify(rec, signer).reason == "chunk 2 (chunk-000002.cast): sha256 mismatch"


def test_reordered_chain_entries(rec: Path, signer: Ed25519Signer) -> None:
    lines = (rec / CHAIN_FILE).read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    (rec / CHAIN_FILE).write_bytes(b"".join(lines))
    result = _verify(rec, signer)
    assert result.reason.startswith("chunk 2 (chunk-000003.cast): chain entry out of order")


def test_changed_and_resigned_entry_is_detected_without_the_key(
    rec: Path, signer: Ed25519Signer
) -> None:
    """An attacker who rewrites chunk 2 and recomputes its hashes cannot re-sign the entry."""
    new = b"rm -rf / was never typed\n"
    (rec / "chunk-000002.cast").write_bytes(new)
    entries = _entries(rec)
    e = entries[1]
    e["size"], e["sha256"] = len(new), hashlib.sha256(new).hexdigest()
    e["chain"] = link(e["prev"], e["sha256"], 2)
    (rec / CHAIN_FILE).write_bytes(b"".join(canonical_json(x) + b"\n" for x in entries))
    assert (
        _verify(rec, signer).reason == "chunk 2 (chunk-000002.cast): chain entry signature invalid"
    )


def test_extra_and_unexpected_files(rec: Path, signer: Ed25519Signer) -> None:
    (rec / "chunk-000006.cast").write_bytes(b"injected")
    assert _verify(rec, signer).reason == "chunk 6 (chunk-000006.cast): not in the chain"
    (rec / "chunk-000006.cast").unlink()
    (rec / "notes.txt").write_bytes(b"x")
    assert _verify(rec, signer).reason == "unexpected file notes.txt"


def test_truncated_chain(rec: Path, signer: Ed25519Signer) -> None:
    raw = (rec / CHAIN_FILE).read_bytes()
    (rec / CHAIN_FILE).write_bytes(raw[:-10])
    assert _verify(rec, signer).reason == "chain.jsonl ends with a truncated line"
    lines = raw.splitlines(keepends=True)
    (rec / CHAIN_FILE).write_bytes(b"".join(lines[:-1]))
    assert _verify(rec, signer).reason == "chunk 5 (chunk-000005.cast): not in the chain"
    (rec / "chunk-000005.cast").unlink()
    result = _verify(rec, signer)
    assert result.reason == (
        "chunk 5 (chunk-000005.cast): listed in the manifest but missing from chain.jsonl"
    )
    (rec / CHAIN_FILE).unlink()
    assert _verify(rec, signer).reason == "chain.jsonl is missing"


def test_wrong_public_key(rec: Path) -> None:
    other = Ed25519Signer.generate()
    result = verify_recording(rec, other.public_key)
    assert result.status == VerifyStatus.BROKEN
    assert result.reason.startswith("chunk 1 (chunk-000001.cast): chain entry signed by SHA256:")
    assert f"not by the given public key {other.fingerprint}" in result.reason


def test_tampered_manifest(rec: Path, signer: Ed25519Signer) -> None:
    manifest = json.loads((rec / MANIFEST_FILE).read_text())
    manifest["end_reason"] = "grant_expired"
    (rec / MANIFEST_FILE).write_bytes(canonical_json(manifest))
    assert _verify(rec, signer).reason == "manifest.json signature invalid"


def test_chunks_from_another_recording_do_not_fit(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    a = _record(tmp_path, signer, clock, FIVE, rid="a")
    b = _record(tmp_path, signer, clock, FIVE, rid="b")
    (b / MANIFEST_FILE).write_bytes((a / MANIFEST_FILE).read_bytes())
    assert _verify(b, signer).reason == "manifest.json belongs to another recording"


def test_missing_manifest_is_incomplete_up_to_the_last_flush(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    rec = _record(tmp_path, signer, clock, FIVE[:3], close=False)
    result = _verify(rec, signer)
    assert result.status == VerifyStatus.INCOMPLETE and result.ok
    assert (result.chunks, result.last_at) == (3, "2026-03-04T05:06:09.000000Z")
    assert result.summary().startswith(
        "INCOMPLETE: verified 3 chunks, 72 bytes up to 2026-03-04T05:06:09.000000Z"
    )
    assert "no manifest (session did not end cleanly)" in result.summary()

    # a crash between writing chunk 4 and appending its (partial) chain line is tolerated
    (rec / "chunk-000004.cast").write_bytes(b"half")
    with (rec / CHAIN_FILE).open("ab") as fh:
        fh.write(b'{"v":1,"recording_id":"rec-1"')
    result = _verify(rec, signer)
    assert (result.status, result.chunks) == (VerifyStatus.INCOMPLETE, 3)
    assert len(result.notes) == 2
    assert assemble(rec) == b"".join(FIVE[:3])
    # ... but not two unchained chunks
    (rec / "chunk-000005.cast").write_bytes(b"more")
    assert _verify(rec, signer).reason == "chunk 5 (chunk-000005.cast): not in the chain"


def test_verify_of_a_missing_directory_raises(tmp_path: Path, signer: Ed25519Signer) -> None:
    with pytest.raises(RecordingError) as err:
        verify_recording(tmp_path / "nope", signer.public_key)
    assert err.value.code == "not_found"


def test_temporary_files_of_atomic_writes_are_noted_never_read(
    rec: Path, signer: Ed25519Signer, tmp_path: Path
) -> None:
    """A writer's temporary file (or one a crash left) is not part of the recording."""
    (rec / temp_name(MANIFEST_FILE)).write_bytes(b'{"half": ')
    (rec / temp_name("chunk-000006.cast")).write_bytes(b"half a chunk")
    result = _verify(rec, signer)
    assert (result.status, result.chunks) == (VerifyStatus.OK, 5)
    assert len(result.notes) == 2 and all("temporary file" in n for n in result.notes)
    assert LocalStore(rec.parent).list_files(rec.name) == sorted(
        [CHAIN_FILE, MANIFEST_FILE, *(f"chunk-{i:06d}.cast" for i in range(1, 6))]
    )
    empty = tmp_path / "just-created"  # LocalStore.create: directory first, then chain.jsonl
    empty.mkdir()
    assert _verify(empty, signer).status == VerifyStatus.INCOMPLETE


def test_verifying_a_live_recording_never_reports_it_broken(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    """``conduit verify`` (or the recordings page) may run while a session records: it sees
    INCOMPLETE, then OK, never a half-written chunk or manifest reported as BROKEN."""
    store = tmp_path / "store"
    big_meta = {"note": "m" * (4 << 20)}  # a manifest large enough to be caught mid-write
    rounds = 12
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def verify_the_newest_in_a_loop() -> None:
        while not done.is_set():
            recordings = sorted(store.iterdir()) if store.exists() else []
            if recordings:
                result = verify_recording(recordings[-1], signer.public_key)
                seen.append((result.status, result.reason))

    verifier = threading.Thread(target=verify_the_newest_in_a_loop)
    verifier.start()
    try:
        for n in range(rounds):
            writer = RecordingWriter(
                LocalStore(store), f"live-{n:02d}", kind="pcap", signer=signer, clock=clock,
                meta=big_meta,
            )  # fmt: skip
            for i in range(4):
                writer.write(bytes([i]) * (256 << 10))
                writer.flush()
                clock.advance(1)
            writer.close("client_closed")
    finally:
        done.set()
        verifier.join(60)
    assert not verifier.is_alive()
    broken = [reason for status, reason in seen if status == VerifyStatus.BROKEN]
    assert broken == []
    assert {status for status, _ in seen} >= {VerifyStatus.INCOMPLETE, VerifyStatus.OK}
    for n in range(rounds):
        result = verify_recording(store / f"live-{n:02d}", signer.public_key)
        assert result.status == VerifyStatus.OK


# ---------------------------------------------------------------- disk errors


class _FullDisk:
    """A store whose sink fails with ENOSPC after ``ok_puts`` successful chunk files."""

    def __init__(self, inner: LocalStore, ok_puts: int) -> None:
        self.inner, self.ok_puts = inner, ok_puts

    def create(self, recording_id: str) -> RecordingSink:
        sink = self.inner.create(recording_id)
        outer = self

        class Sink:
            def put(self, name: str, data: bytes) -> None:
                if outer.ok_puts <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                outer.ok_puts -= 1
                sink.put(name, data)

            def append(self, name: str, data: bytes) -> None:
                sink.append(name, data)

        return Sink()

    def open(self, recording_id: str, name: str) -> BinaryIO:
        return self.inner.open(recording_id, name)

    def list_files(self, recording_id: str) -> list[str]:
        return self.inner.list_files(recording_id)


def test_disk_error_raises_recording_error_and_keeps_what_was_flushed(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = RecordingWriter(
        _FullDisk(LocalStore(tmp_path), ok_puts=2),
        "r",
        kind="asciicast",
        signer=signer,
        clock=clock,
    )
    for i in range(2):
        writer.write(b"ok %d\n" % i)
        writer.flush()
    writer.write(b"lost\n")
    with pytest.raises(RecordingError) as err:
        writer.flush()
    assert isinstance(err.value, SessionsError)
    assert err.value.code == "recording_failed"
    assert "writing chunk-000003.cast of recording r" in err.value.message
    assert "No space left" in err.value.message
    assert writer.failed is err.value
    for call in (lambda: writer.write(b"x"), writer.flush, lambda: writer.close("end")):
        with pytest.raises(RecordingError, match="failed earlier"):
            call()
    result = verify_recording(tmp_path / "r", signer.public_key)
    assert (result.status, result.chunks) == (VerifyStatus.INCOMPLETE, 2)


def test_real_disk_error(tmp_path: Path, signer: Ed25519Signer, clock: ManualClock) -> None:
    """A real I/O error: the store's root is a regular file."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RecordingError) as err:
        RecordingWriter(
            LocalStore(tmp_path / "file"), "r", kind="asciicast", signer=signer, clock=clock
        )
    assert err.value.code == "recording_failed"


# ---------------------------------------------------------------- flush timer (real loop)


async def test_flush_timer_flushes_one_interval_after_the_oldest_write(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    """Not before the interval (a lower bound holds on any machine); how soon after it is
    measured by bench/latency_bounds.py, not asserted here."""
    interval = 0.3
    writer = RecordingWriter(
        LocalStore(tmp_path),
        "r",
        kind="asciicast",
        signer=signer,
        clock=clock,
        flush_interval_s=interval,
    )
    async with FlushTimer(writer) as timer:
        written = time.monotonic()
        writer.write(b"hello\n")
        await async_wait_until(lambda: writer.chunks == 1, "the first flush")
        assert time.monotonic() - written >= interval * 0.9
        writer.write(b"second\n")
        await async_wait_until(lambda: writer.chunks == 2, "the second flush")
        assert writer.pending == 0
        await asyncio.sleep(5 * interval)  # idle intervals pass (an absence: nothing to wait on)
        assert writer.chunks == 2  # nothing to flush, no empty chunks
    assert timer.error is None
    await timer.aclose()  # idempotent
    await asyncio.to_thread(writer.close, "done")
    assert verify_recording(tmp_path / "r", signer.public_key).status == VerifyStatus.OK


async def test_flush_timer_flushes_a_full_buffer_at_once(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = RecordingWriter(
        LocalStore(tmp_path),
        "r",
        kind="pcap",
        signer=signer,
        clock=clock,
        flush_interval_s=3600,  # never due here: only the full buffer can trigger the flush
        max_chunk_bytes=1000,
    )
    async with FlushTimer(writer):
        writer.write(b"x" * 1500)
        await async_wait_until(lambda: writer.chunks == 1, "the full buffer's flush")


async def test_flush_timer_reports_disk_errors(
    tmp_path: Path, signer: Ed25519Signer, clock: ManualClock
) -> None:
    writer = RecordingWriter(
        _FullDisk(LocalStore(tmp_path), ok_puts=0),
        "r",
        kind="asciicast",
        signer=signer,
        clock=clock,
        flush_interval_s=0.1,
    )
    seen: list[RecordingError] = []
    timer = FlushTimer(writer, on_error=seen.append)
    timer.start()
    writer.write(b"data")
    await async_wait_until(lambda: seen, "the disk error to be reported")
    assert seen[0].code == "recording_failed" and timer.error is seen[0]
    await timer.aclose()
    with pytest.raises(RecordingError):
        writer.write(b"more")


# ---------------------------------------------------------------- keys


def test_signer_files_and_public_key_formats(tmp_path: Path, signer: Ed25519Signer) -> None:
    openssh = tmp_path / "k_openssh"
    openssh.write_bytes(signer.private_key_openssh())
    pem = tmp_path / "k_pem"
    pem.write_bytes(
        signer._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for path in (openssh, pem):
        assert Ed25519Signer.from_file(path).fingerprint == signer.fingerprint

    pub = tmp_path / "k.pub"
    pub.write_text(signer.public_key_openssh() + " some comment\n")
    assert signer.public_key_openssh().startswith("ssh-ed25519 AAAA")
    assert fingerprint(load_public_key(pub)) == signer.fingerprint
    keygen = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    )
    assert keygen.stdout.split()[1] == signer.fingerprint
    pem_pub = signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert fingerprint(parse_public_key(pem_pub)) == signer.fingerprint
    for bad in (b"", b"ssh-rsa AAAAB3NzaC1yc2E", signer.private_key_openssh()):
        with pytest.raises(RecordingError) as err:
            parse_public_key(bad)
        assert err.value.code == "bad_public_key"
    with pytest.raises(RecordingError):
        Ed25519Signer.from_file(pub)


def test_broker_recording_key(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    signer = load_recording_signer(key_dir)
    key = key_dir / "recording_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    pub = public_key_path(key_dir)
    assert pub.read_text().startswith(signer.public_key_openssh())
    assert load_recording_signer(key_dir).fingerprint == signer.fingerprint
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert sorted(p.name for p in key_dir.iterdir()) == [key.name, pub.name]  # no temp files

    pub.write_text(Ed25519Signer.generate().public_key_openssh())  # a stale .pub is replaced
    load_recording_signer(key_dir)
    assert fingerprint(load_public_key(pub)) == signer.fingerprint

    key.chmod(0o640)
    with pytest.raises(BrokerError) as err:
        load_recording_signer(key_dir)
    assert err.value.code == "insecure_key"
    key.chmod(0o600)
    key.write_bytes(b"garbage")
    with pytest.raises(BrokerError) as bad:
        load_recording_signer(key_dir)
    assert bad.value.code == "bad_key"


# ---------------------------------------------------------------- asciicast


def _cast(
    tmp_path: Path, clock: ManualClock, **kw: Any
) -> tuple[RecordingWriter, AsciicastRecorder]:
    writer = RecordingWriter(
        LocalStore(tmp_path),
        "cast",
        kind="asciicast",
        signer=Ed25519Signer.generate(),
        clock=clock,
    )
    kw.setdefault("env", {"TERM": "xterm-256color", "SHELL": "/bin/bash", "API_TOKEN": "s3cret"})
    return writer, AsciicastRecorder(writer, 120, 40, clock=clock, title="plc-7", **kw)


def _lines(tmp_path: Path, writer: RecordingWriter) -> list[Any]:
    if not writer.closed:
        writer.close("end")
    return [json.loads(line) for line in assemble(tmp_path / "cast").decode().splitlines()]


def test_asciicast_header_and_events(tmp_path: Path, clock: ManualClock) -> None:
    writer, rec = _cast(tmp_path, clock)
    clock.advance(0.5)
    rec.output(b"$ ls\r\n")
    rec.input(b"secret-password\r")  # input is off by default
    clock.advance(1.25)
    rec.resize(100, 30)
    rec.output(b'"quoted" \\ \x1b[31mred\x1b[0m\n')
    lines = _lines(tmp_path, writer)
    assert lines[0] == {
        "version": 2,
        "width": 120,
        "height": 40,
        "timestamp": int(T0.timestamp()),
        "title": "plc-7",
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
    }
    assert lines[1:] == [
        [0.5, "o", "$ ls\r\n"],
        [1.75, "r", "100x30"],
        [1.75, "o", '"quoted" \\ \x1b[31mred\x1b[0m\n'],
    ]
    assert b"secret-password" not in assemble(tmp_path / "cast")


def test_asciicast_input_when_policy_asks(tmp_path: Path, clock: ManualClock) -> None:
    writer, rec = _cast(tmp_path, clock, record_input=True)
    rec.input(b"ls\r")
    assert _lines(tmp_path, writer)[1:] == [[0.0, "i", "ls\r"]]


def test_asciicast_split_utf8_and_invalid_bytes(tmp_path: Path, clock: ManualClock) -> None:
    writer, rec = _cast(tmp_path, clock)
    euro = "€".encode()  # 3 bytes
    rec.output(b"price " + euro[:1])
    clock.advance(0.1)
    rec.output(euro[1:2])  # still incomplete: no event
    clock.advance(0.1)
    rec.output(euro[2:] + b" ok")
    rec.output(b"bad \xff\xfe bytes")
    rec.output(b"tail " + "ü".encode()[:1])
    rec.close("client_closed")  # finish() emits what the decoder still holds
    assert _lines(tmp_path, writer)[1:] == [
        [0.0, "o", "price "],
        [0.2, "o", "€ ok"],
        [0.2, "o", "bad \ufffd\ufffd bytes"],
        [0.2, "o", "tail "],
        [0.2, "o", "\ufffd"],
    ]


def test_asciicast_time_never_goes_back(tmp_path: Path, clock: ManualClock) -> None:
    writer, rec = _cast(tmp_path, clock)
    clock.advance(2)
    rec.output(b"a")
    clock.set(T0)
    rec.output(b"b")
    assert [e[0] for e in _lines(tmp_path, writer)[1:]] == [2.0, 2.0]


# ---------------------------------------------------------------- lossless exec output


def _exact(tmp_path: Path, writer: RecordingWriter) -> tuple[bytes, list[Any]]:
    if not writer.closed:
        writer.close("end")
    raw = assemble(tmp_path / "cast")
    return output_bytes(raw.splitlines()), [json.loads(line) for line in raw.splitlines()][1:]


def test_lossless_output_keeps_every_byte_and_the_text_around_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    writer, rec = _cast(tmp_path, clock, lossless_binary=True)
    reads = [
        b"build ok\n",
        "caf\u00e9".encode()[:-1],  # a character split across reads
        "caf\u00e9".encode()[-1:] + b"\n",
        b"\x7fELF\x02\x01\x00\x00" + bytes(range(256)) + b"\xff\xfe\xc3",  # binary
        b"\n-- 3 files --\n",  # text after binary, in its own read
        b"tail\x00\x01and text\n",  # text, binary, text in one read
        b"\xe2\x82",  # an unfinished character at the very end
    ]
    for data in reads:
        clock.advance(0.01)
        rec.output(data)
    rec.finish()
    exact, events = _exact(tmp_path, writer)
    assert exact == b"".join(reads)
    codes = [e[1] for e in events]
    assert codes.count("m") == 1 and events[codes.index("m")][2] == BINARY_MARKER
    assert codes.index("m") < codes.index(BINARY_EVENT)
    text = "".join(e[2] for e in events if e[1] == "o")
    assert "build ok\ncaf\u00e9\n" in text and "-- 3 files --" in text and "and text\n" in text
    assert "\ufffd" not in text and "\x00" not in text
    for e in events:
        if e[1] == BINARY_EVENT:
            base64.b64decode(e[2], validate=True)
    assert [e[0] for e in events] == sorted(e[0] for e in events)


def test_lossless_coalesces_binary_and_costs_base64_not_json_escapes(
    tmp_path: Path, clock: ManualClock
) -> None:
    writer, rec = _cast(tmp_path, clock, lossless_binary=True, coalesce_s=0.02)
    for _ in range(8):
        rec.output(bytes(32768))  # NULs: 6 bytes each as JSON escapes, 4/3 as base64
    rec.flush_pending()
    writer.flush()
    size = writer.size
    exact, events = _exact(tmp_path, writer)
    assert exact == bytes(8 * 32768)
    assert [e[1] for e in events] == ["m", BINARY_EVENT]  # one coalesced event
    assert size < 1.4 * 8 * 32768


def test_pty_output_is_unchanged_by_the_lossless_mode(tmp_path: Path, clock: ManualClock) -> None:
    writer, rec = _cast(tmp_path, clock)  # a PTY recorder: replacement characters, no "b"
    rec.output(b"ok\xff\x00\n")
    rec.finish()
    _, events = _exact(tmp_path, writer)
    assert [e[1] for e in events] == ["o"] and events[0][2] == "ok\ufffd\x00\n"


def test_output_bytes_rejects_bad_lines() -> None:
    header = b'{"version": 2, "width": 80, "height": 24}'
    with pytest.raises(ValueError, match="bad base64"):
        output_bytes([header, b'[0.1, "b", "not base64!"]'])
    with pytest.raises(ValueError, match="not an asciicast event"):
        output_bytes([header, b'{"o": 1}'])
