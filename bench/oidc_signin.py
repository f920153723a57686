"""Benchmark: full OIDC web sign-in round trips against the real dev IdP.

Starts the dev IdP (node, oidc-provider) and the broker (``conduit serve`` in its own
process, SQLite), then signs in N times with a fresh HTTP client each time, as a browser
would: GET /login -> IdP authorize -> IdP login form POST -> broker callback -> session.
Reports p50/p99 of the whole round trip and of the broker's own two requests (/login and
/auth/callback: discovery is cached, so the callback includes the code exchange with the IdP,
ID-token signature and claim checks, userinfo, user upsert, session and audit writes).

    .venv/bin/python bench/oidc_signin.py --sign-ins 200 [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doc_section import write_section

from broker.dev.devidp import start_dev_idp
from tests.harness.idp import idp_login
from tests.harness.ports import free_port

MARK_BEGIN = "<!-- bench:oidc_signin:begin -->"
MARK_END = "<!-- bench:oidc_signin:end -->"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_sign_in(broker: str) -> tuple[float, float]:
    with httpx2.Client(timeout=10.0) as client:
        t0 = time.perf_counter()
        first = client.get(f"{broker}/login")
        t1 = time.perf_counter()
        assert first.status_code == 302, first.text
        answer = idp_login(client, first.headers["location"], "alice", "alice-demo-pw")
        t2 = time.perf_counter()
        done = client.get(answer.headers["location"])
        t3 = time.perf_counter()
        assert done.status_code == 303, done.text
    return (t3 - t0) * 1000, ((t1 - t0) + (t3 - t2)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sign-ins", type=int, default=200)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conduit-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(24)
    idp = start_dev_idp(
        work / "idp",
        [
            {
                "client_id": "conduit",
                "client_secret": secret,
                "redirect_uris": [f"{base}/auth/callback"],
                "post_logout_redirect_uris": [f"{base}/"],
            }
        ],
    )
    env = {
        **os.environ,
        "CONDUIT_PUBLIC_URL": base,
        "CONDUIT_LISTEN_PORT": str(port),
        "CONDUIT_DATABASE_URL": f"sqlite:///{work / 'conduit.db'}",
        "CONDUIT_DATA_DIR": str(work / "var"),
        "CONDUIT_OIDC__ISSUER": idp.issuer,
        "CONDUIT_OIDC__CLIENT_SECRET": secret,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx2.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("broker did not start")
            time.sleep(0.1)
        for _ in range(5):  # warm-up: discovery, JWKS, imports
            one_sign_in(base)
        total, broker_ms = [], []
        for _ in range(args.sign_ins):
            t, b = one_sign_in(base)
            total.append(t)
            broker_ms.append(b)
    finally:
        server.terminate()
        server.wait(10)
        idp.stop()
    rows = [
        ("full round trip (client-observed)", total),
        ("broker share: /login + /auth/callback", broker_ms),
    ]
    command = f".venv/bin/python bench/oidc_signin.py --sign-ins {args.sign_ins}"
    runtime = f"{platform.python_implementation()} {platform.python_version()}"
    lines = [
        MARK_BEGIN,
        "## OIDC web sign-in round trip",
        "",
        f"Command: `{command}` (also `make bench`).",
        f"Machine: {os.cpu_count()} vCPU, {runtime}; dev IdP = npm oidc-provider on node; "
        "broker = `conduit serve` (uvicorn, SQLite WAL); all on 127.0.0.1; one sign-in at a "
        "time, each with a fresh cookie jar.",
        "",
        "| measure | n | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|",
    ]
    for name, values in rows:
        lines.append(
            f"| {name} | {len(values)} | {pct(values, 50):.1f} | {pct(values, 99):.1f} | "
            f"{statistics.fmean(values):.1f} |"
        )
    lines.append(MARK_END)
    report = "\n".join(lines)
    print(report)
    if args.write:
        write_section(args.write, report, MARK_BEGIN, MARK_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
