"""The plant in the admin UI (``/admin/plant``) and the per-asset API (``/api/plant/assets``)."""

from __future__ import annotations

from typing import Any

import httpx2

from broker.demo import DEMO_PLANT_PATH
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
