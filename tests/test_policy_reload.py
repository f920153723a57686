"""Hot reload: a broken bundle never replaces a working one; a good one goes live."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from policies.errors import BundleError
from policies.manager import PolicyManager
from tests.harness.broker import RunningBroker, audit_events, form_values, web_login
from tests.harness.wait import async_wait_until, wait_until
from tests.rego_fixtures import FAILING_TEST, GOOD_POLICY, GOOD_TEST, write_bundle

READ = {"user": {"sub": "a"}, "action": {"operation_class": "read_only"}}
LOOPING = (
    "package conduit.access\nimport rego.v1\n"
    "n := count([x | some x in numbers.range(1, 100000000); x % 7 == 0])\n"
    'decision := {"allow": n > 0, "reasons": ["slow"]}\n'
)


def _manager(root: Path, events: list[tuple[str, dict[str, Any]]], **kw: float) -> PolicyManager:
    manager = PolicyManager(root, on_event=lambda k, d: events.append((k, d)), **kw)
    manager.set_data({"plant": {"blocked": "nobody"}})
    return manager


def test_broken_bundles_are_rejected_and_the_old_one_stays(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    manager = _manager(write_bundle(tmp_path), events)
    good = manager.reload()
    before = manager.decide_sync(READ)
    assert before.allow and events[-1][0] == "policy.activated"

    for policy, test, needle in [
        ("package conduit.access\nimport rego.v1\ndecision := {\n", GOOD_TEST, "access.rego:"),
        (GOOD_POLICY, FAILING_TEST, "test_tune_denied failed"),
        (
            'package conduit.access\nimport rego.v1\ndecision := {"allow": true, "reasons": [undefined_fn(1)]}\n',
            None,
            "could not find function",
        ),
    ]:
        write_bundle(tmp_path, policy, test)
        with pytest.raises(BundleError):
            manager.reload()
        assert manager.version == good
        after = manager.decide_sync(READ)
        assert (after.allow, after.reasons, after.bundle_version) == (
            before.allow,
            before.reasons,
            good,
        )
        kind, details = events[-1]
        assert kind == "policy.rejected" and details["active_version"] == good
        assert any(needle in p for p in details["problems"]), details


def test_bundle_whose_tests_loop_is_rejected_by_deadline(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    manager = _manager(write_bundle(tmp_path), events, validate_timeout_s=3)
    good = manager.reload()
    write_bundle(
        tmp_path,
        LOOPING,
        "package conduit.access_test\nimport rego.v1\ntest_x if { data.conduit.access.decision.allow }\n",
    )
    with pytest.raises(BundleError, match="did not finish"):  # the deadline ended it
        manager.reload()
    assert manager.version == good and manager.decide_sync(READ).allow


def test_no_bundle_means_deny(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "missing", [])
    with pytest.raises(BundleError):
        manager.reload()
    d = manager.decide_sync(READ)
    assert not d.allow and d.reasons == ("no valid policy bundle is loaded",)


async def test_watch_activates_a_good_bundle(tmp_path: Path) -> None:
    """Picked up by the watcher (how soon after the change: bench/latency_bounds.py)."""
    events: list[tuple[str, dict[str, Any]]] = []
    manager = _manager(write_bundle(tmp_path), events)
    first = manager.reload()
    manager.start_watching(0.2)
    try:
        (tmp_path / "conduit" / "access" / "access.rego").write_text(
            GOOD_POLICY.replace("may read", "may now read")
        )
        await async_wait_until(lambda: manager.version != first, "the new bundle to go live")
        assert manager.decide_sync(READ).reasons == ("a may now read",)
    finally:
        await manager.aclose()


def test_broker_shows_version_and_rejection(
    make_broker: Callable[..., RunningBroker], http: httpx2.Client, tmp_path: Path
) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    broker = make_broker(policy={"bundle_dir": str(bundle), "watch_interval_s": 0.2})
    web_login(http, broker.url, "adam", "adam-demo-pw")
    status = http.get(f"{broker.url}/api/policy/status").json()
    good = status["version"]
    assert status["engine"] == "embedded" and good and status["last_error"] is None
    # The compiled VM is opt-in ([policy] evaluator = "rvm"); by default the interpreter decides.
    assert status["evaluator"]["evaluator"] == "interpreter"
    assert status["evaluator"]["state"] == "disabled"
    page = http.get(f"{broker.url}/admin/policy")
    assert good in page.text

    (bundle / "conduit" / "access" / "access.rego").write_text(
        "package conduit.access\ndecision := {\n"
    )
    wait_until(
        lambda: http.get(f"{broker.url}/api/policy/status").json()["last_error"] is not None,
        "the broken bundle to be rejected",
    )
    status = http.get(f"{broker.url}/api/policy/status").json()
    assert status["version"] == good and status["problems"]
    page = http.get(f"{broker.url}/admin/policy")
    assert 'id="policy-error"' in page.text
    rejected = audit_events(broker, "policy.rejected")
    assert rejected and rejected[-1]["details"]["active_version"] == good

    write_bundle(tmp_path / "bundle")  # fixed again; reload on demand through the UI
    answer = http.post(
        f"{broker.url}/admin/policy/reload", data={"csrf": form_values(page.text)["csrf"]}
    )
    assert answer.status_code == 303
    assert http.get(f"{broker.url}/api/policy/status").json()["last_error"] is None


def test_broker_evaluator_setting_and_status(
    make_broker: Callable[..., RunningBroker], http: httpx2.Client
) -> None:
    """``[policy] evaluator = "rvm"``: the default bundle runs on the verified VM, shown in
    the status API and on the policy page (the default setting: see the test above)."""
    broker = make_broker(policy={"evaluator": "rvm"})
    web_login(http, broker.url, "adam", "adam-demo-pw")
    status = wait_until(
        lambda: (
            (s := http.get(f"{broker.url}/api/policy/status").json())["evaluator"]["state"]
            != "checking"
            and s
        ),
        "the VM check to finish",
        timeout=60,
    )
    assert status["evaluator"]["evaluator"] == "rvm", status
    assert status["evaluator"]["state"] == "verified"
    page = http.get(f"{broker.url}/admin/policy")
    assert 'id="policy-evaluator"' in page.text and "rvm (" in page.text
