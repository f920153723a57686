"""File-transfer audit (sessions.transfer_audit) on real OpenSSH byte streams and crafted ones.

SSH is encrypted, so the real streams are captured below the SSH layer: OpenSSH's ``sftp -D``
talks SFTP straight to a local server program, and ``scp -S`` runs a program instead of ssh.
Both are pointed at a small tee (``TEE`` below) that runs the real server side
(``/usr/lib/openssh/sftp-server``, ``scp -t``/``scp -f``) and logs both directions in causal
order (each chunk is logged before it is forwarded). The logs are then replayed into the
auditors whole, split into 1-byte or random chunks, and coalesced.
"""

from __future__ import annotations

import hashlib
import logging
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions import transfer_audit as ta
from sessions.transfer_audit import (
    ScpAuditor,
    SftpAuditor,
    TransferAuditor,
    TransferEvent,
    auditor_for,
)
from sessions.transfer_audit import base as transfer_base
from tests.harness.components import SFTP_SERVER, needs

SIZES = {"empty": 0, "one": 1, "hundred_k": 100 * 1024, "five_m": 5 * 1024 * 1024}

TEE = r"""
import os, struct, subprocess, sys, threading

log_path, mode, *rest = sys.argv[1:]
if mode == "ssh":  # run by scp -S as: PROG [ssh options] -- host command
    command = rest[-1]
    if "-s" in rest[: rest.index("--")]:
        header, argv = b"s" + command.encode(), ["SFTP_SERVER"]
    else:
        header, argv = b"x" + command.encode(), ["/bin/sh", "-c", command]
else:
    header, argv = b"ssftp", rest
log = open(log_path, "ab", buffering=0)
lock = threading.Lock()


def record(tag, data):
    with lock:
        log.write(tag + struct.pack(">I", len(data)) + data)


record(b"H", header)
proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)


def pump(src, dst, tag):
    while data := os.read(src, 65536):
        record(tag, data)  # before forwarding: a reply is always logged after its request
        view = memoryview(data)
        while view:
            view = view[os.write(dst.fileno(), view):]
    dst.close()


up = threading.Thread(target=pump, args=(0, proc.stdin, b"C"), daemon=True)
down = threading.Thread(target=pump, args=(proc.stdout.fileno(), sys.stdout, b"S"), daemon=True)
up.start()
down.start()
down.join()
sys.exit(proc.wait())
""".replace('"SFTP_SERVER"', repr(SFTP_SERVER))


needs_openssh = needs("openssh-tools")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- capture and replay ---------------------------------------------------------------------


class Capture:
    """A tee'd OpenSSH run: where its log goes and how to start sftp/scp through it."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.tee = tmp_path / "tee.py"
        self.tee.write_text(TEE)
        self.runs = 0

    def _log(self) -> Path:
        self.runs += 1
        return self.dir / f"capture-{self.runs}.log"

    def sftp(self, batch: str, *options: str) -> Path:
        log = self._log()
        (self.dir / "batch").write_text(batch)
        server = f"{sys.executable} {self.tee} {log} plain {SFTP_SERVER}"
        run(["sftp", *options, "-D", server, "-b", str(self.dir / "batch")])
        return log

    def scp(self, *args: str, check: bool = True) -> Path:
        log = self._log()
        wrapper = self.dir / f"ssh-{self.runs}"
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {self.tee} {log} ssh "$@"\n')
        wrapper.chmod(0o755)
        run(["scp", "-q", "-S", str(wrapper), *args], check=check)
        return log


def run(argv: list[str], *, check: bool = True) -> None:
    proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()}")


Records = list[tuple[bool, bytes]]  # (from client, bytes)


def read_log(path: Path) -> tuple[str | None, str | None, Records]:
    """(subsystem, command, records) of one capture."""
    raw, i, header, records = path.read_bytes(), 0, b"", []
    while i < len(raw):
        tag, length = raw[i : i + 1], struct.unpack(">I", raw[i + 1 : i + 5])[0]
        data, i = raw[i + 5 : i + 5 + length], i + 5 + length
        if tag == b"H":
            header = data
        else:
            records.append((tag == b"C", data))
    text = header[1:].decode()
    return (text, None, records) if header[:1] == b"s" else (None, text, records)


def one_byte(records: Records) -> Records:
    return [(c, data[i : i + 1]) for c, data in records for i in range(len(data))]


def random_split(records: Records, seed: int = 7) -> Records:
    rng, out = random.Random(seed), []
    for c, data in records:
        i = 0
        while i < len(data):
            n = rng.choice((1, 2, 3, 5, 13, 4096, 40000))
            out.append((c, data[i : i + n]))
            i += n
    return out


def coalesced(records: Records) -> Records:
    out: Records = []
    for c, data in records:
        if out and out[-1][0] == c:
            out[-1] = (c, out[-1][1] + data)
        else:
            out.append((c, data))
    return out


def replay(path: Path, shape: str = "as-captured") -> tuple[list[TransferEvent], TransferAuditor]:
    subsystem, command, records = read_log(path)
    events: list[TransferEvent] = []
    audit = auditor_for(subsystem, command, events.append)
    assert audit is not None, (subsystem, command)
    shaped = {
        "as-captured": lambda r: r,
        "one-byte": one_byte,
        "random": random_split,
        "coalesced": coalesced,
    }[shape](records)
    for from_client, data in shaped:
        (audit.from_client if from_client else audit.from_server)(data)
    audit.finish()
    return events, audit


def summary(events: list[TransferEvent]) -> list[tuple[str, str, int, str, bool, str | None]]:
    return [(e.direction, e.path, e.size, e.sha256, e.complete, e.note) for e in events]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    rng = random.Random(1234)
    src = tmp_path / "src"
    src.mkdir()
    out = {}
    for name, size in SIZES.items():
        out[name] = rng.randbytes(size)
        (src / name).write_bytes(out[name])
    for d in ("dst", "out"):
        (tmp_path / d).mkdir()
    return out


@pytest.fixture
def capture(tmp_path: Path) -> Capture:
    return Capture(tmp_path)


# -- real OpenSSH streams ---------------------------------------------------------------------


@needs_openssh
@pytest.mark.parametrize("shape", ["as-captured", "random", "coalesced"])
def test_sftp_put_and_get(
    tmp_path: Path, files: dict[str, bytes], capture: Capture, shape: str
) -> None:
    batch = "".join(f"put {tmp_path}/src/{n} {tmp_path}/dst/{n}\n" for n in files)
    batch += "".join(f"get {tmp_path}/src/{n} {tmp_path}/out/{n}\n" for n in files)
    log = capture.sftp(batch)
    for name, data in files.items():
        assert (tmp_path / "dst" / name).read_bytes() == data
        assert (tmp_path / "out" / name).read_bytes() == data

    events, audit = replay(log, shape)

    expected = [
        ("upload", f"{tmp_path}/dst/{n}", len(d), sha(d), True, None) for n, d in files.items()
    ] + [("download", f"{tmp_path}/src/{n}", len(d), sha(d), True, None) for n, d in files.items()]
    assert summary(events) == expected
    assert {e.protocol for e in events} == {"sftp"}
    assert all(e.hashed_size == e.size for e in events)
    assert not audit.broken


@needs_openssh
def test_sftp_one_byte_chunks(tmp_path: Path, files: dict[str, bytes], capture: Capture) -> None:
    small = {n: d for n, d in files.items() if len(d) <= 100 * 1024}
    batch = "".join(f"put {tmp_path}/src/{n} {tmp_path}/dst/{n}\n" for n in small)
    batch += "".join(f"get {tmp_path}/src/{n} {tmp_path}/out/{n}\n" for n in small)
    log = capture.sftp(batch)

    assert summary(replay(log, "one-byte")[0]) == summary(replay(log)[0])
    assert [(e.direction, e.sha256) for e in replay(log, "one-byte")[0]] == [
        ("upload", sha(d)) for d in small.values()
    ] + [("download", sha(d)) for d in small.values()]


@needs_openssh
def test_sftp_many_small_requests_pipelined(
    tmp_path: Path, files: dict[str, bytes], capture: Capture
) -> None:
    # 1 KiB requests, 256 in flight: many pipelined reads and writes per file
    log = capture.sftp(
        f"put {tmp_path}/src/hundred_k {tmp_path}/dst/x\nget {tmp_path}/dst/x {tmp_path}/out/x\n",
        "-B",
        "1024",
        "-R",
        "256",
    )
    events, _ = replay(log)
    digest = sha(files["hundred_k"])
    assert summary(events) == [
        ("upload", f"{tmp_path}/dst/x", 100 * 1024, digest, True, None),
        ("download", f"{tmp_path}/dst/x", 100 * 1024, digest, True, None),
    ]


@needs_openssh
def test_scp_default_mode_is_sftp(
    tmp_path: Path, files: dict[str, bytes], capture: Capture
) -> None:
    up = capture.scp(f"{tmp_path}/src/five_m", f"h:{tmp_path}/dst/copy")
    down = capture.scp(f"h:{tmp_path}/src/hundred_k", f"{tmp_path}/out/")

    assert read_log(up)[0] == "sftp"
    assert summary(replay(up)[0]) == [
        ("upload", f"{tmp_path}/dst/copy", 5 << 20, sha(files["five_m"]), True, None)
    ]
    assert summary(replay(down)[0]) == [
        ("download", f"{tmp_path}/src/hundred_k", 100 << 10, sha(files["hundred_k"]), True, None)
    ]


@needs_openssh
@pytest.mark.parametrize("shape", ["as-captured", "random", "coalesced"])
def test_legacy_scp_upload(
    tmp_path: Path, files: dict[str, bytes], capture: Capture, shape: str
) -> None:
    log = capture.scp("-O", *(f"{tmp_path}/src/{n}" for n in files), f"h:{tmp_path}/dst")
    for name, data in files.items():
        assert (tmp_path / "dst" / name).read_bytes() == data
    subsystem, command, _ = read_log(log)
    assert subsystem is None and command is not None and " -t " in command

    events, audit = replay(log, shape)

    assert summary(events) == [("upload", n, len(d), sha(d), True, None) for n, d in files.items()]
    assert {(e.protocol, e.remote) for e in events} == {("scp", f"{tmp_path}/dst")}
    assert not audit.broken


@needs_openssh
def test_legacy_scp_recursive_upload_one_byte_chunks(tmp_path: Path, capture: Capture) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a").write_bytes(b"alpha\n")
    (tree / "sub" / "b").write_bytes(b"")
    (tree / "sub" / "deeper" / "c").write_bytes(b"\0\n" * 1000)
    (tree / "z").write_bytes(b"zulu")
    (tmp_path / "dst").mkdir()
    log = capture.scp("-O", "-r", "-p", str(tree), f"h:{tmp_path}/dst")
    assert (tmp_path / "dst" / "tree" / "sub" / "deeper" / "c").exists()

    events, audit = replay(log, "one-byte")

    got = sorted((e.path, e.size, e.sha256, e.complete) for e in events)
    assert got == sorted(
        (str(p.relative_to(tmp_path)), p.stat().st_size, sha(p.read_bytes()), True)
        for p in tree.rglob("*")
        if p.is_file()
    )
    assert not audit.broken


@needs_openssh
def test_legacy_scp_download(tmp_path: Path, files: dict[str, bytes], capture: Capture) -> None:
    log = capture.scp("-O", f"h:{tmp_path}/src/five_m", f"{tmp_path}/out/")
    assert (tmp_path / "out" / "five_m").read_bytes() == files["five_m"]

    for shape in ("as-captured", "random", "coalesced"):
        events, audit = replay(log, shape)
        assert summary(events) == [
            ("download", "five_m", 5 << 20, sha(files["five_m"]), True, None)
        ]
        assert events[0].remote == f"{tmp_path}/src/five_m"
        assert not audit.broken


@needs_openssh
def test_legacy_scp_refusals_are_not_transfers(
    tmp_path: Path, files: dict[str, bytes], capture: Capture
) -> None:
    refused = capture.scp("-O", f"{tmp_path}/src/one", f"h:{tmp_path}/nowhere/x", check=False)
    missing = capture.scp("-O", f"h:{tmp_path}/src/nothing", f"{tmp_path}/out/", check=False)
    for log in (refused, missing):
        events, audit = replay(log, "one-byte")
        assert events == []
        assert not audit.broken


# -- crafted SFTP streams ----------------------------------------------------------------------


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def s(b: bytes) -> bytes:
    return u32(len(b)) + b


def pkt(kind: int, *fields: bytes) -> bytes:
    body = bytes([kind]) + b"".join(fields)
    return u32(len(body)) + body


def open_req(rid: int, path: bytes, pflags: int) -> bytes:
    return pkt(3, u32(rid), s(path), u32(pflags), u32(0))


def write_req(rid: int, handle: bytes, offset: int, data: bytes) -> bytes:
    return pkt(6, u32(rid), s(handle), offset.to_bytes(8, "big"), s(data))


def read_req(rid: int, handle: bytes, offset: int, length: int) -> bytes:
    return pkt(5, u32(rid), s(handle), offset.to_bytes(8, "big"), u32(length))


def status(rid: int, code: int = 0) -> bytes:
    return pkt(101, u32(rid), u32(code), s(b""), s(b""))


WRITE, READ = 0x02 | 0x08 | 0x10, 0x01


class Session:
    """A crafted SFTP conversation fed straight into an SftpAuditor."""

    def __init__(self) -> None:
        self.events: list[TransferEvent] = []
        self.audit = SftpAuditor(self.events.append)
        self.audit.from_client(pkt(1, u32(3)))
        self.audit.from_server(pkt(2, u32(3)))
        self.rid = 0

    def next_id(self) -> int:
        self.rid += 1
        return self.rid

    def open(self, path: bytes, pflags: int, handle: bytes) -> None:
        rid = self.next_id()
        self.audit.from_client(open_req(rid, path, pflags))
        self.audit.from_server(pkt(102, u32(rid), s(handle)))

    def writes(self, handle: bytes, pieces: list[tuple[int, bytes]]) -> None:
        ids = [self.next_id() for _ in pieces]
        for rid, (offset, data) in zip(ids, pieces, strict=True):
            self.audit.from_client(write_req(rid, handle, offset, data))
        for rid in ids:
            self.audit.from_server(status(rid))

    def close(self, handle: bytes, code: int = 0) -> None:
        rid = self.next_id()
        self.audit.from_client(pkt(4, u32(rid), s(handle)))
        self.audit.from_server(status(rid, code))


def chunks(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(i, data[i : i + size]) for i in range(0, len(data), size)]


def test_pipelined_out_of_order_writes_are_reordered() -> None:
    data = random.Random(3).randbytes(64 * 1024)
    pieces = chunks(data, 4096)
    random.Random(4).shuffle(pieces)
    t = Session()
    t.open(b"/plc/firmware.bin", WRITE, b"h1")
    t.writes(b"h1", pieces)
    t.close(b"h1")
    assert summary(t.events) == [("upload", "/plc/firmware.bin", len(data), sha(data), True, None)]
    assert t.audit._budget.bytes == 0


def test_out_of_order_read_replies_are_reordered() -> None:
    data = random.Random(5).randbytes(10_000)
    t = Session()
    t.open(b"recipe.csv", READ, b"h")
    reqs = [(t.next_id(), off, piece) for off, piece in chunks(data, 1000)]
    for rid, off, _ in reqs:
        t.audit.from_client(read_req(rid, b"h", off, 1000))
    eof = t.next_id()
    t.audit.from_client(read_req(eof, b"h", 10_000, 1000))
    for rid, _, piece in reversed(reqs):
        t.audit.from_server(pkt(103, u32(rid), s(piece)))
    t.audit.from_server(status(eof, 1))
    t.close(b"h")
    assert summary(t.events) == [("download", "recipe.csv", 10_000, sha(data), True, None)]


def test_short_reads_rerequested_by_the_client_are_contiguous() -> None:
    t = Session()
    t.open(b"f", READ, b"h")
    for rid, off, reply in [(10, 0, b"abc"), (11, 8, b"ijkl"), (12, 3, b"defgh")]:
        t.audit.from_client(read_req(rid, b"h", off, 8))
        if rid != 11:
            t.audit.from_server(pkt(103, u32(rid), s(reply)))
    t.audit.from_server(pkt(103, u32(11), s(b"ijkl")))
    t.close(b"h")
    assert summary(t.events) == [("download", "f", 12, sha(b"abcdefghijkl"), True, None)]


def test_gap_is_incomplete() -> None:
    t = Session()
    t.open(b"/x", WRITE, b"h")
    t.writes(b"h", [(0, b"aaaa"), (8, b"cccc")])
    t.close(b"h")
    [event] = t.events
    assert (event.complete, event.size, event.hashed_size) == (False, 8, 4)
    assert event.sha256 == sha(b"aaaa")
    assert event.note == "non-sequential writes (gap at offset 4)"


def test_resumed_upload_not_from_offset_zero_is_incomplete() -> None:
    t = Session()
    t.open(b"/x", 0x02, b"h")
    t.writes(b"h", [(100, b"tail")])
    t.close(b"h")
    assert t.events[0].complete is False
    assert t.events[0].note == "non-sequential writes (gap at offset 0)"


def test_overlapping_writes_are_incomplete() -> None:
    t = Session()
    t.open(b"/x", WRITE, b"h")
    t.writes(b"h", [(0, b"abcd"), (2, b"CDEF")])
    t.close(b"h")
    [event] = t.events
    assert (event.complete, event.note, event.size) == (False, "overlapping writes", 8)
    assert event.sha256 == sha(b"abcdEF")


def test_reorder_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer_base, "REORDER_LIMIT", 10_000)
    t = Session()
    t.open(b"/x", WRITE, b"h")
    pieces = chunks(bytes(30_000), 1000)
    t.writes(b"h", pieces[1:])  # offset 0 comes last: everything else waits
    assert t.audit._budget.bytes <= 10_000
    t.writes(b"h", pieces[:1])
    t.close(b"h")
    [event] = t.events
    assert (event.complete, event.size, event.hashed_size) == (False, 30_000, 0)
    assert event.note == "non-sequential writes beyond the reorder buffer"
    assert t.audit._budget.bytes == 0


def test_failed_write_and_failed_close_are_incomplete() -> None:
    t = Session()
    t.open(b"/a", WRITE, b"h")
    t.audit.from_client(write_req(50, b"h", 0, b"data"))
    t.audit.from_server(status(50, 4))  # SSH_FX_FAILURE
    t.close(b"h")
    t.open(b"/b", WRITE, b"h")  # handle strings are reused after close
    t.writes(b"h", [(0, b"data")])
    t.close(b"h", 4)
    assert [(e.path, e.complete, e.note) for e in t.events] == [
        ("/a", False, "a write failed"),
        ("/b", False, "close failed"),
    ]


def test_empty_upload_and_untouched_read_handle() -> None:
    t = Session()
    t.open(b"/empty", WRITE, b"w")
    t.close(b"w")
    t.open(b"/stat-only", READ, b"r")  # opened for fstat, never read: not a transfer
    t.close(b"r")
    assert summary(t.events) == [("upload", "/empty", 0, sha(b""), True, None)]


def test_failed_open_and_unknown_handles_are_ignored() -> None:
    t = Session()
    t.audit.from_client(open_req(1, b"/denied", WRITE))
    t.audit.from_server(status(1, 3))  # permission denied
    t.audit.from_client(write_req(2, b"never-opened", 0, b"x"))
    t.audit.from_server(status(2, 4))
    t.audit.finish()
    assert t.events == []
    assert not t.audit.broken


def test_finish_reports_open_handles_once() -> None:
    t = Session()
    t.open(b"/up", WRITE, b"u")
    t.writes(b"u", [(0, b"partial")])
    t.open(b"/down", READ, b"d")
    t.audit.from_client(read_req(99, b"d", 0, 100))
    t.audit.from_client(pkt(4, u32(100), s(b"u")))  # close sent, reply never came
    t.audit.finish()
    t.audit.finish()
    t.audit.from_client(write_req(101, b"u", 7, b"more"))
    assert summary(t.events) == [
        ("upload", "/up", 7, sha(b"partial"), False, "truncated at session end"),
        ("download", "/down", 0, sha(b""), False, "truncated at session end"),
    ]


@pytest.mark.parametrize(
    "garbage",
    [
        u32(0),
        u32(ta.MAX_SFTP_PACKET + 1) + b"\x06",
        u32(0xFFFFFFFF),
        pkt(6, u32(7), u32(1000), b"short"),  # string length beyond the packet
        pkt(6, u32(7)),  # WRITE without a handle
    ],
)
def test_malformed_request_breaks_the_audit_quietly(garbage: bytes) -> None:
    t = Session()
    t.open(b"/up", WRITE, b"u")
    t.writes(b"u", [(0, b"abc")])
    t.audit.from_client(garbage)
    assert t.audit.broken and t.audit.error
    t.audit.from_client(write_req(9, b"u", 3, b"def") * 3)  # ignored from now on
    t.audit.from_server(status(9))
    t.audit.finish()
    [event] = t.events
    assert (event.size, event.complete) == (3, False)
    assert event.note is not None and event.note.startswith("audit stopped: malformed SFTP")


def test_malformed_reply_and_other_versions_break_the_audit() -> None:
    events: list[TransferEvent] = []
    a = SftpAuditor(events.append)
    a.from_server(pkt(2, u32(6)))
    assert a.error == "malformed SFTP reply: unsupported SFTP version 6"
    b = SftpAuditor(events.append)
    b.from_client(open_req(1, b"/x", WRITE))
    b.from_server(pkt(102, u32(1), u32(50)))
    assert b.broken
    assert events == []


def test_random_garbage_never_raises() -> None:
    rng = random.Random(11)
    for _ in range(300):
        a = SftpAuditor(lambda e: None)
        for _ in range(5):
            a.from_client(rng.randbytes(rng.randint(0, 64)))
            a.from_server(rng.randbytes(rng.randint(0, 64)))
        a.finish()
        scp = ScpAuditor(lambda e: None, rng.choice(["upload", "download"]))
        for _ in range(5):
            scp.from_client(rng.randbytes(rng.randint(0, 64)))
            scp.from_server(rng.randbytes(rng.randint(0, 64)))
        scp.finish()


def test_event_sink_errors_do_not_reach_the_relay(caplog: pytest.LogCaptureFixture) -> None:
    def sink(event: TransferEvent) -> None:
        raise RuntimeError("database down")

    a = SftpAuditor(sink)
    a.from_client(open_req(1, b"/x", WRITE))
    a.from_server(pkt(102, u32(1), s(b"h")))
    with caplog.at_level(logging.ERROR, logger="sessions.transfer_audit"):
        a.from_client(pkt(4, u32(2), s(b"h")))
        a.from_server(status(2))
    assert "event sink failed for upload /x" in caplog.text
    assert not a.broken


# -- crafted scp streams ---------------------------------------------------------------------


def scp_feed(audit: ScpAuditor, steps: list[tuple[str, bytes]], chunk: int = 0) -> None:
    for who, data in steps:
        feed = audit.from_client if who == "vendor" else audit.from_server
        for piece in [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]:
            feed(piece)


def upload_steps(name: bytes, data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "asset", b"\0"
    yield "vendor", b"C0644 %d %s\n" % (len(data), name)
    yield "asset", b"\0"
    yield "vendor", data + b"\0"
    yield "asset", b"\0"


@pytest.mark.parametrize("chunk", [0, 1, 3])
def test_scp_upload_crafted(chunk: int) -> None:
    events: list[TransferEvent] = []
    a = ScpAuditor(events.append, "upload", remote="/tmp")
    steps = [*upload_steps(b"a b.txt", b"x\ny\n"), *list(upload_steps(b"e", b""))[1:]]
    scp_feed(a, steps, chunk)
    assert summary(events) == [
        ("upload", "a b.txt", 4, sha(b"x\ny\n"), True, None),
        ("upload", "e", 0, sha(b""), True, None),
    ]


def test_scp_sender_and_receiver_errors() -> None:
    events: list[TransferEvent] = []
    a = ScpAuditor(events.append, "download")
    scp_feed(
        a,
        [
            ("vendor", b"\0"),
            ("asset", b"\x01scp: /etc/shadow: Permission denied\n"),
            ("asset", b"C0600 4 f\n"),
            ("vendor", b"\0"),
            ("asset", b"\0\0\0\0\x01scp: f: read error\n"),
            ("vendor", b"\0"),
            ("asset", b"C0600 2 g\n"),
            ("vendor", b"\0"),
            ("asset", b"ok\0"),
            ("vendor", b"\x01scp: g: No space left on device\n"),
        ],
    )
    assert [(e.path, e.complete, e.note) for e in events] == [
        ("f", False, "sender reported: scp: f: read error"),
        ("g", False, "receiver reported: scp: g: No space left on device"),
    ]
    assert not a.broken


def test_scp_truncated_file_reported_by_finish() -> None:
    events: list[TransferEvent] = []
    a = ScpAuditor(events.append, "upload")
    scp_feed(a, [("asset", b"\0"), ("vendor", b"C0644 10 f\n"), ("asset", b"\0")])
    a.from_client(b"12345")
    a.finish()
    a.finish()
    assert summary(events) == [("upload", "f", 5, sha(b"12345"), False, "truncated at session end")]


@pytest.mark.parametrize(
    "bad",
    [b"C0644 notanumber f\n", b"Q\n", b"C" + b"x" * (ta.MAX_SCP_LINE + 1)],
)
def test_scp_malformed_sender_breaks_quietly(bad: bytes) -> None:
    events: list[TransferEvent] = []
    a = ScpAuditor(events.append, "upload")
    scp_feed(a, [("asset", b"\0"), ("vendor", bad), ("asset", b"\0"), ("vendor", b"more")])
    assert a.broken
    a.finish()
    assert events == []


def test_scp_sender_that_does_not_wait_is_bounded() -> None:
    a = ScpAuditor(lambda e: None, "upload")
    a.from_client(b"C0644 1 f\n" * 10_000)  # no acknowledgement ever came
    assert a.broken and a.error is not None and "did not wait" in a.error


@pytest.mark.parametrize(
    ("subsystem", "command", "expected"),
    [
        ("sftp", None, ("sftp", None)),
        ("other", None, None),
        (None, None, None),
        (None, "ls -la", None),
        (None, "/usr/lib/openssh/sftp-server -l INFO", ("sftp", None)),
        (None, "scp -t /tmp/x", ("scp", "upload")),
        (None, "scp -v -r -d -t -- /srv/a b", ("scp", "upload")),
        (None, "/usr/bin/scp -pf '/etc/my file'", ("scp", "download")),
        (None, "scp -tf x", None),
        (None, "scp x y", None),
        (None, "scp -t 'unbalanced", None),
    ],
)
def test_auditor_for(subsystem: str | None, command: str | None, expected: object) -> None:
    audit = auditor_for(subsystem, command, lambda e: None)
    if audit is None:
        assert expected is None
    elif isinstance(audit, SftpAuditor):
        assert expected == ("sftp", None)
    else:
        assert isinstance(audit, ScpAuditor)
        assert expected == ("scp", audit.direction)


def test_scp_remote_argument() -> None:
    audit = auditor_for(None, "/usr/bin/scp -pf '/etc/my file'", lambda e: None)
    assert isinstance(audit, ScpAuditor) and audit.remote == "/etc/my file"
