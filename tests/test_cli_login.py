"""`conduit login` (device and loopback flows) and `conduit whoami` against the real IdP."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.harness.broker import (
    RunningBroker,
    audit_events,
    device_token,
    form_values,
    web_login,
)
from tests.harness.cli import run_conduit
from tests.harness.wait import TIMEOUT_S, wait_until

REPO = Path(__file__).resolve().parents[1]
CONDUIT = [sys.executable, "-m", "broker"]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PYTHONPATH"] = str(REPO)
    return env


def _start_device_login(
    broker: RunningBroker, env: dict[str, str]
) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [*CONDUIT, "login", "--no-browser", "--broker", broker.url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    url = lines[1].strip()
    code = lines[2].strip().rsplit(" ", 1)[-1]
    assert url == f"{broker.url}/cli/activate" and "type the code" in lines[2], lines
    return proc, url, code


def _type_code(http: httpx2.Client, broker: RunningBroker, page: str, code: str) -> str:
    """The person types the code their terminal shows; returns the confirmation page."""
    confirm = http.post(f"{broker.url}/cli/activate", data={**form_values(page), "user_code": code})
    assert confirm.status_code == 200, confirm.text
    return confirm.text


def _whoami(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONDUIT, "whoami", *extra],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )


def test_device_login_then_whoami(
    make_broker: Callable[..., RunningBroker], http: httpx2.Client, cli_env: dict[str, str]
) -> None:
    broker = make_broker(device_audit_interval_s=0.2)
    proc, _, code = _start_device_login(broker, cli_env)
    # A second client (the vendor's browser elsewhere) signs in and types the code.
    signed_in = web_login(http, broker.url, "alice", "alice-demo-pw", next_path="/cli/activate")
    page = http.get(broker.url + signed_in.headers["location"])
    assert 'id="user_code"' in page.text and code not in page.text
    confirm = _type_code(http, broker, page.text, code)
    assert code in confirm and "Alice Vendor" in confirm and 'id="requester-ip"' in confirm
    done = http.post(
        f"{broker.url}/cli/activate", data={**form_values(confirm), "decision": "approve"}
    )
    assert "CLI signed in" in done.text
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Signed in to" in out and "Alice Vendor" in out and "roles: vendor" in out
    creds = Path(cli_env["XDG_CONFIG_HOME"]) / "conduit" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
    token = json.loads(creds.read_text())["brokers"][broker.url]["access_token"]
    assert token not in out + err  # never printed
    who = _whoami(cli_env)
    assert who.returncode == 0, who.stderr
    assert (
        "Alice Vendor" in who.stdout
        and "Roles:    vendor" in who.stdout
        and "Expires:" in who.stdout
    )
    wait_until(
        lambda: audit_events(broker, "cli.device_started"), "aggregated start event", timeout=10
    )
    kinds = [
        (e["kind"], e["outcome"]) for e in audit_events(broker) if e["kind"].startswith("cli.")
    ]
    # The anonymous start is audited in aggregate (per address and interval), whenever it lands.
    assert sorted(kinds) == [
        ("cli.activate", "ok"),
        ("cli.device_started", "ok"),
        ("cli.token", "ok"),
    ]
    assert audit_events(broker, "cli.device_started")[0]["details"]["count"] == 1
    # the device code is single use
    reuse = http.post(
        f"{broker.url}/api/cli/token",
        json={
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": "not-a-real-code",
        },
    )
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"


def test_device_login_denied_in_browser(
    broker: RunningBroker, http: httpx2.Client, cli_env: dict[str, str]
) -> None:
    proc, _, code = _start_device_login(broker, cli_env)
    signed_in = web_login(http, broker.url, "alice", "alice-demo-pw", next_path="/cli/activate")
    page = http.get(broker.url + signed_in.headers["location"])
    confirm = _type_code(http, broker, page.text, code)
    http.post(f"{broker.url}/cli/activate", data={**form_values(confirm), "decision": "deny"})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "access_denied" in err
    assert _whoami(cli_env).returncode == 1


def test_unknown_user_code_is_refused(broker: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, broker.url, "alice", "alice-demo-pw")
    page = http.get(f"{broker.url}/cli/activate")
    answer = http.post(
        f"{broker.url}/cli/activate", data={**form_values(page.text), "user_code": "BBBB-CCCC"}
    )
    assert answer.status_code == 400 and 'id="code-error"' in answer.text
    [event] = audit_events(broker, "cli.activate")
    assert event["outcome"] == "rejected"


def _loopback_login(
    broker: RunningBroker, cli_env: dict[str, str], **extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """`conduit login` with tests.harness.cli_browser as the vendor's browser (olga signs in)."""
    env = {
        **cli_env,
        "BROWSER": f"{sys.executable} -m tests.harness.cli_browser %s",
        "CONDUIT_TEST_USER": "olga",
        "CONDUIT_TEST_PASSWORD": "olga-demo-pw",
        **extra,
    }
    done = run_conduit("login", "--broker", broker.url, "--timeout", "20", env=env)
    return done, env


def test_loopback_login_with_browser(broker: RunningBroker, cli_env: dict[str, str]) -> None:
    done, env = _loopback_login(broker, cli_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Olga Owner" in done.stdout and "roles: approver" in done.stdout
    who = _whoami(env, "--json")
    assert json.loads(who.stdout)["roles"] == ["approver"]


def test_loopback_denied(broker: RunningBroker, cli_env: dict[str, str]) -> None:
    done, _ = _loopback_login(broker, cli_env, CONDUIT_TEST_DECISION="deny")
    assert done.returncode == 2 and "access_denied" in done.stderr


def test_loopback_authorize_refuses_non_loopback_redirect(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    web_login(http, broker.url, "alice", "alice-demo-pw")
    resp = http.get(
        f"{broker.url}/cli/authorize",
        params={
            "redirect_uri": "http://evil.example:8000/callback",
            "code_challenge": "x" * 43,
            "state": "s",
        },
    )
    assert resp.status_code == 400 and "loopback" in resp.text


def test_loopback_code_needs_the_pkce_verifier(broker: RunningBroker, http: httpx2.Client) -> None:
    from tests.harness.idp import pkce_pair

    verifier, challenge = pkce_pair()
    web_login(http, broker.url, "alice", "alice-demo-pw")
    redirect = "http://127.0.0.1:9/callback"
    page = http.get(
        f"{broker.url}/cli/authorize",
        params={"redirect_uri": redirect, "code_challenge": challenge, "state": "st"},
    )
    answer = http.post(
        f"{broker.url}/cli/authorize", data={**form_values(page.text), "decision": "approve"}
    )
    code = dict(p.split("=") for p in urlsplit(answer.headers["location"]).query.split("&"))["code"]
    bad = http.post(
        f"{broker.url}/api/cli/token",
        json={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": "wrong" * 10,
            "redirect_uri": redirect,
        },
    )
    assert bad.json()["error"] == "invalid_grant"
    # A wrong verifier does not burn the code: only a correct redemption consumes it.
    good = http.post(
        f"{broker.url}/api/cli/token",
        json={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": redirect,
        },
    )
    assert good.status_code == 200 and good.json()["access_token"].startswith("cdt_")
    again = http.post(
        f"{broker.url}/api/cli/token",
        json={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": redirect,
        },
    )
    assert again.json()["error"] == "invalid_grant"


def test_whoami_refuses_world_readable_credentials(cli_env: dict[str, str]) -> None:
    creds = Path(cli_env["XDG_CONFIG_HOME"]) / "conduit" / "credentials.json"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({"current": None, "brokers": {}}))
    creds.chmod(0o644)
    who = _whoami(cli_env)
    assert who.returncode == 2 and "readable by other users" in who.stderr


def test_revoked_or_forged_token_is_refused_by_the_api(
    broker: RunningBroker, http: httpx2.Client, cli_env: dict[str, str]
) -> None:
    """Revocation through the public surface: ``conduit logout`` revokes the token at the
    broker (not just the local file), so a copy of it is refused at once."""
    web_login(http, broker.url, "alice", "alice-demo-pw")
    token, expires = device_token(http, broker.url)
    creds = Path(cli_env["XDG_CONFIG_HOME"]) / "conduit" / "credentials.json"
    creds.parent.mkdir(parents=True, mode=0o700)
    entry = {"broker": broker.url, "access_token": token, "expires_at": expires}
    creds.write_text(
        json.dumps(
            {"current": broker.url, "brokers": {broker.url: {**entry, "name": "", "email": ""}}}
        )
    )
    creds.chmod(0o600)
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx2.Client(timeout=TIMEOUT_S) as fresh:
        assert fresh.get(f"{broker.url}/api/whoami", headers=bearer).status_code == 200
        out = run_conduit("logout", env=cli_env)
        assert out.returncode == 0 and "token revoked" in out.stdout, out.stdout + out.stderr
        assert fresh.get(f"{broker.url}/api/whoami", headers=bearer).status_code == 401
        assert (
            fresh.get(
                f"{broker.url}/api/whoami", headers={"Authorization": "Bearer cdt_forged"}
            ).status_code
            == 401
        )
    [revoked] = audit_events(broker, "credentials.revoked")
    assert (
        revoked["details"]["scope"] == "token" and revoked["details"]["reason"] == "conduit logout"
    )
