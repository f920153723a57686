"""The plant in the admin UI (``/admin/plant``) and the per-asset API (``/api/plant/assets``)."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlmodel import select

from broker.dev.demo import DEMO_PLANT_PATH
from broker.web.plant_pages import settings_summary
from sessions.db import session_scope
from sessions.models import Agent, AgentEndpoint, Asset
from sessions.plant import load_yaml
from tests.harness.broker import RunningBroker, audit_events, same_origin_api, web_login

SSH_ASSET: dict[str, Any] = {
    "name": "eng-ws-2",
    "site": "Riverside Plant",
    "zone": "supervisory",
    "criticality": "medium",
    "owner_group": "ot-press-line",
    "endpoints": [
        {
            "name": "ssh",
            "host": "127.0.0.1",
            "port": 2222,
            "protocol": "ssh",
            "settings": {"logins": {"read_only": ["maint"], "program": ["eng"]}},
        }
    ],
}


def _demo() -> Any:
    return load_yaml(DEMO_PLANT_PATH.read_text(encoding="utf-8"))[0]


def _adam(http: httpx2.Client, broker: RunningBroker) -> httpx2.Client:
    web_login(http, broker.url, "adam", "adam-demo-pw")
    same_origin_api(http, broker.url)
    assert http.post(f"{broker.url}/api/plant/apply", json={"document": _demo()}).is_success
    return http


def test_the_asset_api_creates_replaces_and_archives_with_the_plant_rules(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    url = f"{broker.url}/api/plant/assets"
    names = [a["name"] for a in adam.get(url).json()["assets"]]
    assert "plc-press-3" in names and "eng-ws-2" not in names

    created = adam.post(url, json=SSH_ASSET)
    assert created.status_code == 200, created.text
    assert created.json()["summary"]["created"] == 1
    [event] = audit_events(broker, "plant.asset.created")[-1:]
    assert event["subject"] == "eng-ws-2" and event["details"]["before"] is None
    assert event["details"]["after"]["endpoints"][0]["port"] == 2222
    assert adam.get(f"{url}/eng-ws-2").json()["endpoints"][0]["settings"]["logins"] == {
        "program": ["eng"],
        "read_only": ["maint"],
    }
    assert adam.post(url, json=SSH_ASSET).status_code == 409

    bad = {**SSH_ASSET, "endpoints": [{**SSH_ASSET["endpoints"][0], "port": 70000}]}
    refused = adam.put(f"{url}/eng-ws-2", json=bad)
    assert refused.status_code == 400
    place = sorted([*names, "eng-ws-2"]).index("eng-ws-2")  # the export orders by name
    assert refused.json()["message"] == (
        f"assets[{place}].endpoints[0].port: must be a port 1-65535, got 70000"
    )
    assert adam.get(f"{url}/eng-ws-2").json()["endpoints"][0]["port"] == 2222

    moved = {**SSH_ASSET, "endpoints": [{**SSH_ASSET["endpoints"][0], "port": 2223}]}
    assert adam.put(f"{url}/eng-ws-2", json=moved).json()["summary"]["changed"] == 1
    [change] = audit_events(broker, "plant.asset.changed")
    assert change["details"]["before"]["endpoints"][0]["port"] == 2222
    assert change["details"]["after"]["endpoints"][0]["port"] == 2223
    assert adam.put(f"{url}/eng-ws-2", json={**moved, "name": "other"}).status_code == 400

    assert adam.post(f"{url}/eng-ws-2/archive", json={}).json()["summary"]["removed"] == 1
    assert adam.get(f"{url}/eng-ws-2").status_code == 404
    assert adam.put(f"{url}/nope", json=SSH_ASSET).status_code == 404


def test_the_asset_api_is_for_admins_and_cookie_calls_need_the_csrf_proof(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    _adam(http, broker)
    del http.headers["X-CSRF-Token"]
    refused = http.post(f"{broker.url}/api/plant/assets", json=SSH_ASSET)
    assert refused.status_code == 403
    with httpx2.Client() as olga:
        web_login(olga, broker.url, "olga", "olga-demo-pw")
        assert olga.get(f"{broker.url}/api/plant/assets").status_code == 403


# --------------------------------------------------------------------------- the page


def _csrf(page: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert match, "the page carries the session's CSRF token"
    return match[1]


def test_settings_are_summarized_for_people() -> None:
    modbus = {
        "unit_ids": [1],
        "write_ranges": {
            "tune": [
                {"table": "coils", "first": 0, "last": 15},
                {"table": "holding_registers", "first": 0, "last": 99},
            ]
        },
    }
    assert settings_summary("modbus", modbus) == (
        "Modbus: tune may write coils 0\u201315, holding registers 0\u201399; unit ids 1"
    )
    ssh = {"logins": {"read_only": ["maint"], "program": ["eng"]}}
    assert settings_summary("ssh", ssh) == "SSH logins: read_only maint; program eng"
    assert settings_summary("vnc", {}) == ""


def _agent_declares(broker: RunningBroker, asset: str, host: str, port: int) -> None:
    with session_scope(broker.services.engine, write=True) as db:
        row = db.exec(select(Asset).where(Asset.name == asset)).one()
        agent = Agent(name="edge-1", site_id=row.site_id, state="active")
        db.add(agent)
        db.flush()
        db.add(AgentEndpoint(agent_id=agent.id, host=host, port=port, protocol="tcp"))
        row.agent_id = agent.id
        db.add(row)


def test_the_plant_page_shows_the_plant_and_its_forms_change_it_through_apply(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    _agent_declares(broker, "hmi-press-3", "127.0.0.1", 5900)
    page = adam.get(f"{broker.url}/admin/plant")
    assert page.status_code == 200 and 'href="/admin/plant"' in page.text
    assert 'Riverside Plant <span class="muted">(Europe/Berlin)</span>' in page.text
    assert "<td>press-line-control</td><td>L1</td>" in page.text
    assert "SSH logins: read_only maint; tune maint; program eng; firmware eng" in page.text
    assert "declared by edge-1" in page.text
    assert "no agent declares 127.0.0.1:502" in page.text
    csrf = _csrf(page.text)

    def post(kind: str, **fields: Any) -> httpx2.Response:
        return adam.post(f"{broker.url}/admin/plant/{kind}", data={"csrf": csrf, **fields})

    before = exported_plant(adam, broker)
    bad_zone = post("zone", site="Riverside Plant", name="cell-9", purdue_level="7")
    assert bad_zone.status_code == 400
    assert re.search(
        r'id="error-zone">sites\[0\]\.zones\[\d\]\.purdue_level: must be a Purdue level 0-5, '
        r"got 7<",
        bad_zone.text,
    )
    assert 'value="cell-9"' in bad_zone.text  # the form keeps what was typed
    assert exported_plant(adam, broker) == before

    assert post("zone", site="Riverside Plant", name="cell-9", purdue_level="1").status_code == 303
    asset = {"site": "Riverside Plant", "zone": "cell-9", "criticality": "high"}
    assert post("asset", name="plc-9", owner_group="ot-press-line", **asset).status_code == 303
    bad_port = post(
        "endpoint", asset="plc-9", name="modbus", protocol="modbus", host="127.0.0.1", port="70000"
    )
    assert "endpoints[0].port: must be a port 1-65535, got 70000" in bad_port.text
    settings = "{unit_ids: [1], write_ranges: {tune: [{table: coils, first: 0, last: 15}]}}"
    ok = post(
        "endpoint",
        asset="plc-9",
        name="modbus",
        protocol="modbus",
        host="127.0.0.1",
        port="5020",
        settings=settings,
    )
    assert ok.status_code == 303, ok.text
    text = adam.get(f"{broker.url}/admin/plant").text
    assert "Modbus: tune may write coils 0\u201315; unit ids 1" in text
    assert "no agent declares 127.0.0.1:5020" in text

    assert post("vendor_org", slug="beta", name="Beta Controls").status_code == 303
    late = post(
        "contract",
        org="beta",
        reference="B-1",
        site="Riverside Plant",
        valid_from="2027-01-01T00:00:00Z",
        valid_until="2026-01-01T00:00:00Z",
    )
    assert late.status_code == 400
    assert "valid_until: the contract ends (2026-01-01T00:00:00Z) before it starts" in late.text
    fine = adam.post(
        f"{broker.url}/admin/plant/contract",
        data={
            "csrf": csrf,
            "org": "beta",
            "reference": "B-1",
            "asset": "plc-9",
            "valid_from": "-1d",
            "valid_until": "+30d",
            "operation_classes": ["read_only", "tune"],
        },
    )
    assert fine.status_code == 303, fine.text
    [org] = [o for o in exported_plant(adam, broker)["vendor_orgs"] if o["slug"] == "beta"]
    assert org["contracts"][0]["operation_classes"] == ["read_only", "tune"]

    in_use = post("archive", asset="plc-9")
    assert in_use.status_code == 409
    assert "asset &#39;plc-9&#39; is still used by contract beta/B-1" in in_use.text
    [created] = [e for e in audit_events(broker, "plant.asset.created") if e["subject"] == "plc-9"]
    assert created["details"]["after"]["zone"] == "cell-9"
    [changed] = audit_events(broker, "plant.asset.changed")
    assert changed["details"]["before"]["endpoints"] == []
    assert changed["details"]["after"]["endpoints"][0]["port"] == 5020
    assert audit_events(broker, "plant.zone.created")[-1]["subject"].endswith("cell-9")

    assert adam.post(f"{broker.url}/admin/plant/zone", data={"name": "x"}).status_code == 400


def exported_plant(http: httpx2.Client, broker: RunningBroker) -> Any:
    return http.get(f"{broker.url}/api/plant").json()


def test_the_plant_page_is_for_admins(broker: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, broker.url, "olga", "olga-demo-pw")
    assert http.get(f"{broker.url}/admin/plant").status_code == 403
    assert 'href="/admin/plant"' not in http.get(f"{broker.url}/").text


# --------------------------------------------------------------------------- in Chromium


def plant_page_as_adam(chromium: Browser, broker: RunningBroker) -> Page:
    """A new browser context signed in as adam (through the real sign-in), on the plant page."""
    page = chromium.new_context().new_page()
    page.goto(broker.url + "/")
    page.click("#signin-main")
    page.fill("#username", "adam")
    page.fill("#password", "adam-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(broker.url + "/")
    page.click('nav a[href="/admin/plant"]')
    expect(page.locator("h1")).to_have_text("Plant")
    return page


@pytest.mark.browser
def test_adam_builds_part_of_the_plant_in_the_browser(
    broker: RunningBroker, http: httpx2.Client, chromium: Browser
) -> None:
    _adam(http, broker)
    page = plant_page_as_adam(chromium, broker)

    zone = page.locator("#form-zone")
    zone.locator('[name="name"]').fill("cell-9")
    zone.locator('[name="purdue_level"]').fill("7")
    zone.locator("button").click()
    expect(page.locator("#error-zone")).to_contain_text("must be a Purdue level 0-5, got 7")
    expect(page.locator("table.zones")).not_to_contain_text("cell-9")
    page.locator('#form-zone [name="purdue_level"]').fill("1")
    page.locator("#form-zone button").click()
    expect(page.locator("table.zones").first).to_contain_text("cell-9")

    for name, protocol, port, settings, summary in (
        (
            "ws-9",
            "ssh",
            "2222",
            "logins: {read_only: [maint], program: [eng]}",
            "SSH logins: read_only maint; program eng",
        ),
        (
            "plc-9",
            "modbus",
            "5020",
            '{"write_ranges": {"tune": '
            '[{"table": "holding_registers", "first": 0, "last": 99}]}, "unit_ids": [1]}',
            "Modbus: tune may write holding registers 0\u201399; unit ids 1",
        ),
    ):
        form = page.locator("#form-asset")
        form.locator('[name="name"]').fill(name)
        form.locator('[name="zone"]').fill("cell-9")
        form.locator('[name="owner_group"]').fill("ot-press-line")
        form.locator("button").click()
        expect(page.locator(f"#asset-{name}")).to_contain_text("none declared")
        form = page.locator("#form-endpoint")
        form.locator('[name="asset"]').select_option(name)
        form.locator('[name="name"]').fill(protocol)
        form.locator('[name="protocol"]').select_option(protocol)
        form.locator('[name="host"]').fill("127.0.0.1")
        form.locator('[name="port"]').fill("70000")
        form.locator('[name="settings"]').fill(settings)
        form.locator("button").click()
        expect(page.locator("#error-endpoint")).to_contain_text(
            "endpoints[0].port: must be a port 1-65535, got 70000"
        )
        page.locator('#form-endpoint [name="port"]').fill(port)
        page.locator("#form-endpoint button").click()
        row = page.locator(f"#asset-{name}")
        expect(row).to_contain_text(summary)
        expect(row).to_contain_text(f"no agent declares 127.0.0.1:{port}")

    org = page.locator("#form-vendor_org")
    org.locator('[name="slug"]').fill("beta")
    org.locator('[name="name"]').fill("Beta Controls")
    org.locator("button").click()
    contract = page.locator("#form-contract")
    contract.locator('[name="org"]').select_option("beta")
    contract.locator('[name="reference"]').fill("B-1")
    contract.locator('[name="asset"]').select_option("plc-9")
    contract.locator('[name="valid_from"]').fill("2027-01-01T00:00:00Z")
    contract.locator('[name="valid_until"]').fill("2026-06-01T00:00:00Z")
    contract.locator('[value="tune"]').check()
    contract.locator("button").click()
    expect(page.locator("#error-contract")).to_contain_text("before it starts")
    page.locator('#form-contract [name="valid_from"]').fill("-1d")
    page.locator('#form-contract [name="valid_until"]').fill("+30d")
    page.locator("#form-contract button").click()
    expect(page.locator("#plant-vendors")).to_contain_text("B-1")
    page.context.close()

    kinds = {e["kind"] for e in audit_events(broker) if e["kind"].startswith("plant.")}
    assert {"plant.zone.created", "plant.asset.created", "plant.asset.changed"} <= kinds
    assert {"plant.vendor_org.created", "plant.contract.created"} <= kinds
    [contract_event] = audit_events(broker, "plant.contract.created")[-1:]
    assert contract_event["details"]["before"] is None
    assert contract_event["details"]["after"]["operation_classes"] == ["tune"]


def test_an_agents_undeclared_endpoint_is_adopted_into_an_asset_and_detached_again(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    _agent_declares(broker, "hmi-press-3", "127.0.0.1", 5900)
    with session_scope(broker.services.engine, write=True) as db:
        agent = db.exec(select(Agent).where(Agent.name == "edge-1")).one()
        db.add(AgentEndpoint(agent_id=agent.id, host="127.0.0.1", port=5901, protocol="vnc"))
    page = adam.get(f"{broker.url}/admin/plant").text
    unmatched = page.split('<table class="unmatched">')[1].split("</table>")[0]
    assert "vnc 127.0.0.1:5901" in unmatched and "127.0.0.1:5900" not in unmatched
    assert "<option>hmi-press-3</option>" in unmatched  # assets routed through edge-1
    csrf = _csrf(page)
    adopt = {"asset": "hmi-press-3", "name": "vnc-2", "host": "127.0.0.1", "port": "5901"}
    done = adam.post(
        f"{broker.url}/admin/plant/endpoint", data={"csrf": csrf, "protocol": "vnc", **adopt}
    )
    assert done.status_code == 303, done.text
    page = adam.get(f"{broker.url}/admin/plant").text
    assert "5901" not in page.split('<table class="unmatched">')[1].split("</table>")[0]
    row = page.split('id="asset-hmi-press-3"')[1].split("</tr>")[0]
    assert row.count("declared by edge-1") == 2 and "no agent declares" not in row
    [adopted] = audit_events(broker, "plant.asset.changed")
    assert [e["port"] for e in adopted["details"]["after"]["endpoints"]] == [5900, 5901]

    detach = {"csrf": csrf, "asset": "hmi-press-3", "endpoint": "vnc-2"}
    assert adam.post(f"{broker.url}/admin/plant/detach", data=detach).status_code == 303
    assert adam.post(f"{broker.url}/admin/plant/detach", data=detach).status_code == 400
    detached = audit_events(broker, "plant.asset.changed")[-1]
    assert [e["port"] for e in detached["details"]["after"]["endpoints"]] == [5900]
    page = adam.get(f"{broker.url}/admin/plant").text
    assert "vnc 127.0.0.1:5901" in page.split('<table class="unmatched">')[1]


def test_sites_and_maintenance_windows_from_the_page(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    csrf = _csrf(adam.get(f"{broker.url}/admin/plant").text)

    def post(kind: str, **fields: Any) -> httpx2.Response:
        return adam.post(f"{broker.url}/admin/plant/{kind}", data={"csrf": csrf, **fields})

    bad = post("site", name="Hilltop", timezone="Europe/Springfield")
    assert bad.status_code == 400
    assert "sites[1].timezone: 'Europe/Springfield' is not an IANA time zone name" in html.unescape(
        bad.text
    )
    assert post("site", name="Hilltop", timezone="America/Chicago").status_code == 303
    [site] = audit_events(broker, "plant.site.created")[-1:]
    assert (
        site["subject"] == "Hilltop" and site["details"]["after"]["timezone"] == "America/Chicago"
    )

    same = post("window", site="Hilltop", days=["sat"], start="06:00", end="06:00")
    assert "a window cannot start and end at the same time" in same.text
    window = {"site": "Hilltop", "days": ["sat", "sun"], "start": "06:00", "end": "14:00"}
    assert post("window", **window).status_code == 303
    page = adam.get(f"{broker.url}/admin/plant").text
    assert "sat, sun 06:00\u201314:00" in page
    [changed] = audit_events(broker, "plant.site.changed")
    assert changed["details"]["before"]["maintenance_windows"] == []
    assert changed["details"]["after"]["maintenance_windows"][0]["days"] == ["sat", "sun"]
    assert 'name="key" value="sat,sun_06:00-14:00"' in page  # a stable name, not a place
    assert post("window_remove", site="Hilltop", key="sun_06:00-14:00").status_code == 400
    assert post("window_remove", site="Hilltop", key="sat,sun_06:00-14:00").status_code == 303
    hilltop = [s for s in exported_plant(adam, broker)["sites"] if s["name"] == "Hilltop"]
    assert hilltop[0]["maintenance_windows"] == []
