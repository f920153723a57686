"""Run the real ``conduit`` command (``python -m broker``) in a clean environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
from sqlmodel import select

from sessions.db import session_scope
from sessions.models import User
from tests.harness.broker import RunningBroker, web_login
from tests.harness.wait import TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any ``CONDUIT_*`` setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONDUIT_") or k == "CONDUIT_AGENT_DEBUG"
    }
    env.update(extra)
    return env


def run_conduit(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env or clean_env(),
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(broker: RunningBroker, tmp_path: Path, username: str) -> dict[str, str]:
    """A config dir holding a broker token for ``username`` (who signs in once, for real)."""
    with httpx2.Client(timeout=TIMEOUT_S) as client:
        web_login(client, broker.url, username, f"{username}-demo-pw")
    with session_scope(broker.services.engine) as db:
        user = db.exec(select(User).where(User.sub.endswith(username))).one()  # type: ignore[attr-defined]
    token, expires = broker.services.tokens.issue(user.id)
    home = tmp_path / username
    (home / "conduit").mkdir(parents=True)
    creds = home / "conduit" / "credentials.json"
    creds.write_text(
        json.dumps(
            {
                "current": broker.url,
                "brokers": {
                    broker.url: {
                        "broker": broker.url,
                        "access_token": token,
                        "expires_at": expires.isoformat(),
                        "name": username,
                        "email": "",
                    }
                },
            }
        )
    )
    creds.chmod(0o600)
    return clean_env(XDG_CONFIG_HOME=str(home))
