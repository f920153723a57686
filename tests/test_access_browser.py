"""Access pages with real IdP users: request, approve, activate and expire a grant in Chromium;
deny, role refusals, form errors and the vendor lockout over HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect

from broker.dev.demo import seed
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events, form_values, web_login
from tests.harness.wait import TIMEOUT_S

pytestmark = pytest.mark.browser

Login = Callable[[str, str], httpx2.Client]


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


@pytest.fixture
def login(plant: RunningBroker) -> Iterator[Login]:
    """A separate HTTP client per person, signed in through the real IdP."""
    clients: list[httpx2.Client] = []

    def factory(username: str, password: str) -> httpx2.Client:
        client = httpx2.Client(timeout=10.0, follow_redirects=False)
        clients.append(client)
        answer = web_login(client, plant.url, username, password)
        assert answer.status_code == 303, answer.text
        return client

    yield factory
    for client in clients:
        client.close()


def _sign_in(chromium: Browser, broker: RunningBroker, username: str, password: str) -> Page:
    """A fresh browser context signed in through the real IdP."""
    page = chromium.new_context().new_page()
    page.goto(broker.url + "/")
    page.click("#signin-main")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(broker.url + "/")
    return page


def _grant_state(page: Page, url: str, wanted: str) -> None:
    """Reload the page until the first grant shows ``wanted`` (a generous deadline)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        page.goto(url)
        state = page.locator("#my-grants tbody tr").first.get_attribute("data-grant-state")
        if state == wanted:
            return
        assert time.monotonic() < deadline, f"grant is {state}, expected {wanted}"
        time.sleep(0.1)


def test_request_approve_activate_expire(
    chromium: Browser, make_broker: Callable[..., RunningBroker]
) -> None:
    clock = ManualClock(datetime.now(UTC))
    broker = make_broker(clock=clock, grant_tick_s=0.1)
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    start = clock.now() + timedelta(hours=1)

    alice = _sign_in(chromium, broker, "alice", "alice-demo-pw")
    alice.goto(broker.url + "/vendor")
    alice.select_option("#asset", "hist-01")
    alice.select_option("#operation_class", "read_only")
    alice.fill("#starts_at", start.strftime("%Y-%m-%dT%H:%M"))
    alice.select_option("#duration", "60")
    alice.fill("#reason", "quarterly historian health check")
    alice.fill("#ticket", "CHG-1042")
    alice.click("#request-submit")
    expect(alice.locator("#access-message")).to_contain_text("filed")
    expect(alice.locator("#my-requests tbody tr")).to_have_attribute(
        "data-request-state", "pending"
    )
    alice.click("#logout")
    alice.wait_for_url(broker.url + "/")
    alice.context.close()

    olga = _sign_in(chromium, broker, "olga", "olga-demo-pw")
    olga.goto(broker.url + "/approvals")
    row = olga.locator("#approval-queue tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Alice Vendor")
    expect(row).to_contain_text("CHG-1042")
    expect(row).to_contain_text("approved by 0 of 1")
    # The approver sees exactly what the grant will reach: the declared endpoint and login.
    expect(row.locator("ul.reaches")).to_have_text("ssh 127.0.0.1:22 as maint")
    olga.locator("#approval-queue button[id^=approve-]").click()
    expect(olga.locator("#access-message")).to_contain_text("grant created")
    expect(olga.locator("#no-requests")).to_be_visible()
    olga.context.close()

    alice = _sign_in(chromium, broker, "alice", "alice-demo-pw")
    vendor = broker.url + "/vendor"
    _grant_state(alice, vendor, "approved")
    expect(alice.locator("#my-grants tbody tr")).to_contain_text("hist-01")
    clock.advance(3600 + 5)
    _grant_state(alice, vendor, "active")
    clock.advance(3600)
    _grant_state(alice, vendor, "expired")
    alice.context.close()
    kinds = [e["kind"] for e in audit_events(broker) if e["outcome"] == "ok"]
    for kind in ("access.request", "access.approve", "grant.created", "grant.activated"):
        assert kind in kinds
    assert "grant.expired" in kinds


def _csrf(client: httpx2.Client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200, page.text
    return form_values(page.text)["csrf"]


def _file(client: httpx2.Client, broker: RunningBroker, **fields: str) -> httpx2.Response:
    form = {
        "csrf": _csrf(client, broker.url + "/vendor"),
        "asset": "hist-01",
        "operation_class": "read_only",
        "starts_at": broker.services.clock.now().strftime("%Y-%m-%dT%H:%M"),
        "duration": "60",
        "reason": "check trends",
        **fields,
    }
    return client.post(broker.url + "/vendor/requests", data=form)


def _pending_id(html: str) -> str:
    match = re.search(r'id="approve-([^"]+)"', html)
    assert match, "no pending request on the approvals page"
    return match[1]


def test_deny_with_reason_then_vendor_sees_denied(plant: RunningBroker, login: Login) -> None:
    alice, olga = login("alice", "alice-demo-pw"), login("olga", "olga-demo-pw")
    assert _file(alice, plant).status_code == 303
    queue = olga.get(plant.url + "/approvals").text
    request_id = _pending_id(queue)
    csrf = form_values(queue)["csrf"]
    url = f"{plant.url}/approvals/{request_id}/deny"
    missing = olga.post(url, data={"csrf": csrf, "reason": "  "})
    assert missing.status_code == 400
    assert 'id="access-error"' in missing.text and "reason is required" in missing.text
    assert olga.post(url, data={"csrf": csrf, "reason": "no change window"}).status_code == 303
    mine = alice.get(plant.url + "/vendor").text
    assert f'id="request-{request_id}" data-request-state="denied"' in mine
    assert "denied: no change window" in mine
    again = olga.post(url, data={"csrf": csrf, "reason": "twice"})
    assert again.status_code == 409 and "only pending requests" in again.text
    overview = olga.get(plant.url + "/admin/grants?state=denied&user=alice")
    assert overview.status_code == 200 and f'id="request-{request_id}"' in overview.text
    assert 'id="lockout-submit"' not in overview.text  # the lockout is for admins
    lockout = olga.post(plant.url + "/admin/lockout", data={"csrf": csrf, "on": "1", "reason": "x"})
    assert lockout.status_code == 403


def test_vendor_cannot_open_approvals_or_grants(plant: RunningBroker, login: Login) -> None:
    alice = login("alice", "alice-demo-pw")
    for path in ("/approvals", "/admin/grants"):
        refused = alice.get(plant.url + path)
        assert refused.status_code == 403
        assert 'id="error-code">forbidden' in refused.text
    denied = [e["subject"] for e in audit_events(plant, "access.denied")]
    assert denied == ["/approvals", "/admin/grants"]


def test_form_errors_are_shown_not_raised(plant: RunningBroker, login: Login) -> None:
    alice = login("alice", "alice-demo-pw")
    missing = _file(alice, plant, reason="")
    assert missing.status_code == 400
    assert "a reason is required" in missing.text and "Traceback" not in missing.text
    assert form_values(missing.text)["ticket"] == ""
    bad_time = _file(alice, plant, starts_at="tomorrow")
    assert bad_time.status_code == 400 and 'id="access-error"' in bad_time.text
    refused = _file(alice, plant, asset="drive-press-3")
    assert refused.status_code == 403
    assert 'id="access-error-reasons"' in refused.text
    assert _file(alice, plant).status_code == 303
    duplicate = _file(alice, plant)
    assert duplicate.status_code == 409 and "already have a pending request" in duplicate.text


def test_lockout_suspends_after_confirmation_and_resumes(
    plant: RunningBroker, login: Login
) -> None:
    alice, olga = login("alice", "alice-demo-pw"), login("olga", "olga-demo-pw")
    adam = login("adam", "adam-demo-pw")
    assert _file(alice, plant).status_code == 303
    queue = olga.get(plant.url + "/approvals").text
    request_id = _pending_id(queue)
    approved = olga.post(
        f"{plant.url}/approvals/{request_id}/approve", data={"csrf": form_values(queue)["csrf"]}
    )
    assert approved.status_code == 303
    page = adam.get(plant.url + "/admin/grants").text
    assert "Vendor access is enabled" in page and 'id="revoke-' in page
    csrf = form_values(page)["csrf"]

    no_reason = adam.post(plant.url + "/admin/lockout", data={"csrf": csrf, "on": "1"})
    assert no_reason.status_code == 400
    asked = adam.post(
        plant.url + "/admin/lockout", data={"csrf": csrf, "on": "1", "reason": "incident INC-7"}
    )  # first the confirmation, nothing switched yet
    assert asked.status_code == 200 and 'id="lockout-confirm"' in asked.text
    assert "1 vendor grant(s) will be suspended" in asked.text
    assert "Vendor access is enabled" in asked.text and not audit_events(plant, "lockout.on")
    on = adam.post(
        plant.url + "/admin/lockout",
        data={"csrf": csrf, "on": "1", "reason": "incident INC-7", "confirm": "1"},
    )
    assert on.status_code == 303 and "suspended" in on.headers["location"]
    page = adam.get(plant.url + "/admin/grants").text
    assert "Vendor access is DISABLED" in page and "incident INC-7" in page
    assert page.count('<span class="state suspended"') == 1  # the one vendor grant's row
    mine = alice.get(plant.url + "/vendor").text
    # The grant keeps its own state (approved, or active once the grant clock ticked past its
    # start); the lockout shows as the page's suspension notice.
    assert 'id="vendor-suspended"' in mine
    assert re.search(r'data-grant-state="(approved|active)"', mine), mine
    blocked = _file(alice, plant)
    assert blocked.status_code == 403 and "emergency lockout" in blocked.text
    assert [e["outcome"] for e in audit_events(plant, "lockout.on")] == ["ok"]

    off = adam.post(
        plant.url + "/admin/lockout",
        data={"csrf": csrf, "on": "0", "reason": "incident closed", "confirm": "1"},
    )
    assert off.status_code == 303 and "1+grant" in off.headers["location"]
    assert [e["outcome"] for e in audit_events(plant, "lockout.off")] == ["ok"]
    assert 'class="state suspended"' not in adam.get(plant.url + "/admin/grants").text
    mine = alice.get(plant.url + "/vendor").text
    assert 'id="vendor-suspended"' not in mine
    assert re.search(r'data-grant-state="(approved|active)"', mine), mine
    assert _file(alice, plant).status_code == 303
