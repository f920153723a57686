"""The ``conduit`` command: broker server, admin and vendor commands.

Each sub-command lives in its own module and registers itself through ``add_parser``;
``main`` maps every :class:`~broker.errors.BrokerError` to a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from broker.cli import (
    access_cmd,
    agents_cmd,
    audit_cmd,
    db_cmd,
    demo_cmd,
    login_cmd,
    plant_cmd,
    policy_cmd,
    serve_cmd,
    ssh_cmd,
    users_cmd,
    verify_cmd,
)
from broker.errors import BrokerError

COMMANDS = (
    serve_cmd,
    db_cmd,
    login_cmd,
    access_cmd,
    agents_cmd,
    audit_cmd,
    policy_cmd,
    plant_cmd,
    demo_cmd,
    verify_cmd,
    ssh_cmd,
    users_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conduit", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokerError as exc:
        print(f"conduit: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
