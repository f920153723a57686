"""One plant object at a time: ``/api/plant/{sites,zones,windows,vendor-orgs,contracts}`` and
the removal forms of ``/admin/plant`` (broker/api/plant_objects.py, docs/plant.md "API")."""

from __future__ import annotations

import html
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, expect

from tests.harness.broker import RunningBroker, audit_events, same_origin_api, web_login
from tests.test_plant import WITH_MFA
from tests.test_plant_admin import SSH_ASSET, _adam, _csrf, exported_plant, plant_page_as_adam

HILLTOP = {"name": "Hilltop", "timezone": "America/Chicago", "description": "second plant"}
WINDOW = {"days": ["sun", "sat"], "start": "06:00", "end": "14:00"}
CELL_ASSET = {**SSH_ASSET, "name": "ws-cell", "site": "Hilltop", "zone": "cell"}


def _delete(client: httpx2.Client, url: str) -> httpx2.Response:
    """A DELETE as a same-origin script sends it (JSON, so the CSRF check applies)."""
    return client.request("DELETE", url, json={})


def _refused(broker: RunningBroker) -> list[str]:
    return [e["details"]["message"] for e in audit_events(broker, "plant.refused")]


def test_sites_zones_and_windows_one_at_a_time(broker: RunningBroker, http: httpx2.Client) -> None:
    adam = _adam(http, broker)
    sites = f"{broker.url}/api/plant/sites"
    assert [s["name"] for s in adam.get(sites).json()["sites"]] == ["Riverside Plant"]

    bad_tz = adam.post(sites, json={**HILLTOP, "timezone": "Europe/Springfield"})
    assert bad_tz.status_code == 400
    assert bad_tz.json()["message"] == (
        "sites[1].timezone: 'Europe/Springfield' is not an IANA time zone name"
    )
    assert _refused(broker) == [bad_tz.json()["message"]]
    assert adam.post(sites, json=HILLTOP).json()["summary"]["created"] == 1
    assert adam.post(sites, json=HILLTOP).status_code == 409
    [site] = audit_events(broker, "plant.site.created")[-1:]
    assert site["subject"] == "Hilltop" and site["details"]["before"] is None

    zones = f"{sites}/Hilltop/zones"
    level7 = adam.post(zones, json={"name": "cell", "purdue_level": 7})
    assert level7.status_code == 400
    assert level7.json()["message"] == (
        "sites[0].zones[0].purdue_level: must be a Purdue level 0-5, got 7"
    )
    assert adam.get(zones).json() == {"zones": []}
    assert adam.post(zones, json={"name": "cell", "purdue_level": 1}).status_code == 200
    assert adam.put(f"{zones}/cell", json={"purdue_level": 2}).json()["summary"]["changed"] == 1
    [changed] = audit_events(broker, "plant.zone.changed")
    assert changed["subject"] == "Hilltop/cell"
    assert (
        changed["details"]["before"]["purdue_level"],
        changed["details"]["after"]["purdue_level"],
    ) == (1, 2)
    renamed = adam.put(f"{zones}/cell", json={"name": "other", "purdue_level": 2})
    assert renamed.status_code == 400
    assert adam.get(f"{sites}/Nowhere/zones").json()["message"] == "no site 'Nowhere'"
    assert adam.get(f"{zones}/nope").status_code == 404

    # A PUT of the site keeps its zones and windows (they have their own URLs).
    assert adam.put(f"{sites}/Hilltop", json={"timezone": "America/Denver"}).status_code == 200
    hilltop = adam.get(f"{sites}/Hilltop").json()
    assert hilltop["timezone"] == "America/Denver" and hilltop["zones"][0]["name"] == "cell"

    windows = f"{sites}/Hilltop/windows"
    assert adam.post(windows, json=WINDOW).status_code == 200
    [listed] = adam.get(windows).json()["maintenance_windows"]
    assert listed["key"] == "sat,sun_06:00-14:00" and listed["days"] == ["sat", "sun"]
    assert adam.post(windows, json=WINDOW).status_code == 409
    same = adam.post(windows, json={**WINDOW, "end": "06:00"})
    assert same.status_code == 400 and "cannot start and end at the same time" in same.text
    assert _delete(adam, f"{windows}/{listed['key']}").status_code == 200
    [dropped] = audit_events(broker, "plant.site.changed")[-1:]
    assert len(dropped["details"]["before"]["maintenance_windows"]) == 1
    assert dropped["details"]["after"]["maintenance_windows"] == []
    assert _delete(adam, f"{windows}/{listed['key']}").status_code == 404


def test_what_still_uses_a_zone_or_site_keeps_it(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    sites = f"{broker.url}/api/plant/sites"
    assert adam.post(sites, json=HILLTOP).status_code == 200
    assert adam.post(f"{sites}/Hilltop/zones", json={"name": "cell", "purdue_level": 1}).is_success
    assert adam.post(f"{broker.url}/api/plant/assets", json=CELL_ASSET).status_code == 200

    before = exported_plant(adam, broker)
    zone = _delete(adam, f"{sites}/Hilltop/zones/cell")
    assert zone.status_code == 409
    assert zone.json()["message"] == "zone 'cell' is still used by asset ws-cell"
    site = _delete(adam, f"{sites}/Hilltop")
    assert site.status_code == 409 and "asset ws-cell" in site.json()["message"]
    assert exported_plant(adam, broker) == before
    assert _refused(broker) == [zone.json()["message"], site.json()["message"]]

    assert adam.post(f"{broker.url}/api/plant/assets/ws-cell/archive", json={}).is_success
    token = adam.post(f"{broker.url}/api/agents/tokens", json={"site": "Hilltop", "zone": "cell"})
    assert token.status_code == 201, token.text
    by_token = _delete(adam, f"{sites}/Hilltop/zones/cell")
    assert by_token.status_code == 409
    assert "zone Hilltop/cell: still used by 1 join token(s)" in by_token.json()["message"]
    assert _delete(adam, f"{sites}/Hilltop").status_code == 409
    assert exported_plant(adam, broker)["sites"][0]["zones"][0]["name"] == "cell"

    assert adam.post(sites, json={"name": "Lakeside", "timezone": "UTC"}).status_code == 200
    assert adam.post(f"{sites}/Lakeside/zones", json={"name": "z", "purdue_level": 3}).is_success
    assert _delete(adam, f"{sites}/Lakeside/zones/z").json()["summary"]["removed"] == 1
    [removed] = audit_events(broker, "plant.zone.removed")
    assert removed["subject"] == "Lakeside/z" and removed["details"]["after"] is None
    assert removed["details"]["before"]["purdue_level"] == 3
    assert _delete(adam, f"{sites}/Lakeside").json()["summary"]["removed"] == 1
    assert audit_events(broker, "plant.site.removed")[0]["subject"] == "Lakeside"
    assert adam.get(f"{sites}/Lakeside").status_code == 404


def _tune(adam: httpx2.Client, broker: RunningBroker, org: str) -> dict[str, Any]:
    body = {
        "claims": {**WITH_MFA, "vendor_org": org},
        "with_grant": True,
        "asset": "plc-press-3",
        "action": {"kind": "tcp", "port": 502, "operation_class": "tune"},
    }
    resp = adam.post(f"{broker.url}/api/policy/whatif", json=body)
    assert resp.status_code == 200, resp.text
    decision: dict[str, Any] = resp.json()["decision"]
    return decision


def test_vendor_orgs_and_contracts_one_at_a_time_refresh_the_policy_data(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    orgs = f"{broker.url}/api/plant/vendor-orgs"
    assert adam.post(orgs, json={"slug": "beta", "name": "Beta Controls"}).status_code == 200
    contracts = f"{orgs}/beta/contracts"
    contract = {"reference": "B-1", "asset": "plc-press-3", "valid_from": "-1d"}
    late = adam.post(contracts, json={**contract, "valid_until": "-2d"})
    assert late.status_code == 400
    assert late.json()["message"].startswith(
        "vendor_orgs[1].contracts[0].valid_until: the contract ends ("
    )
    assert not _tune(adam, broker, "beta")["allow"]
    assert adam.post(contracts, json={**contract, "valid_until": "+30d"}).status_code == 200
    assert adam.post(contracts, json={**contract, "valid_until": "+30d"}).status_code == 409
    assert _tune(adam, broker, "beta")["allow"]  # in the very next decision

    only_reads = {**contract, "valid_until": "+30d", "operation_classes": ["read_only"]}
    assert adam.put(f"{contracts}/B-1", json=only_reads).json()["summary"]["changed"] == 1
    [changed] = audit_events(broker, "plant.contract.changed")
    assert changed["subject"] == "beta/B-1"
    assert changed["details"]["before"].get("operation_classes", []) == []
    assert changed["details"]["after"]["operation_classes"] == ["read_only"]
    assert not _tune(adam, broker, "beta")["allow"]
    assert adam.get(f"{contracts}/B-2").json()["message"] == (
        "no contract 'B-2' in vendor org 'beta'"
    )

    # A PUT of the organisation keeps its contracts; removing it removes them with it.
    assert adam.put(f"{orgs}/beta", json={"name": "Beta Controls AG"}).status_code == 200
    assert adam.get(f"{contracts}/B-1").status_code == 200
    assert adam.put(f"{contracts}/B-1", json={**only_reads, "operation_classes": []}).is_success
    assert _tune(adam, broker, "beta")["allow"]
    gone = _delete(adam, f"{orgs}/beta")
    assert gone.json()["summary"]["removed"] == 2, gone.text
    assert audit_events(broker, "plant.vendor_org.removed")[0]["subject"] == "beta"
    assert audit_events(broker, "plant.contract.removed")[0]["subject"] == "beta/B-1"
    assert not _tune(adam, broker, "beta")["allow"]  # the org no longer resolves
    assert adam.get(f"{orgs}/beta").status_code == 404


def test_an_org_with_users_and_a_contract_with_history_are_kept(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    with httpx2.Client() as alice:
        web_login(alice, broker.url, "alice", "alice-demo-pw")
        same_origin_api(alice, broker.url)
        ask = {"asset": "hmi-press-3", "duration": "1h", "reason": "diagnostics"}
        assert alice.post(f"{broker.url}/api/requests", json=ask).status_code < 500
    org = f"{broker.url}/api/plant/vendor-orgs/acme-automation"
    [reference] = [c["reference"] for c in adam.get(f"{org}/contracts").json()["contracts"]]
    before = exported_plant(adam, broker)

    kept = _delete(adam, f"{org}/contracts/{reference}")
    assert kept.status_code == 409
    assert kept.json()["message"] == (
        f"plant apply refused: contract acme-automation/{reference}: has history (1 requests "
        "under it); end it by moving valid_until instead"
    )
    users = _delete(adam, org)
    assert users.status_code == 409
    assert "vendor_org acme-automation: still used by 1 user(s)" in users.json()["message"]
    assert exported_plant(adam, broker) == before
    assert _refused(broker) == [kept.json()["message"], users.json()["message"]]
    assert not audit_events(broker, "plant.contract.removed")

    ended = {**before["vendor_orgs"][0]["contracts"][0], "valid_until": "+1d"}
    assert adam.put(f"{org}/contracts/{reference}", json=ended).status_code == 200
    assert _delete(adam, f"{org}/contracts/{reference}").status_code == 409  # still its history


def test_the_object_api_is_for_admins_and_cookie_calls_need_the_csrf_proof(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    _adam(http, broker)
    before = exported_plant(http, broker)
    del http.headers["X-CSRF-Token"]
    url = f"{broker.url}/api/plant"
    assert http.post(f"{url}/sites", json=HILLTOP).status_code == 403
    assert _delete(http, f"{url}/sites/Riverside Plant/zones/field-devices").status_code == 403
    assert _delete(http, f"{url}/vendor-orgs/acme-automation").status_code == 403
    assert exported_plant(http, broker) == before
    with httpx2.Client() as olga:
        web_login(olga, broker.url, "olga", "olga-demo-pw")
        same_origin_api(olga, broker.url)
        assert olga.get(f"{url}/sites").status_code == 403
        assert _delete(olga, f"{url}/vendor-orgs/acme-automation/contracts/x").status_code == 403


# --------------------------------------------------------------------------- the page


def test_removal_forms_confirm_and_refuse_inline(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    adam = _adam(http, broker)
    page = adam.get(f"{broker.url}/admin/plant").text
    csrf = _csrf(page)
    assert "<script" not in page.split("<main", 1)[-1]  # the confirm step is <details>, no JS
    assert "Yes, remove zone field-devices</button>" in page

    def post(kind: str, **fields: Any) -> httpx2.Response:
        return adam.post(f"{broker.url}/admin/plant/{kind}", data={"csrf": csrf, **fields})

    before = exported_plant(adam, broker)
    used = post("zone_remove", site="Riverside Plant", name="field-devices")
    assert used.status_code == 409
    text = html.unescape(used.text)
    row = text.split('<details class="confirm remove" open>')[1].split("</details>")[0]
    assert 'value="field-devices"' in row  # the error is next to that zone's form
    assert "zone 'field-devices' is still used by asset drive-press-3" in row
    assert exported_plant(adam, broker) == before
    site = html.unescape(post("site_remove", name="Riverside Plant").text)
    assert "site 'Riverside Plant' is still used by asset " in site

    assert post("site", name="Hilltop", timezone="UTC").status_code == 303
    assert post("zone", site="Hilltop", name="cell", purdue_level="2").status_code == 303
    assert post("zone_remove", site="Hilltop", name="cell").status_code == 303
    assert audit_events(broker, "plant.zone.removed")[0]["subject"] == "Hilltop/cell"
    assert post("site_remove", name="Hilltop").status_code == 303
    assert [s["name"] for s in exported_plant(adam, broker)["sites"]] == ["Riverside Plant"]

    assert post("vendor_org", slug="beta", name="Beta Controls").status_code == 303
    contract = {"org": "beta", "reference": "B-1", "site": "Riverside Plant"}
    times = {"valid_from": "-1d", "valid_until": "+30d"}
    assert post("contract", **contract, **times).status_code == 303
    assert post("contract_remove", org="beta", reference="B-1").status_code == 303
    [removed] = audit_events(broker, "plant.contract.removed")
    assert removed["details"]["before"]["site"] == "Riverside Plant"
    assert post("vendor_org_remove", slug="beta").status_code == 303
    assert post("vendor_org_remove", slug="beta").status_code == 400  # gone: no such org

    with httpx2.Client() as alice:
        web_login(alice, broker.url, "alice", "alice-demo-pw")
    users = html.unescape(post("vendor_org_remove", slug="acme-automation").text)
    assert "vendor_org acme-automation: still used by 1 user(s)" in users
    assert [o["slug"] for o in exported_plant(adam, broker)["vendor_orgs"]] == ["acme-automation"]


@pytest.mark.browser
def test_removing_a_zone_in_the_browser_asks_first_and_a_refusal_shows_in_place(
    broker: RunningBroker, http: httpx2.Client, chromium: Browser
) -> None:
    adam = _adam(http, broker)
    sites = f"{broker.url}/api/plant/sites"
    cell = {"name": "cell", "purdue_level": 2}
    assert adam.post(f"{sites}/Riverside Plant/zones", json=cell).is_success
    page = plant_page_as_adam(chromium, broker)
    zones = page.locator("table.zones").first

    used = zones.locator("tr", has_text="field-devices")
    confirm = used.get_by_role("button", name="Yes, remove zone field-devices")
    expect(confirm).to_be_hidden()  # behind the "Remove…" step
    used.locator("summary").click()
    confirm.click()
    expect(page.locator("#error-zone_remove")).to_have_text(
        "zone 'field-devices' is still used by asset drive-press-3"
    )
    expect(zones.locator("tr", has_text="field-devices")).to_have_count(1)

    unused = page.locator("table.zones").first.locator("tr", has_text="cell")
    unused.locator("summary").click()
    unused.get_by_role("button", name="Yes, remove zone cell").click()
    expect(page.locator("table.zones").first).not_to_contain_text("cell")
    page.context.close()
    [removed] = audit_events(broker, "plant.zone.removed")
    assert removed["subject"] == "Riverside Plant/cell"
