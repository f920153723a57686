"""``conduit audit verify|export``: check and stream the hash-chained audit log."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.cli.common import add_database_arg, engine_from


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("audit", help="audit log")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="verify the hash chain; exit 1 at the first broken link")
    add_database_arg(v)
    v.set_defaults(func=verify)
    e = asub.add_parser("export", help="stream events")
    add_database_arg(e)
    e.add_argument("--format", choices=["jsonl"], default="jsonl")
    e.add_argument("--since", type=int, default=0, help="only events with a larger sequence number")
    e.set_defaults(func=export)


def verify(args: argparse.Namespace) -> int:
    from sessions.audit import AuditLog
    from sessions.clock import SystemClock

    result = AuditLog(engine_from(args), SystemClock()).verify()
    if result.ok:
        print(f"audit chain intact: {result.checked} events, head {result.head_hash}")
        return 0
    print(f"audit chain BROKEN at event {result.first_broken_seq}: {result.reason}")
    return 1


def export(args: argparse.Namespace) -> int:
    from sessions.audit import AuditLog
    from sessions.clock import SystemClock

    count = AuditLog(engine_from(args), SystemClock()).export_jsonl(
        sys.stdout, since_seq=args.since
    )
    print(f"exported {count} events", file=sys.stderr)
    return 0
