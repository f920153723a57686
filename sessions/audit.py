"""The append-only, hash-chained audit log.

Each :class:`~sessions.models.AuditEvent` carries ``seq`` (1, 2, 3 … without gaps),
``prev_hash`` (the previous event's ``hash``; 64 zeros for event 1) and ``hash``::

    hash = sha256_hex(prev_hash + canonical_json(every field except hash))

where :func:`canonical_json` is the project's one canonical JSON (:mod:`policies.canonical`,
re-exported here): sorted keys, no whitespace, UTF-8 (non-ASCII kept as is), timestamps as
ISO-8601 UTC with microseconds and a ``Z``.  Changing any
stored field breaks that event's hash; deleting an event leaves a gap in ``seq``; re-hashing a
changed event breaks the next event's ``prev_hash``.  Removing events from the *end*, or
rewriting events and recomputing every later hash, is only detectable against a head hash kept
elsewhere: the broker's signed checkpoints (:mod:`sessions.checkpoints`), which
:func:`verify_chain` takes.

:func:`canonical_json` and :func:`event_hash` are pure, so an offline verifier can re-check an
:meth:`AuditLog.export_jsonl` file without this package's database code.

Secrets: :func:`redact` is applied to ``details`` on every append; see its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlalchemy as sa
from sqlmodel import col, select

from policies.canonical import canonical_json as canonical_json
from policies.canonical import format_timestamp as format_timestamp
from sessions.checkpoints import Checkpoint, CheckpointMatcher
from sessions.clock import Clock
from sessions.db import is_sqlite, session_scope, write_connection
from sessions.errors import AuditIntegrityError, ConflictError, ValidationError
from sessions.models import AuditEvent, AuditOutcome, new_id

GENESIS_HASH = "0" * 64
REDACTED = "[redacted]"
SECRET_KEY_PATTERN = re.compile(
    r"secret|password|token|code_verifier|client_secret|cookie|authorization", re.IGNORECASE
)
# Fields covered by the hash, in the order they are exported (the hash itself sorts keys).
HASHED_FIELDS = (
    "seq",
    "id",
    "ts",
    "kind",
    "actor",
    "subject",
    "outcome",
    "source_ip",
    "details",
    "prev_hash",
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# pg_advisory_xact_lock key serialising appends across processes on PostgreSQL.
_APPEND_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"conduit.audit_events").digest()[:8], "big", signed=True
)
_APPEND_ATTEMPTS = 5
_TABLE: sa.Table = AuditEvent.__table__  # type: ignore[attr-defined]
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pure functions


def event_hash(prev_hash: str, fields: Mapping[str, object]) -> str:
    """Return the hash of an event whose predecessor's hash is ``prev_hash``.

    ``fields`` are the event's fields; a ``hash`` key, if present, is ignored, and a
    ``prev_hash`` key must equal ``prev_hash`` (it is part of the hashed content).  Accepts
    exported JSONL records as they are (timestamps as strings).  Raises :class:`ValueError` for
    a malformed ``prev_hash`` or content that cannot be encoded.
    """
    if not _HEX64.fullmatch(prev_hash):
        raise ValueError("event_hash: prev_hash must be 64 lowercase hex digits")
    body = {key: value for key, value in fields.items() if key != "hash"}
    if body.setdefault("prev_hash", prev_hash) != prev_hash:
        raise ValueError("event_hash: fields['prev_hash'] differs from prev_hash")
    payload = prev_hash + canonical_json(body)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def redact(mapping: Mapping[str, object]) -> dict[str, object]:
    """Return a copy of ``mapping`` with secret-looking values replaced by ``"[redacted]"``.

    A value is replaced when its key contains (case-insensitively) ``secret``, ``password``,
    ``token``, ``code_verifier``, ``client_secret``, ``cookie`` or ``authorization`` — so
    ``id_token``, ``Set-Cookie`` and ``csrf_token`` are all caught.  Nested mappings and lists
    are walked.  This errs towards redaction: name non-secret details so they do not match
    (e.g. ``token_kind`` is redacted; use ``credential_kind``).  Values under other keys are
    not inspected, so never put a secret under an innocent key.
    """
    return {str(key): _redact_value(str(key), value) for key, value in mapping.items()}


def _redact_value(key: str, value: object) -> object:
    if SECRET_KEY_PATTERN.search(key):
        return REDACTED
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redact_value("", item) for item in value]
    return value


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """The hashed fields of ``event`` (everything but ``hash``), as stored."""
    return {name: getattr(event, name) for name in HASHED_FIELDS}


def event_record(event: AuditEvent) -> dict[str, Any]:
    """The exported form of ``event``: all fields including ``hash``, JSON-ready."""
    record = event_fields(event)
    record["ts"] = format_timestamp(event.ts)
    record["hash"] = event.hash
    return record


# --------------------------------------------------------------------------- the log


class AuditProblem:
    """What :func:`verify_chain` found wrong (``AuditVerification.problem``)."""

    BROKEN = "broken"  # a changed, missing, inserted or reordered event inside the chain
    REWRITTEN = "rewritten"  # the chain is consistent but differs from a signed checkpoint
    TRUNCATED = "truncated"  # the log ends before an event a signed checkpoint covers


@dataclass(frozen=True)
class AuditVerification:
    """Result of :func:`verify_chain` / :meth:`AuditLog.verify`.

    ``checked`` counts the events that verified intact, from event 1 up to the first break;
    ``head_hash`` is the hash of the last of them (None for an empty or immediately broken
    chain).  ``reason`` names the first broken seq and what is wrong with it; ``problem`` is
    an :class:`AuditProblem` value.  ``checkpoints`` counts the checkpoints the chain matched
    and ``latest_checkpoint`` is the newest one given (None without checkpoints).
    """

    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str | None
    head_hash: str | None
    problem: str | None = None
    checkpoints: int = 0
    latest_checkpoint: Checkpoint | None = None


class AuditLog:
    """Appends to, reads and verifies the audit chain stored in ``audit_events``.

    Appends are serialised across threads and processes by the database: SQLite's write lock
    (``BEGIN IMMEDIATE``) or a PostgreSQL transaction-scoped advisory lock.  The unique ``seq``
    and ``hash`` constraints are the last line of defence: a writer that lost a race anyway
    retries on the new head, so the chain never forks.
    """

    def __init__(self, engine: sa.Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        # Called with (seq, hash) after each append committed, in the appending thread; a
        # listener must be quick and must not append (the broker's checkpointer wakes up).
        self.listeners: list[Callable[[int, str], None]] = []
        # Appends started by :meth:`post` and not finished yet; :meth:`drain` awaits them.
        self._posted: set[asyncio.Task[None]] = set()

    def append(
        self,
        kind: str,
        *,
        actor: str,
        outcome: str,
        subject: str | None = None,
        source_ip: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> AuditEvent:
        """Append one event and return it (detached from any session).

        ``details`` is passed through :func:`redact`, must be JSON-serialisable (datetimes
        allowed: stored as ``…Z`` strings) and is stored in canonical form.  Raises
        :class:`ValidationError` for an empty ``kind``/``actor``, an unknown ``outcome`` or
        unserialisable details; :class:`StorageError` when the database fails;
        :class:`AuditIntegrityError` if the append keeps losing races (a writer bypassing this
        class).  The timestamp is taken while holding the lock, so ``ts`` follows ``seq``.
        """
        if not kind or not actor:
            raise ValidationError("audit append: kind and actor must be non-empty")
        if outcome not in AuditOutcome.ALL:
            raise ValidationError(
                f"audit append: outcome {outcome!r} is not one of {AuditOutcome.ALL}",
                code="invalid_outcome",
            )
        clean = _normalise_details(details or {})
        for _ in range(_APPEND_ATTEMPTS):
            try:
                event = self._append_once(kind, actor, outcome, subject, source_ip, clean)
            except ConflictError:
                continue  # lost a race on seq/hash: retry on the new head
            for listener in list(self.listeners):
                with contextlib.suppress(Exception):  # a listener never fails an append
                    listener(event.seq, event.hash)
            return event
        raise AuditIntegrityError(
            f"audit append: {kind}: lost {_APPEND_ATTEMPTS} races for the next seq; "
            "is something writing audit_events without the lock?"
        )

    async def record(
        self,
        kind: str,
        *,
        actor: str,
        outcome: str,
        subject: str | None = None,
        source_ip: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> AuditEvent:
        """:meth:`append` from the event loop: the write (which takes a database lock) runs
        in a worker thread and this waits for it.  Raises what :meth:`append` raises."""
        return await asyncio.to_thread(
            self.append,
            kind,
            actor=actor,
            outcome=outcome,
            subject=subject,
            source_ip=source_ip,
            details=details,
        )

    def post(
        self,
        kind: str,
        *,
        actor: str,
        outcome: str,
        subject: str | None = None,
        source_ip: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """:meth:`record` without waiting, for callbacks that cannot await (protocol
        callbacks of asyncssh or asyncio).  Must be called on a running event loop.

        The append is owned by this log: :meth:`drain` (called by whoever owns the log, at
        shutdown) awaits every posted append, so none is lost when the process stops.  A
        failed append is logged (kind and error, never the details), not raised.
        """
        task = asyncio.get_running_loop().create_task(
            self._posted_append(kind, actor, outcome, subject, source_ip, details)
        )
        self._posted.add(task)
        task.add_done_callback(self._posted.discard)

    async def _posted_append(
        self,
        kind: str,
        actor: str,
        outcome: str,
        subject: str | None,
        source_ip: str | None,
        details: Mapping[str, object] | None,
    ) -> None:
        try:
            await self.record(
                kind,
                actor=actor,
                outcome=outcome,
                subject=subject,
                source_ip=source_ip,
                details=details,
            )
        except Exception as exc:  # the poster cannot handle it; say so without the details
            _log.error("audit append failed for %s: %s", kind, type(exc).__name__)

    async def drain(self) -> None:
        """Wait until every append started by :meth:`post` has finished (posts made while
        draining included).  Never raises."""
        while self._posted:
            await asyncio.gather(*list(self._posted), return_exceptions=True)

    def _append_once(
        self,
        kind: str,
        actor: str,
        outcome: str,
        subject: str | None,
        source_ip: str | None,
        details: dict[str, Any],
    ) -> AuditEvent:
        with write_connection(self._engine) as conn:
            if not is_sqlite(self._engine):
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY}
                )
            last = conn.execute(
                sa.select(_TABLE.c.seq, _TABLE.c.hash).order_by(_TABLE.c.seq.desc()).limit(1)
            ).first()
            seq, prev_hash = (1, GENESIS_HASH) if last is None else (last.seq + 1, last.hash)
            fields: dict[str, Any] = {
                "seq": seq,
                "id": new_id(),
                "ts": self._now(),
                "kind": kind,
                "actor": actor,
                "subject": subject,
                "outcome": outcome,
                "source_ip": source_ip,
                "details": details,
                "prev_hash": prev_hash,
            }
            digest = event_hash(prev_hash, fields)
            conn.execute(sa.insert(_TABLE).values(**fields, hash=digest))
        return AuditEvent(**fields, hash=digest)

    def _now(self) -> datetime:
        now = self._clock.now()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValidationError("audit append: the clock returned a naive datetime")
        return now.astimezone(UTC)

    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest event, or None when the log is empty."""
        with session_scope(self._engine) as session:
            last = session.exec(
                select(AuditEvent.seq, AuditEvent.hash).order_by(col(AuditEvent.seq).desc())
            ).first()
        return None if last is None else (last[0], last[1])

    def iter_events(self, *, since_seq: int = 0, batch: int = 1000) -> Iterator[AuditEvent]:
        """Yield events with ``seq > since_seq`` in seq order, fetching ``batch`` rows at a time.

        Each batch is read in its own short transaction (no transaction is held open between
        yields), so events appended meanwhile are picked up and writers are not blocked.
        """
        if batch < 1:
            raise ValidationError("audit iter_events: batch must be >= 1")
        last_seq = since_seq
        while True:
            with session_scope(self._engine) as session:
                rows = list(
                    session.exec(
                        select(AuditEvent)
                        .where(col(AuditEvent.seq) > last_seq)
                        .order_by(col(AuditEvent.seq))
                        .limit(batch)
                    ).all()
                )
            yield from rows
            if len(rows) < batch:
                return
            last_seq = rows[-1].seq

    def event_at(self, seq: int) -> AuditEvent | None:
        """The event with sequence number ``seq`` (detached), or None."""
        with session_scope(self._engine) as session:
            event = session.exec(select(AuditEvent).where(AuditEvent.seq == seq)).first()
            if event is not None:
                session.expunge(event)
        return event

    def find(self, kind: str, subject: str) -> list[AuditEvent]:
        """Every event of ``kind`` about ``subject``, in seq order (detached)."""
        with session_scope(self._engine) as session:
            rows = list(
                session.exec(
                    select(AuditEvent)
                    .where(AuditEvent.kind == kind, AuditEvent.subject == subject)
                    .order_by(col(AuditEvent.seq))
                ).all()
            )
            for row in rows:
                session.expunge(row)
        return rows

    def verify(
        self, *, batch: int = 1000, checkpoints: Iterable[Checkpoint] = ()
    ) -> AuditVerification:
        """Walk the whole chain in seq order (streaming) and report the first break.

        See :func:`verify_chain`; ``checkpoints`` (already signature-checked) add the checks
        for a rewritten or truncated chain.
        """
        return verify_chain(self.iter_events(batch=batch), checkpoints=checkpoints)

    def export_jsonl(self, out: TextIO, *, since_seq: int = 0) -> int:
        """Write one canonical JSON object per event (with ``hash``/``prev_hash``) to ``out``.

        Returns the number of events written.  Each line ``r`` satisfies
        ``event_hash(r["prev_hash"], r) == r["hash"]``.
        """
        count = 0
        for event in self.iter_events(since_seq=since_seq):
            out.write(canonical_json(event_record(event)) + "\n")
            count += 1
        return count


def _normalise_details(details: Mapping[str, object]) -> dict[str, Any]:
    try:
        text = canonical_json(redact(details))
        text.encode("utf-8")  # lone surrogates cannot be hashed or stored
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise ValidationError(f"audit append: details are not JSON-serialisable: {exc}") from exc
    # Why round-trip: store exactly what was hashed (string keys, datetimes as text).
    normalised: dict[str, Any] = json.loads(text)
    return normalised


def verify_chain(
    events: Iterable[AuditEvent | Mapping[str, Any]], *, checkpoints: Iterable[Checkpoint] = ()
) -> AuditVerification:
    """Verify events in seq order: stored :class:`AuditEvent` rows or exported JSONL records.

    Checks, per event: its seq is the next one (a gap means deleted events), its
    ``prev_hash`` equals the previous event's hash (genesis: 64 zeros), and its hash matches
    its content.  With ``checkpoints``, also that the event at each checkpoint's seq has the
    checkpoint's hash (else ``rewritten``) and that the log reaches every checkpoint (else
    ``truncated``).  Never raises for a broken chain: that is the result, not an error
    (:class:`sessions.checkpoints.CheckpointError` if the checkpoints contradict each other).
    """
    matcher = CheckpointMatcher(checkpoints)
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0

    def result(problem: str | None, seq: int | None, reason: str | None) -> AuditVerification:
        return AuditVerification(
            ok=problem is None,
            checked=checked,
            first_broken_seq=seq,
            reason=reason,
            head_hash=prev_hash if checked else None,
            problem=problem,
            checkpoints=matcher.matched,
            latest_checkpoint=matcher.latest,
        )

    for event in events:
        seq, digest, fields = _parts(event)
        problem = _check_fields(seq, digest, fields, expected_seq, prev_hash)
        if problem is not None:
            return result(AuditProblem.BROKEN, *problem)
        if (mismatch := matcher.observe(seq, digest)) is not None:
            return result(AuditProblem.REWRITTEN, seq, mismatch)
        checked += 1
        expected_seq, prev_hash = seq + 1, digest
    if (missing := matcher.finish(checked)) is not None:
        return result(AuditProblem.TRUNCATED, checked + 1, missing)
    return result(None, None, None)


def _parts(event: AuditEvent | Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    if isinstance(event, AuditEvent):
        return event.seq, event.hash, event_fields(event)
    fields = {key: value for key, value in event.items() if key != "hash"}
    return event.get("seq"), event.get("hash"), fields


def _check_fields(
    seq: object, digest: object, fields: dict[str, Any], expected_seq: int, prev_hash: str
) -> tuple[int, str] | None:
    if not isinstance(seq, int) or isinstance(seq, bool):
        return expected_seq, f"event {expected_seq}: has no valid seq"
    if seq != expected_seq:
        return expected_seq, f"event {expected_seq}: missing (the next stored event is {seq})"
    if fields.get("prev_hash") != prev_hash:
        previous = "the genesis hash" if seq == 1 else f"the hash of event {seq - 1}"
        return seq, f"event {seq}: prev_hash does not match {previous}"
    try:
        recomputed = event_hash(prev_hash, fields)
    except (TypeError, ValueError) as exc:
        return seq, f"event {seq}: content cannot be encoded ({exc})"
    if recomputed != digest:
        return seq, f"event {seq}: content does not match its hash"
    return None
