"""Signed checkpoints of the audit chain head: what makes truncation and re-chaining visible.

The audit chain (:mod:`sessions.audit`) detects any change *inside* the log, but someone who
can write the database can delete its newest events, or rewrite events and recompute every
hash after them, and the chain is intact again. A checkpoint is the broker's signed statement
"event ``seq`` has hash ``head``", kept outside the database (a file, syslog, a webhook)::

    {"v": 1, "type": "conduit.audit.checkpoint", "seq": 100, "head": "<hash of event 100>",
     "event_ts": "<ts of event 100>", "at": "<when signed>", "signer": "SHA256:...",
     "sig": "<Ed25519(CHECKPOINT_DOMAIN || canonical JSON without sig), base64>"}

Because each event's hash commits to every earlier event, one checkpoint vouches for the whole
chain up to its ``seq``. Verifying the log against checkpoints (:class:`CheckpointMatcher`)
finds a *rewritten* chain (the event at a checkpoint's seq has another hash) and a *truncated*
one (the log ends before a checkpoint's seq). Events newer than the newest checkpoint that
reached a verifier are not covered: that window is what the checkpoint frequency bounds.

The key is the broker's recording key (:mod:`broker.keys.recording`) under its own signature
domain, so a checkpoint signature can never pass for a recording's and vice versa.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sessions.errors import SessionsError
from sessions.recording import Signer, canonical_json, fingerprint, format_time

CHECKPOINT_TYPE = "conduit.audit.checkpoint"
CHECKPOINT_DOMAIN = b"conduit-audit-checkpoint-v1\n"
FORMAT_VERSION = 1
_FIELDS: Mapping[str, type] = {
    "v": int, "type": str, "seq": int, "head": str, "event_ts": str, "at": str, "signer": str,
    "sig": str,
}  # fmt: skip
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(SessionsError):
    """A checkpoint (or a file of them) is malformed, forged or contradicts another one."""

    code = "bad_checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """One signed statement "audit event ``seq`` has hash ``head``"."""

    seq: int
    head: str
    event_ts: str
    at: str
    signer: str
    sig: str

    def record(self) -> dict[str, Any]:
        """The JSON form (what is shipped and stored)."""
        return {
            "v": FORMAT_VERSION,
            "type": CHECKPOINT_TYPE,
            "seq": self.seq,
            "head": self.head,
            "event_ts": self.event_ts,
            "at": self.at,
            "signer": self.signer,
            "sig": self.sig,
        }

    def line(self) -> str:
        """One canonical JSON line (no newline)."""
        return canonical_json(self.record()).decode()


def _signed_bytes(record: Mapping[str, Any]) -> bytes:
    return CHECKPOINT_DOMAIN + canonical_json({k: v for k, v in record.items() if k != "sig"})


def sign_checkpoint(
    seq: int, head: str, event_ts: datetime, at: datetime, signer: Signer
) -> Checkpoint:
    """Sign "event ``seq`` (timestamp ``event_ts``) has hash ``head``" at time ``at``."""
    if seq < 1 or not _HEX64.fullmatch(head):
        raise CheckpointError("checkpoint: seq must be >= 1 and head 64 lowercase hex digits")
    unsigned = Checkpoint(seq, head, format_time(event_ts), format_time(at), signer.fingerprint, "")
    sig = base64.b64encode(signer.sign(_signed_bytes(unsigned.record()))).decode()
    return Checkpoint(seq, head, unsigned.event_ts, unsigned.at, unsigned.signer, sig)


def parse_checkpoint(text: str | bytes, public_key: Ed25519PublicKey) -> Checkpoint:
    """A checkpoint from its JSON text, its fields and signature checked against ``public_key``.

    Raises :class:`CheckpointError` naming what is wrong.
    """
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError("checkpoint is not valid JSON") from exc
    return checkpoint_from(obj, public_key)


def checkpoint_from(obj: object, public_key: Ed25519PublicKey) -> Checkpoint:
    """:func:`parse_checkpoint` for an already decoded JSON value."""
    if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
        raise CheckpointError("checkpoint does not have exactly the expected fields")
    for key, typ in _FIELDS.items():
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            raise CheckpointError(f"checkpoint field {key!r} is not {typ.__name__}")
    if obj["type"] != CHECKPOINT_TYPE or obj["v"] != FORMAT_VERSION:
        raise CheckpointError("not a version-1 audit checkpoint")
    if obj["seq"] < 1 or not _HEX64.fullmatch(obj["head"]):
        raise CheckpointError("checkpoint seq or head is malformed")
    try:
        public_key.verify(base64.b64decode(obj["sig"], validate=True), _signed_bytes(obj))
    except (InvalidSignature, ValueError) as exc:
        given = fingerprint(public_key)
        if obj["signer"] != given:
            raise CheckpointError(
                f"checkpoint signed by {obj['signer']}, not by the given public key {given}"
            ) from exc
        raise CheckpointError("checkpoint signature invalid") from exc
    return Checkpoint(
        obj["seq"], obj["head"], obj["event_ts"], obj["at"], obj["signer"], obj["sig"]
    )


def read_checkpoints(path: Path, public_key: Ed25519PublicKey) -> tuple[list[Checkpoint], int]:
    """Every checkpoint in ``path``, verified; returns them and the number of lines skipped.

    The file may be the broker's checkpoint file (one JSON object a line) or a syslog or
    webhook capture: a line counts when it mentions ``conduit.audit.checkpoint``, and its JSON
    object starts at the first ``{`` (a syslog header before it is ignored); a webhook body
    (``{"event": "audit.checkpoint", "details": <checkpoint>, ...}``) counts by its details.
    Other lines are skipped and counted. A partial last line (a crash while appending) is
    skipped too.
    Raises :class:`CheckpointError` (``file:line: reason``) for a checkpoint line that does
    not verify, and :class:`CheckpointError` (``not_found``) if the file cannot be read.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"reading {path}: {exc.strerror}", code="not_found") from exc
    lines = data.split(b"\n")
    partial = lines.pop() if lines else b""
    found: list[Checkpoint] = []
    skipped = 1 if partial.strip() else 0
    for number, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", errors="replace")
        start = line.find("{")
        if CHECKPOINT_TYPE not in line or start < 0:
            skipped += 1 if line.strip() else 0
            continue
        try:
            try:
                obj = json.loads(line[start:])
            except ValueError as exc:
                raise CheckpointError("checkpoint is not valid JSON") from exc
            if isinstance(obj, dict) and obj.get("event") == "audit.checkpoint":
                obj = obj.get("details")  # a webhook body
            found.append(checkpoint_from(obj, public_key))
        except CheckpointError as exc:
            raise CheckpointError(f"{path}:{number}: {exc.message}") from exc
    return found, skipped


class CheckpointMatcher:
    """Checks an audit chain, walked in seq order, against a set of checkpoints.

    Feed every event with :meth:`observe` (stop at the first problem), then call
    :meth:`finish` with the last seq seen. Checkpoints that disagree with each other about
    one seq raise :class:`CheckpointError` at construction (a forked chain, or a misused key).
    """

    def __init__(self, checkpoints: Iterable[Checkpoint]) -> None:
        self._by_seq: dict[int, Checkpoint] = {}
        for cp in checkpoints:
            seen = self._by_seq.get(cp.seq)
            if seen is not None and seen.head != cp.head:
                raise CheckpointError(
                    f"two checkpoints for event {cp.seq} disagree (signed at {seen.at} and "
                    f"{cp.at}): the chain was forked or the key misused"
                )
            if seen is None or cp.at < seen.at:
                self._by_seq[cp.seq] = cp  # keep the earliest statement
        self.total = len(self._by_seq)
        self.matched = 0
        self.last_matched: Checkpoint | None = None

    @property
    def latest(self) -> Checkpoint | None:
        """The checkpoint with the highest seq."""
        return self._by_seq[max(self._by_seq)] if self._by_seq else None

    def observe(self, seq: int, digest: str) -> str | None:
        """None if event ``seq`` agrees with its checkpoint (or has none), else the reason."""
        cp = self._by_seq.get(seq)
        if cp is None:
            return None
        if cp.head != digest:
            since = (
                f"; event {self.last_matched.seq} still matched its checkpoint"
                if self.last_matched is not None
                else ""
            )
            return (
                f"event {seq}: hash differs from the checkpoint signed at {cp.at}: the chain "
                f"was rewritten at or before event {seq}{since}"
            )
        self.matched += 1
        self.last_matched = cp
        return None

    def finish(self, last_seq: int) -> str | None:
        """None if no checkpoint lies beyond ``last_seq`` (the log's end), else the reason."""
        beyond = [seq for seq in self._by_seq if seq > last_seq]
        if not beyond:
            return None
        cp = self._by_seq[max(beyond)]
        ends = f"ends at event {last_seq}" if last_seq else "is empty"
        return (
            f"the log {ends} but the checkpoint signed at {cp.at} covers event {cp.seq}: "
            f"events {last_seq + 1}-{cp.seq} were removed"
        )
