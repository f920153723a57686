"""``conduit-agent``: the zone agent's command line.

The agent (enrollment, outbound tunnel, declared assets) is built by the agents issue; until
then this command only reports its version and says so, and exits non-zero for anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

VERSION = "0.1.0"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conduit-agent", description="Conduit zone agent")
    parser.add_argument("--version", action="version", version=f"conduit-agent {VERSION}")
    parser.add_argument("command", nargs="?", help="join | run | stop-all (not available yet)")
    args = parser.parse_args(argv)
    if args.command:
        print(f"conduit-agent: '{args.command}' is not available in this version", file=sys.stderr)
        return 2
    parser.print_help()
    return 0
