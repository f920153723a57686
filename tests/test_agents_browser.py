"""The admin's agents page in Chromium: a join token made in the UI enrols the real
``conduit-agent``, whose health and inventory then show; adopt and revoke from the page.
Role and CSRF refusals over HTTP with real IdP sign-ins."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Page, expect

from broker.dev.demo import seed
from tests.harness.agent import (
    AgentProcess,
    EchoAsset,
    join,
    wait_connected,
    wait_disconnected,
    write_config,
)
from tests.harness.broker import RunningBroker, audit_events, form_values, web_login

pytestmark = pytest.mark.browser


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


def _sign_in(page: Page, broker: RunningBroker, username: str) -> None:
    page.goto(broker.url + "/")
    page.click("#signin-main")
    page.fill("#username", username)
    page.fill("#password", f"{username}-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(broker.url + "/")


def test_token_join_health_adopt_revoke(
    page: Page, plant: RunningBroker, tmp_path: Path, echo: EchoAsset
) -> None:
    _sign_in(page, plant, "adam")
    page.click("nav >> text=Agents")
    page.wait_for_url(plant.url + "/admin/agents")
    expect(page.locator("#no-agents")).to_be_visible()

    page.select_option("#token-site", "Riverside Plant")
    page.select_option("#token-zone", "supervisory")
    page.select_option("#token-ttl", "1h")
    page.fill("#token-name", "edge-ui")
    page.click("#token-submit")
    command = page.locator("#join-command")
    expect(command).to_contain_text(f"conduit-agent join --broker {plant.url} --token cjt1")
    token = command.inner_text().split("--token ")[1].strip()

    page.goto(plant.url + "/admin/agents")  # shown once: never again in the list view
    expect(page.locator("#new-token")).to_have_count(0)
    assert token not in page.content()

    config = write_config(
        tmp_path / "agent", [("127.0.0.1", echo.port, "tcp"), ("127.0.0.1", 1, "modbus")]
    )
    agent_id = join(plant, token, config)
    agent = AgentProcess.start(config)
    try:
        wait_connected(plant, agent_id)
        row = page.locator(f"#agent-{agent_id}")
        endpoints = page.locator(f"#inventory-{agent_id} tr[data-declared=yes]")
        for _ in range(50):
            page.goto(plant.url + "/admin/agents")
            if row.get_attribute("data-connected") == "yes" and endpoints.count() == 2:
                break
            page.wait_for_timeout(100)
        expect(row).to_have_attribute("data-agent-state", "active")
        expect(row.locator(".connection")).to_contain_text("connected")
        expect(row).to_contain_text("edge-ui")
        expect(endpoints).to_have_count(2)
        inventory = page.locator(f"#inventory-{agent_id}")
        expect(inventory).to_contain_text(f"127.0.0.1:{echo.port}")
        expect(inventory).to_contain_text("unmatched")
        assert token not in page.content()

        unmatched = inventory.locator(f"tr:has-text('127.0.0.1:{echo.port}')")
        endpoint_id = (unmatched.get_attribute("id") or "").removeprefix("endpoint-")
        page.click(f"#adopt-{endpoint_id}")
        page.fill(f"#adopt-name-{endpoint_id}", "echo-ui")
        page.fill(f"#adopt-owner-{endpoint_id}", "ot-approvers")
        page.select_option(f"#adopt-criticality-{endpoint_id}", "low")
        page.click(f"#adopt-submit-{endpoint_id}")
        expect(page.locator("#agents-message")).to_contain_text("asset echo-ui created")
        expect(page.locator(f"#endpoint-{endpoint_id}")).to_have_attribute("data-asset", "echo-ui")

        page.click(f"#revoke-{agent_id}")
        page.click(f"#revoke-confirm-{agent_id}")
        expect(page.locator("#agents-message")).to_contain_text(f"agent {agent_id} revoked")
        expect(page.locator(f"#agent-{agent_id}")).to_have_attribute("data-agent-state", "revoked")
        expect(page.locator(f"#revoke-{agent_id}")).to_have_count(0)
        wait_disconnected(plant, agent_id)
        page.goto(plant.url + "/admin/agents")
        expect(page.locator(f"#agent-{agent_id}")).to_have_attribute("data-connected", "no")
    finally:
        agent.stop()
    kinds = [e["kind"] for e in audit_events(plant) if e["outcome"] == "ok"]
    for kind in ("agent.token.created", "agent.joined", "agent.endpoint.adopted", "agent.revoked"):
        assert kind in kinds


def test_roles_csrf_and_form_errors(plant: RunningBroker) -> None:
    with httpx2.Client(timeout=30.0, follow_redirects=False) as alice:
        assert web_login(alice, plant.url, "alice", "alice-demo-pw").status_code == 303
        assert alice.get(plant.url + "/admin/agents").status_code == 403
        refused = alice.post(plant.url + "/admin/agents/tokens", data={"site": "Riverside Plant"})
        assert refused.status_code == 403
    with httpx2.Client(timeout=30.0, follow_redirects=False) as adam:
        assert web_login(adam, plant.url, "adam", "adam-demo-pw").status_code == 303
        page = adam.get(plant.url + "/admin/agents")
        assert page.status_code == 200 and 'href="/admin/agents"' in page.text
        csrf = form_values(page.text)["csrf"]
        form = {"site": "Riverside Plant", "zone": "", "ttl": "15m", "name": ""}
        no_csrf = adam.post(plant.url + "/admin/agents/tokens", data=form)
        assert no_csrf.status_code == 400 and "cjt1" not in no_csrf.text
        wrong_zone = adam.post(
            plant.url + "/admin/agents/tokens",
            data={**form, "csrf": csrf, "zone": "nowhere"},
        )
        assert (
            wrong_zone.status_code == 404 and "zone &#39;nowhere&#39; not found" in wrong_zone.text
        )
        bad_ttl = adam.post(
            plant.url + "/admin/agents/tokens", data={**form, "csrf": csrf, "ttl": "9d"}
        )
        assert bad_ttl.status_code == 400 and "cjt1" not in bad_ttl.text
        made = adam.post(plant.url + "/admin/agents/tokens", data={**form, "csrf": csrf})
        assert made.status_code == 201 and "conduit-agent join --broker" in made.text
        assert made.headers["cache-control"] == "no-store"
        missing = adam.post(plant.url + "/admin/agents/nope/revoke", data={"csrf": csrf})
        assert missing.status_code == 404 and "not found" in missing.text
