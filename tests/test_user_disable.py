"""An admin disables (offboards) a user and enables them again: API, page and CLI.

Disabling ends the vendor's live stock-ssh session at once with one line saying why, revokes
their grant with that reason and every credential, and the real IdP sign-in is refused;
enabling lets them sign in again without any grant back.
"""

from __future__ import annotations

import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2
from sqlmodel import col, select

from broker.dev.demo import seed
from sessions.db import session_scope
from sessions.models import AccessRequest, Grant, User
from tests.harness.broker import (
    RunningBroker,
    audit_events,
    form_values,
    same_origin_api,
    web_login,
)
from tests.harness.cli import cli_env, run_conduit
from tests.harness.components import needs
from tests.harness.ssh_session import SshRig
from tests.harness.wait import TIMEOUT_S, wait_until
from tests.test_ssh_sessions import _asset_connections

REASON = "contract with ACME ended"


def _user_id(broker: RunningBroker, name: str) -> str:
    with session_scope(broker.services.engine) as db:
        return db.exec(select(User).where(col(User.sub).endswith(name))).one().id


def _post(broker: RunningBroker, path: str, token: str, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(
        f"{broker.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT_S,
    )


def _sign_in(broker: RunningBroker, name: str) -> tuple[httpx2.Client, httpx2.Response]:
    client = httpx2.Client(timeout=TIMEOUT_S, follow_redirects=False)
    return client, web_login(client, broker.url, name, f"{name}-demo-pw")


def _sign_in_status(broker: RunningBroker, name: str) -> int:
    client, answer = _sign_in(broker, name)
    client.close()
    return answer.status_code


@needs("sshd")
def test_disabling_a_vendor_ends_their_session_grant_credentials_and_sign_in(
    rig: SshRig,
) -> None:
    broker = rig.broker
    alice_token, adam_token = rig.tokens["alice"], rig.sign_in("adam")
    alice, adam = rig.users["alice"], rig.users["adam"]
    grant_id = rig.grant()
    pending = rig.request("alice", operation_class="tune")  # filed, not yet approved
    assert pending.status_code == 201, pending.text
    proc = subprocess.Popen(
        [*rig.ssh_argv(), "echo ready; sleep 600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert _asset_connections(rig) == 1
        # Refusals first: no reason, own account, a non-admin; nothing changes.
        no_reason = _post(broker, f"/api/users/{alice}/disable", adam_token, {"reason": " "})
        assert no_reason.status_code == 400 and "reason" in no_reason.json()["message"]
        itself = _post(broker, f"/api/users/{adam}/disable", adam_token, {"reason": "oops"})
        assert itself.status_code == 400, itself.text
        assert "your own account" in itself.json()["message"]
        olga = _post(broker, f"/api/users/{alice}/disable", rig.sign_in("olga"), {"reason": "x"})
        assert olga.status_code == 403
        denied = audit_events(broker, "access.denied")
        assert denied[-1]["subject"] == f"/api/users/{alice}/disable"
        assert denied[-1]["actor"] == _user_id(broker, "olga")
        assert rig.grant_state(grant_id) == "active"

        done = _post(broker, f"/api/users/{alice}/disable", adam_token, {"reason": REASON})
        assert done.status_code == 200, done.text
        assert done.json()["grants"] == [grant_id] and done.json()["disabled"] is True
        assert done.json()["requests"] == [pending.json()["id"]]
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.startswith("conduit:")]
    assert lines == [f"conduit: session ended: grant revoked: user disabled: {REASON}"]
    wait_until(lambda: _asset_connections(rig) == 0, "the asset-side SSH connection to close")
    with session_scope(broker.services.engine) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None and grant.state == "revoked"
        assert grant.revoke_reason == f"user disabled: {REASON}" and grant.revoked_by == adam
        request = db.get(AccessRequest, pending.json()["id"])
        assert request is not None and request.state == "denied"

    # Her CLI token, her certificate and her sign-in at the real IdP are all refused.
    whoami = httpx2.get(
        f"{broker.url}/api/whoami", headers={"Authorization": f"Bearer {alice_token}"}
    )
    assert whoami.status_code == 401
    again = rig.ssh("echo should-not-run")
    assert again.returncode != 0 and "should-not-run" not in again.stdout
    client, refused = _sign_in(broker, "alice")
    with closing(client):
        assert refused.status_code == 403 and "account is disabled" in refused.text
        assert client.get(f"{broker.url}/api/whoami").status_code == 401
    rejected = [e for e in audit_events(broker, "auth.login") if e["outcome"] == "rejected"]
    assert rejected[-1]["actor"] == alice and rejected[-1]["details"]["code"] == "user_disabled"
    refusals = [e for e in audit_events(broker, "user.disabled") if e["outcome"] == "rejected"]
    assert [(e["subject"], e["details"]["code"]) for e in refusals] == [
        (f"user:{alice}", "invalid"),
        (f"user:{adam}", "invalid"),
    ]
    [event] = [e for e in audit_events(broker, "user.disabled") if e["outcome"] == "ok"]
    assert (event["actor"], event["subject"]) == (adam, f"user:{alice}")
    assert event["details"]["reason"] == REASON
    assert event["details"]["grants_revoked"] == [grant_id]
    assert event["details"]["requests_denied"] == [pending.json()["id"]]
    assert event["details"]["cli_credentials"] >= 1 and event["details"]["certificates"] == 1

    # Enable: she can sign in again, but no grant comes back.
    enabled = _post(broker, f"/api/users/{alice}/enable", adam_token, {"reason": "new contract"})
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    client, answer = _sign_in(broker, "alice")
    with closing(client):
        assert answer.status_code == 303, answer.text
        same_origin_api(client, broker.url)
        grants = client.get(f"{broker.url}/api/grants")
        assert grants.status_code == 200, grants.text
    with session_scope(broker.services.engine) as db:
        states = [g.state for g in db.exec(select(Grant).where(Grant.user_id == alice))]
    assert states == ["revoked"]
    [on] = audit_events(broker, "user.enabled")
    assert on["actor"] == adam and on["details"]["reason"] == "new contract"


def test_cli_and_page_disable_and_enable_round_trip(broker: RunningBroker, tmp_path: Path) -> None:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    env = cli_env(broker, tmp_path / "adam", "adam")
    assert _sign_in_status(broker, "alice") == 303
    alice = _user_id(broker, "alice")

    no_reason = run_conduit("users", "disable", "alice", "--reason", "", env=env)
    assert no_reason.returncode != 0 and len(no_reason.stderr.strip().splitlines()) == 1
    out = run_conduit("users", "disable", alice, "--reason", "left the vendor", env=env)
    assert out.returncode == 0 and out.stdout.startswith("Disabled "), out.stdout + out.stderr
    listed = run_conduit("users", "list", env=env)
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(alice)]
    assert row.endswith("DISABLED")
    assert _sign_in_status(broker, "alice") == 403
    unknown = run_conduit("users", "enable", "nobody-at-all", "--reason", "x", env=env)
    assert unknown.returncode != 0 and "no user named 'nobody-at-all'" in unknown.stderr
    back = run_conduit("users", "enable", alice, "--reason", "rehired", env=env)
    assert back.returncode == 0 and back.stdout.startswith("Enabled "), back.stdout + back.stderr
    assert _sign_in_status(broker, "alice") == 303

    # The page: Disable… with its confirm step, then the state shown, then Enable….
    with httpx2.Client(timeout=TIMEOUT_S, follow_redirects=False) as adam:
        web_login(adam, broker.url, "adam", "adam-demo-pw")
        page = adam.get(f"{broker.url}/admin/users")
        assert f'id="disable-confirm-{alice}"' in page.text
        assert f'id="disable-{_user_id(broker, "adam")}"' not in page.text  # not themselves
        csrf = form_values(page.text)["csrf"]
        no_csrf = adam.post(f"{broker.url}/admin/users/{alice}/disable", data={"reason": "x"})
        assert no_csrf.status_code == 400
        posted = adam.post(
            f"{broker.url}/admin/users/{alice}/disable", data={"csrf": csrf, "reason": "badge lost"}
        )
        assert posted.status_code == 303
        shown = adam.get(broker.url + posted.headers["location"]).text
        assert (
            "disabled; revoked 0 grant(s), denied 0 pending" in shown
            and f'id="enable-confirm-{alice}"' in shown
        )
        posted = adam.post(
            f"{broker.url}/admin/users/{alice}/enable", data={"csrf": csrf, "reason": "found"}
        )
        assert posted.status_code == 303
    kinds = [(e["kind"], e["details"]["reason"]) for e in audit_events(broker) if
             e["kind"] in ("user.disabled", "user.enabled") and e["outcome"] == "ok"]  # fmt: skip
    assert kinds == [
        ("user.disabled", "left the vendor"),
        ("user.enabled", "rehired"),
        ("user.disabled", "badge lost"),
        ("user.enabled", "found"),
    ]
