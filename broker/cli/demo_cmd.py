"""``conduit demo``: the whole system on embedded defaults, for a first look.

Starts the development IdP (deploy/dev-idp), seeds a demo plant (site, zones by Purdue
level, assets) into a SQLite database under ``.demo/``, runs the broker, and prints the URL
and the demo logins. Ctrl-C stops everything. Development only: never expose it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run broker + dev IdP + demo plant")
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="state directory")
    p.add_argument("--port", type=int, default=8080, help="broker port on 127.0.0.1")
    p.add_argument("--idp-port", type=int, default=8081, help="dev IdP port on 127.0.0.1")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from broker.demo import run

    return run(args)
