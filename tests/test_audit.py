"""The hash-chained audit log on SQLite and a real PostgreSQL: appends, tampering, export."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa

from sessions.audit import (
    GENESIS_HASH,
    HASHED_FIELDS,
    REDACTED,
    AuditLog,
    canonical_json,
    event_hash,
    event_record,
    redact,
)
from sessions.clock import SystemClock
from sessions.db import create_db_engine, migrate
from sessions.errors import ValidationError
from sessions.models import AuditEvent, AuditOutcome
from sessions.testing import ManualClock
from tests.harness.postgres import RunningPostgres

T0 = datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def log(engine: sa.Engine, clock: ManualClock) -> AuditLog:
    return AuditLog(engine, clock)


def fill(log: AuditLog, clock: ManualClock, count: int) -> None:
    for i in range(count):
        clock.advance(1.25)
        log.append(
            "grant.approve" if i % 2 else "auth.login",
            actor=f"user-{i % 3}",
            outcome=AuditOutcome.ALLOW if i % 2 else AuditOutcome.OK,
            subject=f"grant-{i}" if i % 2 else None,
            source_ip="192.0.2.10",
            details={"i": i, "note": f"event number {i}", "ratio": i / 7, "tags": ["a", "ü"]},
        )


def execute(engine: sa.Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def raw_details(engine: sa.Engine, seq: int) -> str:
    with engine.connect() as conn:
        cast = "CAST(details AS TEXT)" if engine.dialect.name == "postgresql" else "details"
        text: str = conn.execute(
            sa.text(f"SELECT {cast} FROM audit_events WHERE seq = :seq"), {"seq": seq}
        ).scalar_one()
    return text


def set_raw_details(engine: sa.Engine, seq: int, text: str) -> None:
    value = "CAST(:d AS JSON)" if engine.dialect.name == "postgresql" else ":d"
    execute(engine, f"UPDATE audit_events SET details = {value} WHERE seq = :seq", d=text, seq=seq)


# --------------------------------------------------------------------------- chain


def test_chain_of_events_verifies(log: AuditLog, clock: ManualClock) -> None:
    fill(log, clock, 30)
    result = log.verify(batch=7)  # several batches, one partial
    assert result.ok
    assert result.checked == 30
    assert result.first_broken_seq is None
    assert result.reason is None
    head = log.head()
    assert head is not None
    assert head[0] == 30
    assert result.head_hash == head[1]
    events = list(log.iter_events(batch=4))
    assert [e.seq for e in events] == list(range(1, 31))
    assert events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert [e.seq for e in log.iter_events(since_seq=27)] == [28, 29, 30]


def test_empty_log_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert (result.ok, result.checked, result.head_hash) == (True, 0, None)
    assert log.head() is None


def test_append_returns_the_stored_event(log: AuditLog, clock: ManualClock) -> None:
    clock.set(T0.astimezone(timezone(timedelta(hours=-5))))
    event = log.append(
        "oidc.rejected",
        actor="anonymous",
        outcome=AuditOutcome.REJECTED,
        source_ip="198.51.100.4",
        details={"error": "bad nonce", "at": T0},
    )
    stored = next(log.iter_events())
    assert stored.model_dump() == event.model_dump()
    assert stored.ts == T0
    assert stored.ts.tzinfo is UTC
    assert stored.details == {"error": "bad nonce", "at": "2025-03-01T08:30:15.123456Z"}
    assert stored.hash == event_hash(GENESIS_HASH, event_record(stored))


@pytest.mark.parametrize("column", ["actor", "details", "kind", "subject"])
def test_changed_content_is_reported_at_its_seq(
    log: AuditLog, clock: ManualClock, engine: sa.Engine, column: str
) -> None:
    fill(log, clock, 12)
    if column == "details":
        original = raw_details(engine, 7)
        set_raw_details(engine, 7, original.replace("number 6", "number 8", 1))
        assert raw_details(engine, 7) != original
    else:
        execute(engine, f"UPDATE audit_events SET {column} = 'mallory' WHERE seq = 7")
    result = log.verify()
    assert not result.ok
    assert result.first_broken_seq == 7
    assert result.reason == "event 7: content does not match its hash"
    assert result.checked == 6


def test_changed_timestamp_is_reported(
    log: AuditLog, clock: ManualClock, engine: sa.Engine
) -> None:
    fill(log, clock, 5)
    execute(
        engine,
        "UPDATE audit_events SET ts = :ts WHERE seq = 3",
        ts=(T0 + timedelta(microseconds=1)).replace(tzinfo=None),
    )
    assert log.verify().first_broken_seq == 3


def test_deleted_event_is_reported(log: AuditLog, clock: ManualClock, engine: sa.Engine) -> None:
    fill(log, clock, 10)
    execute(engine, "DELETE FROM audit_events WHERE seq = 5")
    result = log.verify()
    assert not result.ok
    assert result.first_broken_seq == 5
    assert result.reason is not None
    assert result.reason.startswith("event 5: missing")
    assert result.checked == 4


def test_deleted_first_event_is_reported(
    log: AuditLog, clock: ManualClock, engine: sa.Engine
) -> None:
    fill(log, clock, 3)
    execute(engine, "DELETE FROM audit_events WHERE seq = 1")
    result = log.verify()
    assert (result.first_broken_seq, result.checked, result.head_hash) == (1, 0, None)


def test_altered_prev_hash_is_reported(
    log: AuditLog, clock: ManualClock, engine: sa.Engine
) -> None:
    fill(log, clock, 10)
    execute(engine, "UPDATE audit_events SET prev_hash = :h WHERE seq = 4", h="f" * 64)
    result = log.verify()
    assert not result.ok
    assert result.first_broken_seq == 4
    assert result.reason == "event 4: prev_hash does not match the hash of event 3"


def test_rehashed_forgery_is_caught_by_the_next_link(
    log: AuditLog, clock: ManualClock, engine: sa.Engine
) -> None:
    fill(log, clock, 8)
    forged = next(e for e in log.iter_events() if e.seq == 5)
    forged.actor = "mallory"
    new_hash = event_hash(forged.prev_hash, event_record(forged))
    execute(
        engine,
        "UPDATE audit_events SET actor = 'mallory', hash = :h WHERE seq = 5",
        h=new_hash,
    )
    result = log.verify()
    assert result.first_broken_seq == 6
    assert result.reason == "event 6: prev_hash does not match the hash of event 5"


# --------------------------------------------------------------------------- concurrency


def test_concurrent_appends_form_one_gapless_chain(engine: sa.Engine) -> None:
    log = AuditLog(engine, SystemClock())
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(50):
                log.append("test.concurrent", actor=f"agent:{n}", outcome="ok", details={"i": i})
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    events = list(log.iter_events())
    assert [e.seq for e in events] == list(range(1, 401))
    assert all(e.ts >= p.ts for p, e in itertools.pairwise(events))
    result = log.verify()
    assert (result.ok, result.checked) == (True, 400)


_APPENDER = """
import sys
from sessions.audit import AuditLog
from sessions.clock import SystemClock
from sessions.db import create_db_engine

engine = create_db_engine(sys.argv[1])
log = AuditLog(engine, SystemClock())
print("ready", flush=True)
sys.stdin.readline()  # start appending together with the other processes
for i in range(int(sys.argv[2])):
    log.append("test.process", actor="system", outcome="ok", details={"pid": sys.argv[3], "i": i})
engine.dispose()
"""


def test_appends_from_several_processes_form_one_chain(engine: sa.Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", _APPENDER, url, "60", str(n)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for n in range(2)
        ]

        @stack.callback
        def kill_leftovers() -> None:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()

        for proc in procs:  # imports take seconds; wait until every process can append
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    log = AuditLog(engine, SystemClock())
    result = log.verify()
    assert (result.ok, result.checked) == (True, 120)
    pids = [event.details["pid"] for event in log.iter_events()]
    assert sorted(set(pids)) == ["0", "1"]


@pytest.mark.postgres
def test_lost_race_retries_on_the_new_head(pg_server: RunningPostgres) -> None:
    """A writer that bypasses the lock makes our insert collide; the append moves on, no fork."""
    engine = create_db_engine(pg_server.create_database(f"t_{uuid4().hex[:16]}"))
    migrate(engine)
    rogue_inserted = False

    class RacingClock:
        def now(self) -> datetime:
            nonlocal rogue_inserted
            if not rogue_inserted:  # runs inside append, after it read the head
                rogue_inserted = True
                execute(
                    engine,
                    "INSERT INTO audit_events (seq, id, ts, kind, actor, outcome, details,"
                    " prev_hash, hash) VALUES (1, 'rogue', :ts, 'x', 'x', 'ok', '{}', :p, :h)",
                    ts=T0.replace(tzinfo=None),
                    p=GENESIS_HASH,
                    h="a" * 64,
                )
            return T0

    try:
        event = AuditLog(engine, RacingClock()).append("auth.login", actor="u", outcome="ok")
        assert (event.seq, event.prev_hash) == (2, "a" * 64)
        result = AuditLog(engine, SystemClock()).verify()
        assert (result.ok, result.first_broken_seq) == (False, 1)  # the rogue row is exposed
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- export


def test_export_jsonl_lines_parse_and_match(log: AuditLog, clock: ManualClock) -> None:
    fill(log, clock, 15)
    out = io.StringIO()
    assert log.export_jsonl(out) == 15
    lines = out.getvalue().splitlines()
    assert len(lines) == 15
    prev = GENESIS_HASH
    for line, event in zip(lines, log.iter_events(), strict=True):
        record = json.loads(line)
        assert canonical_json(record) == line  # already canonical
        assert record == event_record(event)
        assert record["prev_hash"] == prev
        assert event_hash(prev, record) == record["hash"]
        assert record["ts"].endswith("Z")
        prev = record["hash"]
    tail = io.StringIO()
    assert log.export_jsonl(tail, since_seq=12) == 3
    assert tail.getvalue().splitlines() == lines[12:]


# --------------------------------------------------------------------------- redaction / input


def test_secret_looking_details_are_redacted_before_storage(
    log: AuditLog, engine: sa.Engine
) -> None:
    log.append(
        "oidc.callback",
        actor="anonymous",
        outcome="error",
        details={
            "password": "hunter2",
            "id_token": "eyJhbGciOi",
            "Authorization": "Bearer abc",
            "client_secret": "s3",
            "Set-Cookie": "sid=1",
            "code_verifier": "v",
            "nested": {"refresh_token": "r", "user": "vera"},
            "attempts": [{"api_token": "t"}, "plain"],
            "user": "vera",
        },
    )
    stored = raw_details(engine, 1)
    for secret in ("hunter2", "eyJhbGciOi", "Bearer abc", "s3", "sid=1", '"v"', '"r"', '"t"'):
        assert secret not in stored
    assert json.loads(stored) == {
        "password": REDACTED,
        "id_token": REDACTED,
        "Authorization": REDACTED,
        "client_secret": REDACTED,
        "Set-Cookie": REDACTED,
        "code_verifier": REDACTED,
        "nested": {"refresh_token": REDACTED, "user": "vera"},
        "attempts": [{"api_token": REDACTED}, "plain"],
        "user": "vera",
    }
    assert log.verify().ok


def test_redact_is_pure() -> None:
    original = {"token": "x", "inner": {"cookie": "y"}}
    assert redact(original) == {"token": REDACTED, "inner": {"cookie": REDACTED}}
    assert original == {"token": "x", "inner": {"cookie": "y"}}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"outcome": "maybe"}, "outcome"),
        ({"details": {"x": object()}}, "JSON"),
        ({"details": {"x": float("nan")}}, "JSON"),
        ({"details": {"x": "\ud800"}}, "JSON"),
        ({"details": {"when": datetime(2025, 1, 1)}}, "naive"),
        ({"actor": ""}, "non-empty"),
    ],
)
def test_invalid_appends_are_rejected(log: AuditLog, kwargs: dict[str, Any], fragment: str) -> None:
    arguments: dict[str, Any] = {"actor": "system", "outcome": "ok", **kwargs}
    with pytest.raises(ValidationError, match=fragment):
        log.append("test.invalid", **arguments)
    assert log.head() is None


# --------------------------------------------------------------------------- pure functions


def test_hash_covers_every_column_but_the_hash() -> None:
    assert set(HASHED_FIELDS) == set(AuditEvent.model_fields) - {"hash"}


def test_canonical_json_is_stable() -> None:
    cest = timezone(timedelta(hours=2))
    value = {"b": 1, "a": "é", "t": T0.astimezone(cest), "l": [1.5, None, True]}
    assert canonical_json(value) == (
        '{"a":"é","b":1,"l":[1.5,null,true],"t":"2025-03-01T08:30:15.123456Z"}'
    )


def test_event_hash_contract() -> None:
    fields = {"seq": 1, "kind": "k", "ts": T0}
    digest = event_hash(GENESIS_HASH, fields)
    assert len(digest) == 64
    assert event_hash(GENESIS_HASH, {**fields, "hash": "ignored"}) == digest
    assert event_hash(GENESIS_HASH, {**fields, "ts": "2025-03-01T08:30:15.123456Z"}) == digest
    assert event_hash("1" * 64, fields) != digest
    with pytest.raises(ValueError, match="prev_hash"):
        event_hash("nope", fields)
    with pytest.raises(ValueError, match="differs"):
        event_hash(GENESIS_HASH, {**fields, "prev_hash": "1" * 64})


async def test_posted_appends_are_owned_and_drained(log: AuditLog, caplog: Any) -> None:
    """``post`` from a callback that cannot await: ``drain`` at shutdown loses none, in
    order of completion all land in one chain, and a bad one is logged without details."""
    for n in range(20):
        log.post("test.posted", actor="system", outcome="ok", details={"n": n})
    log.post("test.posted", actor="system", outcome="not-an-outcome", details={"token": "s3"})
    await log.drain()
    events = [e for e in log.iter_events() if e.kind == "test.posted"]
    assert sorted(e.details["n"] for e in events) == list(range(20))
    assert log.verify().ok
    assert "audit append failed for test.posted: ValidationError" in caplog.text
    assert "s3" not in caplog.text


async def test_record_waits_for_the_append(log: AuditLog) -> None:
    event = await log.record("test.recorded", actor="adam", outcome="ok", subject="x")
    assert log.event_at(event.seq) is not None
    assert log.head() == (event.seq, event.hash)
