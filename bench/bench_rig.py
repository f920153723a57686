"""The whole real stack for SSH/OT benchmarks, in one process: dev IdP, broker, SshRig.

``conduit_rig(workdir)`` yields ``(settings, broker, rig)`` and stops all of it on exit.
Used by the ``--serve`` side of bench/ssh_sessions.py and bench/modbus_sessions.py, so the
broker's CPU can be read from its own process.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class ChildProcess:
    """``script`` run again in another mode (``args``): the first stdout line is its JSON
    info; it stops when its stdin closes (:meth:`stop`). stderr goes to ``log``."""

    def __init__(self, script: str, args: list[str], log: Path) -> None:
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise SystemExit(f"{args[0]} process failed; see {log}")
        self.info: dict[str, Any] = json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@contextmanager
def conduit_rig(
    workdir: Path, extra_endpoints: list[tuple[str, int, str]] | None = None
) -> Iterator[tuple[Any, Any, Any]]:
    from broker.dev.devidp import start_dev_idp
    from broker.runtime.settings import load_settings
    from tests.harness.broker import start_broker
    from tests.harness.ports import free_port
    from tests.harness.ssh_session import SshRig

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(24)
    client = {
        "client_id": "conduit",
        "client_secret": secret,
        "redirect_uris": [f"{base}/auth/callback"],
        "post_logout_redirect_uris": [f"{base}/"],
    }
    idp = start_dev_idp(workdir / "idp", [client])
    broker = rig = None
    try:
        settings = load_settings(
            None,
            mode="dev",
            public_url=base,
            listen_port=port,
            database_url=f"sqlite:///{workdir / 'conduit.db'}",
            data_dir=workdir / "var",
            agents={"listen_port": 0},
            ssh={"listen_port": 0},
            oidc={"issuer": idp.issuer, "client_id": "conduit", "client_secret": secret},
        )
        broker = start_broker(settings)
        rig = SshRig.build(broker, workdir / "rig", extra_endpoints=extra_endpoints)
        yield settings, broker, rig
    finally:
        if rig is not None:
            rig.close()
        if broker is not None:
            broker.stop()
        idp.stop()
