"""What-if simulator (browser + API), audited decisions, and policy data that follows the database."""

from __future__ import annotations

import json

import httpx2
import pytest
from playwright.sync_api import Page, expect

from broker.dev.demo import seed
from sessions.db import session_scope
from sessions.models import PlantFlag
from sessions.policy_data import LOCKOUT_FLAG
from tests.harness.broker import RunningBroker, audit_events, same_origin_api, web_login
from tests.harness.wait import wait_until

NO_MFA = {
    "sub": "u-vendor-alice",
    "email": "alice@acme-automation.example",
    "name": "Alice Vendor",
    "groups": ["conduit-vendors"],
    "amr": ["pwd"],
    "vendor_org": "acme-automation",
}
WITH_MFA = {**NO_MFA, "amr": ["pwd", "otp", "mfa"]}


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


def _whatif(http: httpx2.Client, broker: RunningBroker, **body: object) -> dict[str, object]:
    if "X-CSRF-Token" not in http.headers:  # a same-origin caller on the session cookie
        same_origin_api(http, broker.url)
    resp = http.post(f"{broker.url}/api/policy/whatif", json=body)
    assert resp.status_code == 200, resp.text
    result: dict[str, object] = resp.json()["decision"]
    return result


def test_api_level1_plc_needs_mfa_and_grant(plant: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, plant.url, "adam", "adam-demo-pw")
    base = {
        "asset": "plc-press-3",
        "action": {"kind": "tcp", "port": 502, "operation_class": "read_only"},
    }
    no_mfa = _whatif(http, plant, claims=NO_MFA, with_grant=True, **base)
    assert no_mfa["allow"] is False and any("MFA" in r or "mfa" in r for r in no_mfa["reasons"])
    ok = _whatif(http, plant, claims=WITH_MFA, with_grant=True, **base)
    assert ok["allow"] is True, ok["reasons"]
    assert ok["obligations"]["modbus"]["allow_function_codes"]
    no_grant = _whatif(http, plant, claims=WITH_MFA, **base)
    assert no_grant["allow"] is False
    level0 = _whatif(
        http,
        plant,
        claims=WITH_MFA,
        with_grant=True,
        asset="drive-press-3",
        action={"kind": "tcp", "port": 502, "operation_class": "read_only"},
    )
    assert level0["allow"] is False and any("level 0" in r for r in level0["reasons"])
    decisions = [
        e for e in audit_events(plant, "policy.decision") if e["details"]["purpose"] == "what-if"
    ]
    assert [e["outcome"] for e in decisions] == ["deny", "allow", "deny", "deny"]
    assert all(len(e["details"]["input_hash"]) == 64 for e in decisions)


def test_api_refuses_bad_questions(plant: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, plant.url, "adam", "adam-demo-pw")
    same_origin_api(http, plant.url)
    url = f"{plant.url}/api/policy/whatif"
    assert (
        http.post(
            url, json={"asset": "nope", "action": {"kind": "ssh"}, "claims": NO_MFA}
        ).status_code
        == 400
    )
    assert (
        http.post(
            url, json={"asset": "plc-press-3", "action": {"kind": "fly"}, "claims": NO_MFA}
        ).status_code
        == 400
    )
    assert (
        http.post(
            url, json={"asset": "plc-press-3", "action": {"kind": "ssh"}, "claims": "{"}
        ).status_code
        == 400
    )
    assert (
        http.post(url, content=b"[", headers={"content-type": "application/json"}).status_code
        == 400
    )


def test_only_admins_simulate(plant: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, plant.url, "alice", "alice-demo-pw")
    same_origin_api(http, plant.url)
    assert http.post(f"{plant.url}/api/policy/whatif", json={}).status_code == 403
    assert http.get(f"{plant.url}/admin/whatif").status_code == 403


def test_lockout_in_the_database_takes_effect_without_restart(
    make_broker: object, http: httpx2.Client
) -> None:
    broker = make_broker(policy={"data_refresh_s": 0.2})  # type: ignore[operator]
    seed(broker.services.settings.database_url)
    web_login(http, broker.url, "adam", "adam-demo-pw")
    body = {
        "claims": WITH_MFA,
        "with_grant": True,
        "asset": "hist-01",
        "action": {"kind": "ssh", "port": 22, "operation_class": "read_only"},
    }
    wait_until(  # seeded assets reach the engine
        lambda: _whatif(http, broker, **body)["allow"], "the seeded plant in the policy data"
    )
    with session_scope(broker.services.engine) as db:
        db.add(PlantFlag(key=LOCKOUT_FLAG, value={"vendors": True, "reason": "incident"}))
    d = wait_until(
        lambda: (answer := _whatif(http, broker, **body))["allow"] is False and answer,
        "the lockout to apply without a restart",
    )
    assert any(r.startswith("emergency lockout") for r in d["reasons"])  # type: ignore[union-attr]


@pytest.mark.browser
def test_browser_whatif_mfa_then_allow(page: Page, plant: RunningBroker) -> None:
    page.goto(plant.url + "/login?next=/admin/whatif")
    page.fill("#username", "adam")
    page.fill("#password", "adam-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(plant.url + "/admin/whatif")
    page.fill("#claims", json.dumps(NO_MFA))
    page.select_option("#asset", "plc-press-3")
    page.select_option("#kind", "tcp")
    page.fill("#port", "502")
    page.check("#with_grant")
    page.click("#evaluate")
    expect(page.locator("#decision-outcome")).to_have_text("deny")
    expect(page.locator("#decision-reasons")).to_contain_text("MFA")

    page.fill("#claims", json.dumps(WITH_MFA))
    page.check("#with_grant")
    page.click("#evaluate")
    expect(page.locator("#decision-outcome")).to_have_text("allow")
    expect(page.locator("#decision-obligations")).to_contain_text("Longest session")
    expect(page.locator("#decision-obligations")).to_contain_text("read functions 1, 2, 3, 4")
    expect(page.locator("#decision-obligations")).not_to_contain_text("allow_function_codes")
    expect(page.locator("#whatif-version")).not_to_have_text("none")
