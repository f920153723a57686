"""No one-time secret from a URL reaches the broker's access log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from broker.runtime.logsafe import DropQueryStrings
from tests.harness.ports import free_port

REPO = Path(__file__).resolve().parents[1]


def test_filter_strips_query_from_uvicorn_access_records() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/auth/callback?code=SECRET&state=S2", "1.1", 303),
        None,
    )
    assert DropQueryStrings().filter(record)
    assert "SECRET" not in record.getMessage() and "/auth/callback" in record.getMessage()


def test_served_broker_logs_no_codes(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env.update(
        {
            "CONDUIT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "CONDUIT_LISTEN_PORT": str(port),
            # Never the default agent (7022) and SSH (2222) ports: a running demo holds them.
            "CONDUIT_AGENTS__LISTEN_PORT": "0",
            "CONDUIT_SSH__LISTEN_PORT": "0",
            "CONDUIT_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
            "CONDUIT_DATA_DIR": str(tmp_path / "var"),
            "CONDUIT_OIDC__ISSUER": f"http://127.0.0.1:{free_port()}",
        }
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx2.HTTPError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        resp = httpx2.get(
            f"http://127.0.0.1:{port}/auth/callback?code=TOPSECRETCODE&state=STATE42", timeout=30
        )
        assert resp.status_code == 400
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert "/auth/callback" in text  # the request was logged ...
    assert "TOPSECRETCODE" not in text and "STATE42" not in text  # ... without its secrets
