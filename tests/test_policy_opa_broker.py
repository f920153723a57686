"""A broker configured for an OPA server: denies while the server is down, allows when it says
allow; the plant data reaches OPA (Data API) at start, on every change and periodically, so the
default bundle decides with the real plant."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx2

from broker.dev.demo import seed
from broker.runtime.settings import default_bundle_dir
from sessions.db import session_scope
from sessions.models import PlantFlag
from sessions.policy_data import LOCKOUT_FLAG
from tests.harness.broker import RunningBroker, audit_events, same_origin_api, web_login
from tests.harness.opa_server import start_opa_server
from tests.harness.ports import free_port
from tests.harness.wait import wait_until
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
            "data_refresh_s": 3600,  # the test bundle reads its own data.plant: no push here
        }
    )
    seed(broker.services.settings.database_url)
    assert broker.refresh_policy_data() is False  # the server is down
    failed = audit_events(broker, "policy.data_push_failed")
    assert len(failed) == 1 and failed[0]["outcome"] == "error"  # once, not on every retry
    assert "unreachable" in failed[0]["details"]["problem"]
    web_login(http, broker.url, "adam", "adam-demo-pw")
    same_origin_api(http, broker.url)
    status = http.get(f"{broker.url}/api/policy/status").json()
    assert status["engine"] == "opa"
    assert status["data_push"]["pushes"] == 0
    assert "unreachable" in status["data_push"]["problem"]

    down = http.post(f"{broker.url}/api/policy/whatif", json=QUESTION).json()["decision"]
    assert down["allow"] is False and "unreachable" in " ".join(down["reasons"])
    assert down["engine"] == "opa"

    data = tmp_path / "data.json"
    data.write_text(json.dumps({"plant": {"blocked": "nobody"}}))
    with start_opa_server(
        write_bundle(tmp_path / "bundle"), token="opa-test-token", port=port, data=data
    ):
        up = http.post(f"{broker.url}/api/policy/whatif", json=QUESTION).json()["decision"]
        assert broker.refresh_policy_data() is True  # the server is back: pushed, recovered
    assert http.get(f"{broker.url}/api/policy/status").json()["data_push"] == {
        "pushes": 1,
        "problem": None,
    }
    recovered = audit_events(broker, "policy.data_push_recovered")
    assert [e["details"] for e in recovered] == [{"engine": "opa"}]
    assert len(audit_events(broker, "policy.data_push_failed")) == 1
    assert up["allow"] is True and up["reasons"] == ["u-1 may read"]
    outcomes = [e["outcome"] for e in audit_events(broker, "policy.decision")]
    assert outcomes == ["deny", "allow"]
    assert "opa-test-token" not in json.dumps(audit_events(broker))


VENDOR_SSH = {  # a demo vendor with MFA, under a grant, on the historian's SSH endpoint
    "claims": {
        "sub": "u-vendor-alice",
        "email": "alice@acme-automation.example",
        "name": "Alice Vendor",
        "groups": ["conduit-vendors"],
        "amr": ["pwd", "otp", "mfa"],
        "vendor_org": "acme-automation",
    },
    "with_grant": True,
    "asset": "hist-01",
    "action": {"kind": "ssh", "port": 22, "operation_class": "read_only"},
}


def test_default_bundle_through_opa_decides_with_the_plant_data(
    make_broker: Callable[..., RunningBroker], http: httpx2.Client
) -> None:
    with start_opa_server(default_bundle_dir(), token="opa-test-token") as opa:
        broker = make_broker(
            policy={
                "engine": "opa",
                "opa_url": opa.url,
                "opa_token": "opa-test-token",
                "opa_timeout_ms": 5000,  # a loaded CI machine is slow, not wrong
                "data_refresh_s": 3600,  # only changes push: the backstop must not hide a miss
            }
        )
        svc = broker.services
        seed(svc.settings.database_url)  # written by another process's code path
        svc.plant_changed()  # from this (non-event-loop) thread
        web_login(http, broker.url, "adam", "adam-demo-pw")
        same_origin_api(http, broker.url)

        def whatif() -> dict[str, object]:
            reply = http.post(f"{broker.url}/api/policy/whatif", json=VENDOR_SSH)
            assert reply.status_code == 200, reply.text
            decision: dict[str, object] = reply.json()["decision"]
            return decision

        def reasons() -> str:
            return " ".join(whatif()["reasons"])  # type: ignore[arg-type]

        def denied_reasons() -> str:
            decision = whatif()
            return "" if decision["allow"] else " ".join(decision["reasons"])  # type: ignore[arg-type]

        allowed = wait_until(lambda: (d := whatif())["allow"] is True and d, "the seeded plant")
        assert allowed["engine"] == "opa"  # type: ignore[index]
        stored = httpx2.get(
            f"{opa.url}/v1/data/plant/lockout",
            headers={"Authorization": "Bearer opa-test-token"},
        ).json()
        assert stored == {"result": {"vendors": False, "reason": ""}}

        on = http.post(f"{broker.url}/api/lockout", json={"on": True, "reason": "drill"})
        assert on.status_code == 200, on.text
        denied = wait_until(denied_reasons, "the lockout in OPA")
        assert "emergency lockout: all vendor access is disabled (drill)" in denied
        assert "assumed" not in denied
        off = http.post(f"{broker.url}/api/lockout", json={"on": False, "reason": "drill over"})
        assert off.status_code == 200, off.text
        wait_until(lambda: whatif()["allow"] is True, "vendor access back after the lockout")
        changes = [e["details"] for e in audit_events(broker) if e["kind"].startswith("lockout.")]
        assert [(c["before"], c["after"]) for c in changes] == [
            ({"vendors": False, "reason": ""}, {"vendors": True, "reason": "drill"}),
            ({"vendors": True, "reason": "drill"}, {"vendors": False, "reason": "drill over"}),
        ]

        # Maintenance windows: audited with before/after, and in OPA's data.plant.
        def opa_windows() -> list[dict[str, object]]:
            reply = httpx2.get(
                f"{opa.url}/v1/data/plant/sites",
                headers={"Authorization": "Bearer opa-test-token"},
            )
            windows: list[dict[str, object]] = reply.json()["result"]["Riverside Plant"][
                "maintenance_windows"
            ]
            return windows

        window = {"site": "Riverside Plant", "days": ["sat"], "start": "06:00", "end": "10:00"}
        added = http.post(f"{broker.url}/api/windows", json=window)
        assert added.status_code == 201, added.text
        wait_until(
            lambda: {"days": ["sat"], "start": "06:00", "end": "10:00"} in opa_windows(),
            "the new window in OPA",
        )
        removed = http.delete(  # a same-origin script's DELETE: JSON content type for CSRF
            f"{broker.url}/api/windows/{added.json()['id']}",
            headers={"Content-Type": "application/json"},
        )
        assert removed.status_code == 200, removed.text
        wait_until(
            lambda: {"days": ["sat"], "start": "06:00", "end": "10:00"} not in opa_windows(),
            "the window gone from OPA",
        )
        [add_event] = audit_events(broker, "plant.window_added")
        [remove_event] = audit_events(broker, "plant.window_removed")
        assert add_event["details"]["before"] is None
        assert add_event["details"]["after"] == added.json()
        assert remove_event["details"] == {"before": added.json(), "after": None}

        # A change made off the event loop (as the CLI's service calls are) reaches OPA too.
        svc.access.set_lockout(True, "system", "second drill")
        wait_until(lambda: "second drill" in reasons(), "a lockout set from another thread")
        with session_scope(svc.engine) as db:  # a change only the database knows about ...
            flag = db.get(PlantFlag, LOCKOUT_FLAG)
            assert flag is not None
            flag.value = {"vendors": False, "reason": ""}
            db.add(flag)
        svc.plant_changed()  # ... announced by whoever made it
        wait_until(lambda: whatif()["allow"] is True, "the database change in OPA")
    assert audit_events(broker, "policy.data_push_failed") == []
    assert "opa-test-token" not in json.dumps(audit_events(broker))
