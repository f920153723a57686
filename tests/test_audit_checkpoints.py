"""Signed audit checkpoints: truncation and re-chaining of the audit log are detected.

The checkpointer signs the chain head (every N events, every M seconds by the injected clock)
and ships it to a file, a real syslog receiver (UDP and TCP sockets on 127.0.0.1) and the
webhook; ``conduit audit verify --checkpoints`` then catches what the chain alone cannot: the
newest events deleted, or events edited with every later hash recomputed. On SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from broker.runtime.audit_checkpoints import AuditCheckpointer, FileTarget, SyslogTarget
from sessions.audit import AuditLog, event_fields, event_hash, verify_chain
from sessions.checkpoints import (
    CheckpointError,
    parse_checkpoint,
    read_checkpoints,
    sign_checkpoint,
)
from sessions.recording import Ed25519Signer, public_key_openssh
from sessions.testing import ManualClock
from tests.harness.cli import run_conduit
from tests.harness.wait import async_wait_until

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def signer(tmp_path: Path) -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def pub(tmp_path: Path, signer: Ed25519Signer) -> Path:
    path = tmp_path / "recording_ed25519.pub"
    path.write_text(public_key_openssh(signer.public_key) + " conduit-recording\n")
    return path


def _fill(log: AuditLog, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        log.append("auth.login", actor=f"user-{i % 4}", outcome="ok", details={"n": i})


def _url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _checkpointer(
    log: AuditLog, signer: Ed25519Signer, clock: ManualClock, path: Path, **kw: Any
) -> AuditCheckpointer:
    return AuditCheckpointer(
        log, signer, clock, [FileTarget(path)], every_events=10, every_s=60, **kw
    )


# --------------------------------------------------------------------------- the checkpoint


def test_checkpoint_is_signed_and_checked(signer: Ed25519Signer, tmp_path: Path) -> None:
    cp = sign_checkpoint(7, "ab" * 32, T0, T0, signer)
    assert parse_checkpoint(cp.line(), signer.public_key) == cp
    forged = json.loads(cp.line()) | {"head": "cd" * 32}
    with pytest.raises(CheckpointError, match="signature invalid"):
        parse_checkpoint(json.dumps(forged), signer.public_key)
    other = Ed25519Signer.generate()
    with pytest.raises(CheckpointError, match="not by the given public key"):
        parse_checkpoint(cp.line(), other.public_key)
    # A syslog capture works as a checkpoint file; other lines and a partial last line are
    # skipped, a forged checkpoint line is named.
    capture = tmp_path / "syslog.txt"
    capture.write_text(
        f"<85>1 2026-03-02T09:00:00Z host conduit 1 audit-checkpoint - {cp.line()}\n"
        "<13>1 2026-03-02T09:00:01Z host sshd 2 - - unrelated\n"
        '{"type": "conduit.audit.checkp'
    )
    found, skipped = read_checkpoints(capture, signer.public_key)
    assert found == [cp] and skipped == 2
    capture.write_text(json.dumps(forged) + "\n")
    with pytest.raises(CheckpointError, match=r"syslog.txt:1: checkpoint signature invalid"):
        read_checkpoints(capture, signer.public_key)


# --------------------------------------------------------------------------- the checkpointer


def test_every_n_events_and_every_m_seconds(
    engine: sa.Engine, clock: ManualClock, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(engine, clock)
    path = tmp_path / "cp" / "checkpoints.jsonl"
    cps = _checkpointer(log, signer, clock, path)
    assert cps.round() == []  # an empty log: nothing to vouch for
    _fill(log, 3)
    assert [cp.seq for cp in cps.round()] == [3]  # the first checkpoint: the head
    _fill(log, 24)  # head 27: every 10th event after the last checkpoint, exactly
    assert [cp.seq for cp in cps.round()] == [13, 23]
    clock.advance(59)
    assert cps.round() == []  # 4 events uncovered, less than a minute since the last one
    clock.advance(1)
    assert [cp.seq for cp in cps.round()] == [27]  # a minute: the moved head
    clock.advance(600)
    assert cps.round() == []  # the head did not move
    found, _ = read_checkpoints(path, signer.public_key)
    assert [cp.seq for cp in found] == [3, 13, 23, 27]
    assert found[-1].at == "2026-03-02T09:01:00.000000Z"
    assert path.stat().st_mode & 0o777 == 0o600
    result = log.verify(checkpoints=found)
    assert result.ok and result.checkpoints == 4 and result.latest_checkpoint == found[-1]

    # A restart continues from the file (no database state), and compares it with the log.
    again = _checkpointer(log, signer, clock, path)
    again.resume()
    assert again.mismatch is None
    _fill(log, 10)
    assert [cp.seq for cp in again.round()] == [37]


def test_the_task_wakes_on_appends(
    engine: sa.Engine, clock: ManualClock, signer: Ed25519Signer, tmp_path: Path
) -> None:
    """In the broker the task runs by itself: the 10th append wakes it (no clock advance)."""
    import asyncio

    log = AuditLog(engine, clock)
    path = tmp_path / "checkpoints.jsonl"
    _fill(log, 1)

    async def run() -> None:
        cps = _checkpointer(log, signer, clock, path, poll_s=30)
        await cps.start()
        try:
            await async_wait_until(
                lambda: path.exists() and path.read_text().count("\n") == 1, "the first checkpoint"
            )
            await asyncio.to_thread(_fill, log, 10)
            await async_wait_until(
                lambda: path.read_text().count("\n") == 2, "the 10-event checkpoint"
            )
            await asyncio.to_thread(_fill, log, 2)
        finally:
            await cps.aclose()  # a clean stop signs the final head

    asyncio.run(run())
    assert [cp.seq for cp in read_checkpoints(path, signer.public_key)[0]] == [1, 11, 13]


def test_shipped_to_syslog_over_udp_and_tcp(signer: Ed25519Signer) -> None:
    cp = sign_checkpoint(5, "ab" * 32, T0, T0, signer)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(10)
        SyslogTarget(f"udp://127.0.0.1:{udp.getsockname()[1]}").ship(cp)
        datagram = udp.recv(65536).decode()
    assert datagram.startswith("<85>1 2026-03-02T09:00:00.000000Z ")
    assert " conduit " in datagram and datagram.endswith(cp.line())

    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(65536):
                    received.append(chunk)

        thread = threading.Thread(target=accept)
        thread.start()
        SyslogTarget(f"tcp://127.0.0.1:{server.getsockname()[1]}").ship(cp)
        thread.join(10)
    length, _, message = b"".join(received).partition(b" ")
    assert int(length) == len(message) and message.decode().endswith(cp.line())


# --------------------------------------------------------------------------- conduit audit verify


def _tamper_rechain(log: AuditLog, engine: sa.Engine, seqs: tuple[int, ...]) -> None:
    """Edit the actor of events ``seqs`` and recompute every hash from the first on, the way
    someone with write access to the database would hide the edit from the chain."""
    events = list(log.iter_events())
    first = min(seqs)
    prev = events[first - 2].hash if first > 1 else "0" * 64
    with engine.begin() as conn:
        for event in events[first - 1 :]:
            fields = event_fields(event)
            if event.seq in seqs:
                fields["actor"] = "nobody"
            fields["prev_hash"] = prev
            digest = event_hash(prev, fields)
            conn.execute(
                sa.text(
                    "UPDATE audit_events SET actor = :actor, prev_hash = :prev, hash = :hash "
                    "WHERE seq = :seq"
                ),
                {"actor": fields["actor"], "prev": prev, "hash": digest, "seq": event.seq},
            )
            prev = digest


def test_verify_detects_truncation_and_rechaining(
    engine: sa.Engine,
    clock: ManualClock,
    signer: Ed25519Signer,
    pub: Path,
    tmp_path: Path,
) -> None:
    log = AuditLog(engine, clock)
    path = tmp_path / "checkpoints.jsonl"
    cps = _checkpointer(log, signer, clock, path)
    _fill(log, 1)
    cps.round()
    _fill(log, 59)
    cps.round()  # checkpoints at 1, 11, …, 51
    clock.advance(60)
    cps.round()  # and the head, 60
    url = _url(engine)
    verify: Callable[..., Any] = lambda *extra: run_conduit(  # noqa: E731
        "audit", "verify", "--database-url", url, *extra
    )

    ok = verify("--checkpoints", str(path), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact: 60 events" in ok.stdout and "matches 7 signed checkpoints" in ok.stdout

    # Two events edited and every later hash recomputed: the chain alone says intact …
    _tamper_rechain(log, engine, (30, 33))
    plain = verify()
    assert plain.returncode == 0 and "intact: 60 events" in plain.stdout
    assert "without --checkpoints" in plain.stdout
    # … the checkpoints do not.
    rewritten = verify("--checkpoints", str(path), "--public-key", str(pub))
    assert rewritten.returncode == 1, rewritten.stdout
    assert rewritten.stdout.startswith("audit chain REWRITTEN at event 31:")
    assert "rewritten at or before event 31; event 21 still matched" in rewritten.stdout


def test_verify_detects_the_newest_events_deleted(
    engine: sa.Engine, clock: ManualClock, signer: Ed25519Signer, pub: Path, tmp_path: Path
) -> None:
    log = AuditLog(engine, clock)
    path = tmp_path / "checkpoints.jsonl"
    cps = _checkpointer(log, signer, clock, path)
    _fill(log, 1)
    cps.round()
    _fill(log, 49)
    clock.advance(60)
    cps.round()  # 11, 21, 31, 41, then the head (50)
    url = _url(engine)
    export = tmp_path / "audit.jsonl"
    export.write_text(run_conduit("audit", "export", "--database-url", url).stdout)

    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq > 30"))
    plain = run_conduit("audit", "verify", "--database-url", url)
    assert plain.returncode == 0 and "intact: 30 events" in plain.stdout
    cut = run_conduit(
        "audit", "verify", "--database-url", url, "--checkpoints", str(path),
        "--public-key", str(pub),
    )  # fmt: skip
    assert cut.returncode == 1, cut.stdout
    assert cut.stdout.startswith("audit chain TRUNCATED at event 31:")
    assert "the log ends at event 30" in cut.stdout and "events 31-50 were removed" in cut.stdout

    # Offline, against an export: the whole export verifies; the same export cut short not.
    whole = run_conduit(
        "audit", "verify", "--export", str(export), "--checkpoints", str(path),
        "--public-key", str(pub),
    )  # fmt: skip
    assert whole.returncode == 0 and "intact: 50 events" in whole.stdout, whole.stdout
    short = tmp_path / "short.jsonl"
    short.write_text("".join(export.read_text().splitlines(keepends=True)[:45]))
    cut_export = run_conduit(
        "audit", "verify", "--export", str(short), "--checkpoints", str(path),
        "--public-key", str(pub),
    )  # fmt: skip
    assert cut_export.returncode == 1 and "events 46-50 were removed" in cut_export.stdout

    # A forged checkpoint file is refused, not half-used.
    forged = tmp_path / "forged.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[0]) | {"seq": 2}
    forged.write_text(json.dumps(record) + "\n")
    refused = run_conduit(
        "audit", "verify", "--export", str(export), "--checkpoints", str(forged),
        "--public-key", str(pub),
    )  # fmt: skip
    assert refused.returncode == 1 and "checkpoints unusable" in refused.stdout


def test_restart_reports_a_log_that_no_longer_matches(
    engine: sa.Engine, clock: ManualClock, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(engine, clock)
    path = tmp_path / "checkpoints.jsonl"
    cps = _checkpointer(log, signer, clock, path)
    _fill(log, 25)
    cps.round()
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq > 20"))
    seen: list[tuple[str, str | None]] = []
    again = _checkpointer(log, signer, clock, path, on_status=lambda k, p: seen.append((k, p)))
    again.resume()
    assert again.mismatch is not None and "covers event 25" in again.mismatch
    assert seen == [("audit.checkpoint.mismatch", again.mismatch)]
    # It signs the present head at once, so the file holds evidence of both.
    assert [cp.seq for cp in again.round()] == [20]
    found, _ = read_checkpoints(path, signer.public_key)
    assert not verify_chain(log.iter_events(), checkpoints=found).ok
