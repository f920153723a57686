"""``conduit db upgrade|revision``: schema migrations."""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli.common import add_database_arg, engine_from


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dsub.add_parser("upgrade", help="apply all migrations")
    add_database_arg(up)
    up.set_defaults(func=upgrade)
    cur = dsub.add_parser("current", help="print the schema revision")
    add_database_arg(cur)
    cur.set_defaults(func=current)


def upgrade(args: argparse.Namespace) -> int:
    from sessions.db import current_revision, migrate

    engine = engine_from(args, create=True)
    migrate(engine)
    print(f"database at revision {current_revision(engine)}")
    return 0


def current(args: argparse.Namespace) -> int:
    from sessions.db import current_revision

    print(current_revision(engine_from(args)) or "empty")
    return 0
