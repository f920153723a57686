"""``conduit audit verify|export``: check and stream the hash-chained audit log.

``verify`` walks the chain in the database (or, with ``--export FILE``, an ``audit export``
file, offline) and exits 1 at the first broken link. With ``--checkpoints FILE`` (the broker's
checkpoint file, or a syslog/webhook capture of the checkpoints) it also detects a log whose
newest events were removed (TRUNCATED) and one whose events were changed with every later
hash recomputed (REWRITTEN); the checkpoints' signatures are checked with the broker's public
recording key (``--public-key``, default ``<data_dir>/keys/recording_ed25519.pub``). Exit codes:
0 intact, 1 broken/rewritten/truncated, 2 unreadable input.

Neither command loads the server's settings: only the database URL and data directory are
read (:mod:`broker.cli.local`), so they run with ``--database-url`` alone, or with nothing in
the directory where ``conduit demo`` keeps ``.demo/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker.cli.common import add_database_arg, engine_from
from broker.runtime.errors import BrokerError

_LABELS = {"broken": "BROKEN", "rewritten": "REWRITTEN", "truncated": "TRUNCATED"}


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("audit", help="audit log")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    v = asub.add_parser("verify", help="verify the hash chain; exit 1 at the first broken link")
    add_database_arg(v)
    v.add_argument(
        "--checkpoints",
        type=Path,
        action="append",
        metavar="FILE",
        help="signed checkpoints (file, syslog or webhook capture): detect truncation and "
        "re-chaining; may be given more than once",
    )
    v.add_argument(
        "--public-key",
        type=Path,
        help="the broker's recording public key (default: <data_dir>/keys/recording_ed25519.pub)",
    )
    v.add_argument(
        "--export", type=Path, metavar="FILE", help="verify an `audit export` file, offline"
    )
    v.set_defaults(func=verify)
    e = asub.add_parser("export", help="stream events")
    add_database_arg(e)
    e.add_argument("--format", choices=["jsonl"], default="jsonl")
    e.add_argument("--since", type=int, default=0, help="only events with a larger sequence number")
    e.set_defaults(func=export)


def read_export(path: Path) -> Iterator[dict[str, Any]]:
    """The records of an ``audit export`` file; :class:`BrokerError` if unreadable."""
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise BrokerError(f"{path}:{number}: not a JSON line") from exc
                if not isinstance(record, dict):
                    raise BrokerError(f"{path}:{number}: not a JSON object")
                yield record
    except OSError as exc:
        raise BrokerError(f"reading {path}: {exc.strerror}") from exc


def _public_key_path(args: argparse.Namespace) -> Path:
    from broker.cli.local import data_dir
    from broker.keys.recording import public_key_path, recording_key_dir

    if args.public_key is not None:
        path: Path = args.public_key
        return path
    path = public_key_path(recording_key_dir(data_dir(args)))
    if not path.is_file():
        raise BrokerError(
            f"checkpoints need the broker's public key, and {path} does not exist: "
            "pass --public-key FILE",
            code="no_public_key",
        )
    return path


def verify(args: argparse.Namespace) -> int:
    from sessions.audit import AuditLog, verify_chain
    from sessions.checkpoints import Checkpoint, CheckpointError, read_checkpoints
    from sessions.clock import SystemClock
    from sessions.errors import SessionsError
    from sessions.recording import load_public_key

    checkpoints: list[Checkpoint] = []
    notes: list[str] = []
    try:
        if args.checkpoints:
            key = load_public_key(_public_key_path(args))
            for path in args.checkpoints:
                found, skipped = read_checkpoints(path, key)
                checkpoints += found
                if skipped:
                    notes.append(f"{path}: skipped {skipped} lines that are not checkpoints")
        if args.export is not None:
            result = verify_chain(read_export(args.export), checkpoints=checkpoints)
        else:
            result = AuditLog(engine_from(args), SystemClock()).verify(checkpoints=checkpoints)
    except CheckpointError as exc:
        print(f"checkpoints unusable: {exc.message}")
        return 1 if exc.code == "bad_checkpoint" else 2
    except SessionsError as exc:
        raise BrokerError(f"audit verify: {exc.message}", code=exc.code) from exc
    if not result.ok:
        label = _LABELS.get(result.problem or "broken", "BROKEN")
        print(f"audit chain {label} at event {result.first_broken_seq}: {result.reason}")
        return 1
    print(f"audit chain intact: {result.checked} events, head {result.head_hash}")
    latest = result.latest_checkpoint
    if not args.checkpoints:
        print(
            "  note: without --checkpoints, removal of the newest events or a rewritten chain "
            "cannot be detected"
        )
    elif latest is None:
        print("  note: no checkpoints found: truncation and re-chaining were not checked")
    else:
        print(
            f"  matches {result.checkpoints} signed checkpoints; the newest covers event "
            f"{latest.seq} (signed {latest.at}); events after it are not covered by a checkpoint"
        )
    for note in notes:
        print(f"  note: {note}")
    return 0


def export(args: argparse.Namespace) -> int:
    from sessions.audit import AuditLog
    from sessions.clock import SystemClock

    count = AuditLog(engine_from(args), SystemClock()).export_jsonl(
        sys.stdout, since_seq=args.since
    )
    print(f"exported {count} events", file=sys.stderr)
    return 0
