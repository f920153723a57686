"""The ``conduit`` command: broker server, admin and vendor commands.

Each sub-command lives in its own module and registers itself through ``add_parser``.
``main`` is the one place that catches errors: every error ends the command with one line on
stderr (``conduit: what failed; what to do``) and a non-zero exit code (see
:mod:`broker.cli.failures`); ``conduit --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

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
from broker.cli.failures import describe

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


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and where to get help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="conduit", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (for bug reports)"
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
    except (Exception, KeyboardInterrupt) as exc:
        if args.debug:
            raise
        message, code = describe(exc)
        print(f"conduit: {message}", file=sys.stderr)
    return code
