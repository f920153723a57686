"""``conduit demo``: the whole system on embedded defaults, for a first look.

Starts the development IdP (deploy/dev-idp), seeds a demo plant (site, zones by Purdue
level, assets) into a SQLite database under ``.demo/``, runs the broker, Debian's sshd for
the SSH assets (as root), a simulated PLC and an agent, and prints the URLs and the demo
logins. Ports 0 pick free ones (the banner prints the real URLs; the SSH front door and agent
gateway follow ``CONDUIT_SSH__LISTEN_PORT`` / ``CONDUIT_AGENTS__LISTEN_PORT``). Ctrl-C stops
everything and exits 0. Development only: never expose it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run broker + dev IdP + demo plant")
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="state directory")
    p.add_argument(
        "--port", type=int, default=8080, help="broker port on 127.0.0.1 (0: any free port)"
    )
    p.add_argument(
        "--idp-port", type=int, default=8081, help="dev IdP port on 127.0.0.1 (0: any free port)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from broker.dev.demo import run

    return run(args)
