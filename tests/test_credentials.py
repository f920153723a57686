"""Identity, credentials and evidence (issue 13, items 2-5), attacked through the public
surface of a running broker with the real IdP (and real sshd, agent, Chromium where needed):
each attack is refused with a clear message and leaves an audit event.

2. cookie-only cross-site calls to the JSON API;
3. device-flow consent phishing and anonymous start floods;
4. tokens and certificates that outlive logout, sign-out, revocation, role loss;
5. MFA credit taken from the user's latest sign-in instead of the credential in use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser
from sqlmodel import col, select

from broker.dev.demo import seed
from sessions.db import session_scope
from sessions.models import AccessRequest, AgentJoinToken, CliAuthorization, SshCertificate, User
from sessions.testing import ManualClock
from tests.conftest import CLIENT_ID
from tests.harness.broker import (
    RunningBroker,
    audit_events,
    device_token,
    form_values,
    same_origin_api,
    web_login,
)
from tests.harness.cli import clean_env, run_conduit
from tests.harness.components import needs
from tests.harness.idp import DEFAULT_USERS_PATH, RunningIdP, start_dev_idp
from tests.harness.ports import free_port
from tests.harness.ssh_session import ASSET, SshRig
from tests.harness.wait import wait_until

EVIL = "http://evil.example"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MIA_OTP = "135790"


@pytest.fixture
def clients() -> Iterator[Callable[[], httpx2.Client]]:
    with ExitStack() as stack:
        yield lambda: stack.enter_context(httpx2.Client(timeout=15.0, follow_redirects=False))


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


def _signed_in(
    new: Callable[[], httpx2.Client], broker: RunningBroker, name: str, otp: str | None = None
) -> httpx2.Client:
    client = new()
    answer = web_login(client, broker.url, name, f"{name}-demo-pw", otp=otp)
    assert answer.status_code == 303, answer.text
    return client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _user_id(broker: RunningBroker, name: str) -> str:
    with session_scope(broker.services.engine) as db:
        user = db.exec(select(User).where(col(User.sub).endswith(name))).one()
        return user.id


# --- 2. cross-site calls on the session cookie ---------------------------------------------

# What another origin can make a signed-in browser send without CORS: a text/plain or form
# POST (the classic text/plain body that is valid JSON), and a JSON POST from a page that
# cannot read the session's CSRF token.
CROSS_SITE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("text/plain", {"headers": {"Content-Type": "text/plain", "Origin": EVIL}}),
    (
        "form",
        {"headers": {"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL}},
    ),
    ("json, no csrf header", {"headers": {"Content-Type": "application/json"}}),
)


def _attack(client: httpx2.Client, url: str, body: dict[str, Any], origin_ok: str) -> None:
    """Every cross-site shape is refused with 403 and a message naming what is missing."""
    for name, shape in CROSS_SITE:
        headers = dict(shape["headers"])
        headers.setdefault("Origin", origin_ok)
        resp = client.post(url, content=json.dumps(body), headers=headers)
        assert resp.status_code == 403, (name, resp.text)
        answer = resp.json()
        assert answer["error"] == "csrf_refused", (name, answer)
        assert "X-CSRF-Token" in answer["message"] and "bearer token" in answer["message"]


def _csrf_events(broker: RunningBroker, path: str) -> list[dict[str, Any]]:
    return [e for e in audit_events(broker, "auth.csrf_refused") if e["subject"] == path]


def test_cross_site_approval_on_the_cookie_is_refused(
    plant: RunningBroker, clients: Callable[[], httpx2.Client]
) -> None:
    alice = same_origin_api(_signed_in(clients, plant, "alice"), plant.url)
    made = alice.post(
        f"{plant.url}/api/requests", json={"asset": "hist-01", "duration": "1h", "reason": "diag"}
    )
    assert made.status_code == 201, made.text
    path = f"/api/requests/{made.json()['id']}/approve"
    olga = _signed_in(clients, plant, "olga")

    _attack(olga, plant.url + path, {}, plant.url)
    assert alice.get(f"{plant.url}/api/requests").json()[0]["state"] == "pending"
    events = _csrf_events(plant, path)
    assert len(events) == 3 and {e["outcome"] for e in events} == {"rejected"}
    assert {e["actor"] for e in events} == {_user_id(plant, "olga")}
    assert "Content-Type is text/plain" in events[0]["details"]["reason"]
    # A wrong Origin is refused even with the right token (a token leaked to another page).
    same_origin_api(olga, plant.url)
    foreign = olga.post(plant.url + path, json={}, headers={"Origin": EVIL})
    assert foreign.status_code == 403 and EVIL in foreign.json()["message"]
    # The same-origin call with the session's proof works.
    ok = olga.post(plant.url + path, json={})
    assert ok.status_code == 200 and ok.json()["approved"] is True, ok.text


def test_cross_site_lockout_on_the_cookie_is_refused(
    plant: RunningBroker, clients: Callable[[], httpx2.Client]
) -> None:
    adam = _signed_in(clients, plant, "adam")
    _attack(adam, f"{plant.url}/api/lockout", {"on": True, "reason": "pwned"}, plant.url)
    assert adam.get(f"{plant.url}/api/lockout").json() == {"vendor_lockout": False}
    assert len(_csrf_events(plant, "/api/lockout")) == 3
    assert not audit_events(plant, "lockout.on")
    same_origin_api(adam, plant.url)
    on = adam.post(f"{plant.url}/api/lockout", json={"on": True, "reason": "drill"})
    assert on.status_code == 200 and on.json()["vendor_lockout"] is True


def test_cross_site_agent_join_token_on_the_cookie_is_refused(
    plant: RunningBroker, clients: Callable[[], httpx2.Client]
) -> None:
    adam = _signed_in(clients, plant, "adam")
    url = f"{plant.url}/api/agents/tokens"
    _attack(adam, url, {"site": "Riverside Plant", "ttl": "15m"}, plant.url)
    with session_scope(plant.services.engine) as db:
        assert db.exec(select(AgentJoinToken)).all() == []
    assert len(_csrf_events(plant, "/api/agents/tokens")) == 3
    # Scripts and tools use a bearer token: no cookie, so no CSRF proof needed.
    token, _ = device_token(adam, plant.url)
    made = httpx2.post(url, json={"site": "Riverside Plant", "ttl": "15m"}, headers=_bearer(token))
    assert made.status_code == 201, made.text


class _EvilSite:
    """A page on another origin (another port of the same host: same *site*, so the browser
    sends the Lax session cookie) that auto-submits a text/plain form shaped as JSON."""

    def __init__(self, target: str) -> None:
        body = (
            "<!doctype html><form id=f method=post enctype=text/plain "
            f'action="{target}"><input name=\'{{"on": true, "reason": "pwned", "pad": "\' '
            "value='\"}'></form><script>document.getElementById('f').submit()</script>"
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.browser
def test_a_real_cross_origin_page_cannot_switch_the_lockout(
    plant: RunningBroker, chromium: Browser
) -> None:
    context = chromium.new_context()
    page = context.new_page()
    page.goto(plant.url + "/")
    page.click("#signin-main")
    page.fill("#username", "adam")
    page.fill("#password", "adam-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(plant.url + "/")
    evil = _EvilSite(f"{plant.url}/api/lockout")
    try:
        with page.expect_response(f"{plant.url}/api/lockout") as answer:
            page.goto(evil.url)
        assert answer.value.status == 403
        assert "csrf_refused" in answer.value.text()
    finally:
        evil.close()
        context.close()
    assert not plant.services.access.lockout_active()
    [event] = _csrf_events(plant, "/api/lockout")
    assert event["details"]["origin"] == evil.url.rstrip("/")
    assert event["actor"] == _user_id(plant, "adam")


# --- 3. device-flow phishing and floods ------------------------------------------------------


def _start(broker: RunningBroker, name: str = "conduit CLI") -> httpx2.Response:
    return httpx2.post(f"{broker.url}/api/cli/device", json={"client_name": name})


def _poll(broker: RunningBroker, device_code: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx2.post(
        f"{broker.url}/api/cli/token",
        json={"grant_type": DEVICE_GRANT, "device_code": device_code},
    ).json()
    return answer


def test_device_sign_in_cannot_be_phished(
    make_broker: Callable[..., RunningBroker], clients: Callable[[], httpx2.Client]
) -> None:
    clock = ManualClock(datetime.now(UTC))
    broker = make_broker(clock=clock, device_audit_interval_s=0.2)
    lure = "Conduit IT: mandatory re-verification"
    started = _start(broker, lure)
    assert started.status_code == 200
    offer = started.json()
    assert "verification_uri_complete" not in offer  # no link that carries the code
    assert offer["expires_in"] == 300

    # The admin follows the attacker's pre-filled link: the code in it is ignored.
    adam = _signed_in(clients, broker, "adam")
    page = adam.get(f"{broker.url}/cli/activate", params={"user_code": offer["user_code"]})
    assert page.status_code == 200
    assert lure not in page.text and offer["user_code"] not in page.text
    assert form_values(page.text)["user_code"] == ""
    clicked = adam.post(f"{broker.url}/cli/activate", data=form_values(page.text))
    assert clicked.status_code == 400 and 'id="code-error"' in clicked.text
    [refused] = audit_events(broker, "cli.activate")
    assert refused["outcome"] == "rejected" and "unknown" in refused["details"]["reason"]

    # Even with the code typed in, the page says where and when the request came from and
    # shows nothing the requester wrote.
    typed = adam.post(
        f"{broker.url}/cli/activate",
        data={**form_values(page.text), "user_code": offer["user_code"]},
    )
    assert typed.status_code == 200 and lure not in typed.text
    assert 'id="requester-ip">127.0.0.1<' in typed.text and 'id="request-age"' in typed.text
    assert "Allow only if you ran <code>conduit login</code> yourself" in typed.text

    assert _poll(broker, offer["device_code"])["error"] == "authorization_pending"
    clock.advance(301)  # short expiry: the attacker's code dies unused
    assert _poll(broker, offer["device_code"])["error"] in ("expired_token", "invalid_grant")
    wait_until(
        lambda: _device_rows(broker) == 0,
        "expired sign-in requests purged by the broker",
        timeout=10,
    )
    [aggregate] = audit_events(broker, "cli.device_started")
    assert aggregate["details"]["count"] == 1 and aggregate["source_ip"] == "127.0.0.1"


def _device_rows(broker: RunningBroker) -> int:
    with session_scope(broker.services.engine) as db:
        return len(db.exec(select(CliAuthorization)).all())


def test_anonymous_device_starts_are_limited_per_address_and_audited_in_aggregate(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    clock = ManualClock(datetime.now(UTC))
    broker = make_broker(clock=clock, device_pending_per_ip=3, device_audit_interval_s=0.2)
    assert [_start(broker, f"flood {i}").status_code for i in range(3)] == [200, 200, 200]
    refused = _start(broker)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "too many pending CLI sign-ins from 127.0.0.1" in refused.json()["error_description"]
    cli = run_conduit(
        "login",
        "--no-browser",
        "--broker",
        broker.url,
        env=clean_env(XDG_CONFIG_HOME=str(tmp_path / "cfg")),
    )
    assert cli.returncode == 2 and "too many pending CLI sign-ins" in cli.stderr

    def tallied() -> bool:
        started = sum(e["details"]["count"] for e in audit_events(broker, "cli.device_started"))
        refused = sum(e["details"]["count"] for e in audit_events(broker, "cli.device_refused"))
        return (started, refused) == (3, 2)

    wait_until(tallied, "aggregated device start events", timeout=10)
    events = audit_events(broker, "cli.device_started") + audit_events(broker, "cli.device_refused")
    assert len(events) <= 4  # one per interval and outcome, not one per start
    assert {e["outcome"] for e in audit_events(broker, "cli.device_refused")} == {"rejected"}
    clock.advance(301)
    assert _start(broker).status_code == 200  # expired ones purged, the address may start again
    assert _device_rows(broker) == 1


# --- 4. revocation -----------------------------------------------------------------------------


def test_web_sign_out_revokes_the_tokens_and_certificates_it_approved(
    plant: RunningBroker, clients: Callable[[], httpx2.Client], tmp_path: Path
) -> None:
    adam = _signed_in(clients, plant, "adam")
    token, _ = device_token(adam, plant.url)
    other_browser = _signed_in(clients, plant, "adam")
    other_token, _ = device_token(other_browser, plant.url)
    same_origin_api(adam, plant.url)
    key = _keygen(tmp_path / "adam")
    minted = adam.post(
        f"{plant.url}/api/ssh/cert", json={"public_key": key.with_suffix(".pub").read_text()}
    )
    assert minted.status_code == 201, minted.text
    assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(token)).status_code == 200

    page = adam.get(f"{plant.url}/whoami")
    out = adam.post(f"{plant.url}/logout", data={"csrf": form_values(page.text)["csrf"]})
    assert out.status_code == 303
    assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(token)).status_code == 401
    # A token approved from another browser session is that session's business.
    assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(other_token)).status_code == 200
    with session_scope(plant.services.engine) as db:
        cert = db.get(SshCertificate, minted.json()["serial"])
        assert cert is not None and cert.revoke_reason == "signed out"
    [logout] = audit_events(plant, "auth.logout")
    assert len(logout["details"]["cli_credentials"]) == 1
    assert logout["details"]["certificates"] == [minted.json()["serial"]]
    [revoked] = audit_events(plant, "credentials.revoked")
    assert revoked["details"]["scope"] == "session" and revoked["actor"] == _user_id(plant, "adam")
    # "Sign out everywhere" (who-am-I page) ends every credential of the user.
    page = other_browser.get(f"{plant.url}/whoami")
    everywhere = {**form_values(page.text), "everywhere": "1"}
    assert other_browser.post(f"{plant.url}/logout", data=everywhere).status_code == 303
    assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(other_token)).status_code == 401
    assert audit_events(plant, "credentials.revoked")[-1]["details"]["scope"] == "user"


def test_admin_revokes_every_credential_of_a_user_by_api_cli_and_page(
    plant: RunningBroker, clients: Callable[[], httpx2.Client], tmp_path: Path
) -> None:
    adam = _signed_in(clients, plant, "adam")
    admin_token, expires = device_token(adam, plant.url)
    env = _cli_env(tmp_path / "adam", plant, admin_token, expires)

    def alice_token() -> str:
        token, _ = device_token(_signed_in(clients, plant, "alice"), plant.url)
        assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(token)).status_code == 200
        return token

    # API
    token = alice_token()
    alice_id = _user_id(plant, "alice")
    vendor_try = httpx2.post(
        f"{plant.url}/api/users/{alice_id}/revoke", json={"reason": "x"}, headers=_bearer(token)
    )
    assert vendor_try.status_code == 403
    no_reason = httpx2.post(
        f"{plant.url}/api/users/{alice_id}/revoke", json={}, headers=_bearer(admin_token)
    )
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["message"]
    done = httpx2.post(
        f"{plant.url}/api/users/{alice_id}/revoke",
        json={"reason": "laptop stolen"},
        headers=_bearer(admin_token),
    )
    assert done.status_code == 200 and len(done.json()["revoked"]["cli_credentials"]) == 1
    assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(token)).status_code == 401

    # CLI
    token = alice_token()
    listed = run_conduit("users", "list", env=env)
    assert listed.returncode == 0 and "alice@acme-automation.example" in listed.stdout
    out = run_conduit(
        "users", "revoke", "alice@acme-automation.example", "--reason", "left ACME", env=env
    )
    assert out.returncode == 0 and "Revoked 1 token(s)" in out.stdout, out.stdout + out.stderr
    assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(token)).status_code == 401

    # Page
    token = alice_token()
    page = adam.get(f"{plant.url}/admin/users")
    assert page.status_code == 200 and f'id="user-{alice_id}"' in page.text
    posted = adam.post(
        f"{plant.url}/admin/users/{alice_id}/revoke",
        data={"csrf": form_values(page.text)["csrf"], "reason": "contract ended"},
    )
    assert posted.status_code == 303
    assert "revoked 1 token(s)" in adam.get(plant.url + posted.headers["location"]).text
    assert httpx2.get(f"{plant.url}/api/whoami", headers=_bearer(token)).status_code == 401

    events = [
        e for e in audit_events(plant, "credentials.revoked") if e["details"]["scope"] == "user"
    ]
    assert [e["subject"] for e in events] == [f"user:{alice_id}"] * 3
    assert [e["details"]["reason"] for e in events] == [
        "revoked by an administrator: laptop stolen",
        "revoked by an administrator: left ACME",
        "revoked by an administrator: contract ended",
    ]
    denied = audit_events(plant, "access.denied")
    assert denied and denied[-1]["subject"] == f"/api/users/{alice_id}/revoke"


def test_a_role_lost_at_the_idp_kills_the_tokens_issued_under_it(
    make_broker: Callable[..., RunningBroker], clients: Callable[[], httpx2.Client]
) -> None:
    first = make_broker()
    token, _ = device_token(_signed_in(clients, first, "alice"), first.url)
    assert httpx2.get(f"{first.url}/api/whoami", headers=_bearer(token)).status_code == 200
    first.stop()
    # The same database; the IdP group no longer maps to the vendor role (as when the IdP
    # drops the user from the group): at her next sign-in, the token dies.
    second = make_broker(roles={"vendor": ["conduit-vendors-2027"]})
    _signed_in(clients, second, "alice")
    refused = httpx2.get(f"{second.url}/api/whoami", headers=_bearer(token))
    assert refused.status_code == 401 and "role" in refused.json()["message"]
    [event] = audit_events(second, "credentials.revoked")
    assert event["details"]["scope"] == "roles" and event["actor"] == "system"
    assert len(event["details"]["cli_credentials"]) == 1


def _keygen(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _cli_env(home: Path, broker: RunningBroker, token: str, expires: str) -> dict[str, str]:
    creds = home / "conduit" / "credentials.json"
    creds.parent.mkdir(parents=True, mode=0o700)
    entry = {"broker": broker.url, "access_token": token, "expires_at": expires}
    creds.write_text(
        json.dumps(
            {"current": broker.url, "brokers": {broker.url: {**entry, "name": "", "email": ""}}}
        )
    )
    creds.chmod(0o600)
    return clean_env(XDG_CONFIG_HOME=str(home))


def _certificate(rig: SshRig, token: str, key: Path) -> tuple[Path, int]:
    resp = httpx2.post(
        f"{rig.broker.url}/api/ssh/cert",
        json={"public_key": key.with_suffix(".pub").read_text()},
        headers=_bearer(token),
    )
    assert resp.status_code == 201, resp.text
    cert = Path(f"{key}-cert.pub")
    cert.write_text(resp.json()["certificate"] + "\n")
    return cert, int(resp.json()["serial"])


def _ssh_argv(rig: SshRig, key: Path, cert: Path, asset: str = ASSET) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(key), "-o", f"CertificateFile={cert}",
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={rig.known_hosts()}", "-o", "StrictHostKeyChecking=yes",
        "-p", str(rig.front_port), f"{rig.sshd.user}@{asset}@127.0.0.1",
    ]  # fmt: skip


def _ssh(
    rig: SshRig, key: Path, cert: Path, command: str, asset: str = ASSET
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_ssh_argv(rig, key, cert, asset), command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path)
    yield rig
    rig.close()


@needs("sshd")
def test_conduit_logout_revokes_the_token_and_the_certificates_it_minted(
    rig: SshRig, clients: Callable[[], httpx2.Client], tmp_path: Path
) -> None:
    broker = rig.broker
    token, expires = device_token(_signed_in(clients, broker, "alice"), broker.url)
    env = _cli_env(tmp_path / "alice", broker, token, expires)
    made = run_conduit("ssh-cert", env=env)
    assert made.returncode == 0, made.stderr
    ssh_dir = tmp_path / "alice" / "conduit" / "ssh"
    kept = tmp_path / "stolen"  # what someone who copied the files before logout still has
    kept.mkdir()
    for name in ("id_ed25519", "id_ed25519-cert.pub"):
        shutil.copy2(ssh_dir / name, kept / name)
    key, cert = kept / "id_ed25519", kept / "id_ed25519-cert.pub"
    rig.grant("alice")
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True
    ).stdout
    with session_scope(broker.services.engine) as db:
        [row] = db.exec(select(SshCertificate)).all()
    assert f"Serial: {row.serial}" in shown and f"c:{row.serial}" in shown and row.serial > 0
    assert row.token_id is not None

    live = subprocess.Popen(
        [*_ssh_argv(rig, key, cert), "echo started; sleep 30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: bool(broker.services.live.list()), "the session to start", timeout=15)
        out = run_conduit("logout", env=env)
        assert out.returncode == 0 and "token revoked" in out.stdout, out.stdout + out.stderr
        assert not (ssh_dir / "id_ed25519-cert.pub").exists()
        # The API refuses the token at the next request, on every broker (database lookup).
        refused = httpx2.get(f"{broker.url}/api/whoami", headers=_bearer(token))
        assert refused.status_code == 401
        assert refused.json()["message"].startswith("the CLI token was revoked: conduit logout")
        [bearer] = audit_events(broker, "auth.bearer_refused")
        assert bearer["actor"] == rig.users["alice"] and bearer["outcome"] == "rejected"
        # The live session on the certificate is cut by the credential watch.
        _, err = live.communicate(timeout=10)
        assert "conduit: session ended: credential revoked" in err and "conduit logout" in err
    finally:
        live.kill()
    again = _ssh(rig, key, cert, "echo should-not-run")
    assert again.returncode != 0 and "should-not-run" not in again.stdout
    assert (
        f"credential refused: certificate {row.serial} was revoked: conduit logout" in again.stderr
    )

    def refusals() -> list[dict[str, Any]]:  # appended off the event loop: may trail a moment
        return [
            e
            for e in audit_events(broker, "session.denied")
            if any("credential refused" in r for r in e["details"]["reasons"])
        ]

    wait_until(lambda: bool(refusals()), "the refusal's audit event", timeout=10)
    assert refusals()[-1]["actor"] == rig.users["alice"]
    [revoked] = audit_events(broker, "credentials.revoked")
    assert revoked["details"]["certificates"] == [row.serial]
    wait_until(
        lambda: any(
            e["details"]["reason"].startswith("credential revoked")
            for e in audit_events(broker, "session.ended")
        ),
        "session.ended with the revocation as its reason",
        timeout=10,
    )
    cut = [e for e in audit_events(broker, "session.ended") if "revoked" in e["details"]["reason"]]
    assert [(e["outcome"], e["details"]["reason_code"]) for e in cut] == [
        ("deny", "credential_revoked")
    ]


@needs("sshd")
def test_certificates_have_unique_serials_and_die_with_a_disabled_user(
    rig: SshRig, clients: Callable[[], httpx2.Client], tmp_path: Path
) -> None:
    broker = rig.broker
    token, _ = device_token(_signed_in(clients, broker, "alice"), broker.url)
    key = _keygen(tmp_path / "k" / "id_ed25519")
    first, serial1 = _certificate(rig, token, key)
    second_key = _keygen(tmp_path / "k2" / "id_ed25519")
    _, serial2 = _certificate(rig, token, second_key)
    assert serial1 != serial2 and min(serial1, serial2) > 0
    rig.grant("alice")
    assert _ssh(rig, key, first, "echo ok").stdout.strip() == "ok"
    with session_scope(broker.services.engine, write=True) as db:  # an admin disables her
        user = db.get(User, rig.users["alice"])
        assert user is not None
        user.disabled = True
    refused = _ssh(rig, key, first, "echo should-not-run")
    assert "credential refused: the user is disabled" in refused.stderr
    assert httpx2.get(f"{broker.url}/api/whoami", headers=_bearer(token)).status_code == 401


# --- 5. MFA from the credential in use -----------------------------------------------------


@pytest.fixture(scope="module")
def mia_idp(
    tmp_path_factory: pytest.TempPathFactory, broker_port: int, client_secret: str
) -> Iterator[RunningIdP]:
    """The dev IdP with mia, whose one-time code is optional: her amr is ``pwd`` or
    ``pwd otp mfa`` depending on how she signs in."""
    users = json.loads(DEFAULT_USERS_PATH.read_text())
    users.append(
        {
            "sub": "u-vendor-mia",
            "username": "mia",
            "password": "mia-demo-pw",
            "otp": MIA_OTP,
            "otp_optional": True,
            "email": "mia@acme-automation.example",
            "name": "Mia Vendor",
            "groups": ["conduit-vendors"],
            "vendor_org": "acme-automation",
        }
    )
    workdir = tmp_path_factory.mktemp("mia-idp")
    path = workdir / "users.json"
    path.write_text(json.dumps(users))
    base = f"http://127.0.0.1:{broker_port}"
    client = {
        "client_id": CLIENT_ID,
        "client_secret": client_secret,
        "redirect_uris": [f"{base}/auth/callback"],
        "post_logout_redirect_uris": [f"{base}/"],
    }
    running = start_dev_idp(workdir, [client], users_path=path)
    yield running
    running.stop()


@needs("sshd")
def test_mfa_is_taken_from_the_credential_in_use_not_the_latest_sign_in(
    make_broker: Callable[..., RunningBroker],
    mia_idp: RunningIdP,
    client_secret: str,
    clients: Callable[[], httpx2.Client],
    tmp_path: Path,
) -> None:
    broker = make_broker(
        oidc={"issuer": mia_idp.issuer, "client_id": CLIENT_ID, "client_secret": client_secret}
    )
    rig = SshRig.build(broker, tmp_path)
    try:
        # lab-l2: the same sshd, declared as an asset at Purdue level 2 (connections need MFA).
        rig.add_asset(
            "lab-l2", rig.sshd.port, "ssh", zone="supervisory", settings={"logins": [rig.sshd.user]}
        )
        # Sign-in 1, password only: a token and a certificate.
        pwd_browser = _signed_in(clients, broker, "mia")
        pwd_token, _ = device_token(pwd_browser, broker.url)
        pwd_key = _keygen(tmp_path / "pwd" / "id_ed25519")
        pwd_cert, pwd_serial = _certificate(rig, pwd_token, pwd_key)
        # Sign-in 2, elsewhere, with the one-time code: the user's latest sign-in has MFA.
        mfa_browser = _signed_in(clients, broker, "mia", otp=MIA_OTP)
        mfa_token, _ = device_token(mfa_browser, broker.url)
        mfa_key = _keygen(tmp_path / "mfa" / "id_ed25519")
        mfa_cert, _ = _certificate(rig, mfa_token, mfa_key)
        with session_scope(broker.services.engine) as db:
            mia = db.exec(select(User).where(User.sub == "u-vendor-mia")).one()
            assert "mfa" in mia.amr  # what the old code handed to every credential of hers

        amr = {
            name: httpx2.get(f"{broker.url}/api/whoami", headers=_bearer(t)).json()["amr"]
            for name, t in (("pwd", pwd_token), ("mfa", mfa_token))
        }
        assert amr == {"pwd": ["pwd"], "mfa": ["pwd", "otp", "mfa"]}
        assert pwd_browser.get(f"{broker.url}/api/whoami").json()["amr"] == ["pwd"]

        # Requests keep the amr of the credential that filed them.
        same_origin_api(pwd_browser, broker.url)
        filed = pwd_browser.post(
            f"{broker.url}/api/requests",
            json={"asset": "lab-l2", "duration": "1h", "reason": "diag", "ticket": "CHG-5"},
        )
        assert filed.status_code == 201, filed.text
        with session_scope(broker.services.engine) as db:
            request = db.get(AccessRequest, filed.json()["id"])
            assert request is not None and request.auth_amr == ["pwd"]
        rig.approve(filed.json()["id"], "olga")

        # SSH: the password-only certificate gets no MFA credit from the later sign-in.
        refused = _ssh(rig, pwd_key, pwd_cert, "echo should-not-run", asset="lab-l2")
        assert refused.returncode != 0 and "should-not-run" not in refused.stdout
        assert "needs MFA" in refused.stderr, refused.stderr
        decisions = [
            e
            for e in audit_events(broker, "policy.decision")
            if e["details"]["purpose"] == "connect:ssh" and e["subject"] == "lab-l2"
        ]
        assert decisions[-1]["outcome"] == "deny"
        assert any("needs MFA" in r for r in decisions[-1]["details"]["reasons"])
        allowed = _ssh(rig, mfa_key, mfa_cert, "echo with-mfa", asset="lab-l2")
        assert allowed.stdout.strip() == "with-mfa", allowed.stderr
        started = audit_events(broker, "session.started")
        assert started[-1]["details"]["amr"] == ["pwd", "otp", "mfa"]
        assert started[-1]["details"]["credential"].startswith("cert:")
        assert started[-1]["details"]["credential"] != f"cert:{pwd_serial}"
    finally:
        rig.close()
