"""A person in headless Chromium signs in through the real IdP, sees who they are, signs out."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.harness.broker import RunningBroker, audit_events

pytestmark = pytest.mark.browser


def _sign_in(page: Page, broker: RunningBroker, username: str, password: str) -> None:
    page.goto(broker.url + "/")
    page.click("#signin-main")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")


def test_vendor_signs_in_sees_identity_and_signs_out(
    page: Page, broker: RunningBroker, tmp_path: Path
) -> None:
    _sign_in(page, broker, "alice", "alice-demo-pw")
    page.wait_for_url(broker.url + "/")
    expect(page.locator("#nav-roles")).to_have_text("vendor")
    page.click("#whoami-link")
    expect(page.locator("#who-name")).to_have_text("Alice Vendor")
    expect(page.locator("#who-roles")).to_have_text("vendor")
    expect(page.locator("#who-email")).to_have_text("alice@acme-automation.example")
    page.screenshot(path=str(tmp_path / "whoami.png"))

    page.click("#logout")  # broker session ends, then the IdP's end-session page auto-submits
    page.wait_for_url(broker.url + "/")
    expect(page.locator("#signin-main")).to_be_visible()
    page.goto(broker.url + "/whoami")
    assert "/signin" in page.url
    expect(page.locator("#signin-main")).to_be_visible()
    kinds = [
        e["kind"]
        for e in audit_events(broker)
        if e["outcome"] == "ok" and e["kind"].startswith("auth.")
    ]
    assert kinds == ["auth.login", "auth.logout"]


def test_wrong_password_is_refused(page: Page, broker: RunningBroker) -> None:
    _sign_in(page, broker, "alice", "wrong-password")
    expect(page.locator("#login-error")).to_contain_text("Invalid username or password")
    assert page.url.startswith(broker.services.settings.oidc.issuer)
    page.goto(broker.url + "/whoami")
    assert "/signin" in page.url
    assert not [e for e in audit_events(broker, "auth.login") if e["outcome"] == "ok"]


def test_user_without_groups_has_no_access(page: Page, broker: RunningBroker) -> None:
    _sign_in(page, broker, "nora", "nora-demo-pw")
    page.wait_for_url(broker.url + "/")
    expect(page.locator("#no-role")).to_be_visible()
    response = page.goto(broker.url + "/vendor")
    assert response is not None and response.status == 403
    expect(page.locator("#error-code")).to_have_text("forbidden")
