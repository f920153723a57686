"""A broker configured for an OPA server: denies while the server is down, allows when it says allow."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx2

from broker.demo import seed
from tests.harness.broker import RunningBroker, audit_events, web_login
from tests.harness.opa_server import start_opa_server
from tests.harness.ports import free_port
from tests.rego_fixtures import write_bundle

QUESTION = {
    "claims": {"sub": "u-1", "groups": ["conduit-vendors"], "amr": ["pwd"]},
    "asset": "hist-01",
    "action": {"kind": "ssh", "port": 22, "operation_class": "read_only"},
}


def test_opa_configured_broker_fails_closed_then_allows(
    make_broker: Callable[..., RunningBroker], http: httpx2.Client, tmp_path: Path
) -> None:
    port = free_port()
    broker = make_broker(
        policy={
            "engine": "opa",
            "opa_url": f"http://127.0.0.1:{port}",
            "opa_token": "opa-test-token",
            "opa_timeout_ms": 5000,  # "down" is refused at once; "up" may be slow under load
        }
    )
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    web_login(http, broker.url, "adam", "adam-demo-pw")
    status = http.get(f"{broker.url}/api/policy/status").json()
    assert status["engine"] == "opa"

    down = http.post(f"{broker.url}/api/policy/whatif", json=QUESTION).json()["decision"]
    assert down["allow"] is False and "unreachable" in " ".join(down["reasons"])
    assert down["engine"] == "opa"

    data = tmp_path / "data.json"
    data.write_text(json.dumps({"plant": {"blocked": "nobody"}}))
    with start_opa_server(
        write_bundle(tmp_path / "bundle"), token="opa-test-token", port=port, data=data
    ):
        up = http.post(f"{broker.url}/api/policy/whatif", json=QUESTION).json()["decision"]
    assert up["allow"] is True and up["reasons"] == ["u-1 may read"]
    outcomes = [e["outcome"] for e in audit_events(broker, "policy.decision")]
    assert outcomes == ["deny", "allow"]
    assert "opa-test-token" not in json.dumps(audit_events(broker))
