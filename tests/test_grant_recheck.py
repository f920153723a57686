"""Eligibility is re-checked mid-window: a plant change that takes away a grant's basis ends
the vendor's live SSH session (stock ssh → front door → agent → real sshd) and revokes the
grant with the policy's reason; a change that does not touch the grant leaves it running; an
engine that fails during the re-check revokes nothing (docs/policy.md "Re-checking grants")."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from broker.runtime.settings import default_bundle_dir
from sessions.authorizer import iso
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.components import needs
from tests.harness.opa_server import start_opa_server
from tests.harness.ports import free_port
from tests.harness.ssh_session import SshRig
from tests.harness.wait import TIMEOUT_S, wait_until
from tests.test_ssh_sessions import _asset_connections, _start

pytestmark = needs("sshd")

ORG = "acme-automation"  # alice's organisation; its seeded contract covers the whole site
CONTRACT = "SVC-2026-001"
LONG = "echo ready; sleep 600"  # outlives any re-check the test waits for


def _plant(rig: SshRig, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """Adam (admin) calls the plant API with his CLI token, as ``conduit`` does."""
    answer = httpx2.request(
        method,
        f"{rig.broker.url}/api/plant/{path}",
        json=body,
        headers={"Authorization": f"Bearer {rig.sign_in('adam')}"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def _end_contract(rig: SshRig) -> None:
    """Adam ends alice's contract now (moves its ``valid_until`` to the present)."""
    path = f"vendor-orgs/{ORG}/contracts/{CONTRACT}"
    contract = _plant(rig, "GET", path)
    now = iso(rig.broker.services.clock.now())
    _plant(rig, "PUT", path, {**contract, "valid_until": now})


def _grant(rig: SshRig, grant_id: str) -> dict[str, Any]:
    """The grant as alice sees it through ``GET /api/grants``."""
    answer = httpx2.get(
        f"{rig.broker.url}/api/grants",
        headers={"Authorization": f"Bearer {rig.sign_in('alice')}"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rows = body if isinstance(body, list) else body.get("grants", body.get("items", []))
    [grant] = [g for g in rows if g["id"] == grant_id]
    found: dict[str, Any] = grant
    return found


def _rechecks(rig: SshRig, outcome: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in audit_events(rig.broker, "policy.decision")
        if e["details"]["purpose"] == "recheck:plant change"
        and (outcome is None or e["outcome"] == outcome)
    ]


def _vendor_sees(proc: subprocess.Popen[str]) -> list[str]:
    """The ``conduit:`` lines alice's ssh printed before it ended."""
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    return [line for line in err.splitlines() if line.startswith("conduit:")]


def test_ending_the_contract_ends_the_live_session_and_revokes_the_grant(rig: SshRig) -> None:
    grant_id = rig.grant()
    proc = _start(rig, LONG)
    assert _asset_connections(rig) == 1

    _end_contract(rig)

    [line] = _vendor_sees(proc)
    assert line.startswith("conduit: session ended: grant revoked: eligibility lost: ")
    assert f"contract {CONTRACT} of vendor org {ORG} for lab-ssh is not valid at" in line
    wait_until(lambda: _asset_connections(rig) == 0, "the asset-side SSH connection to close")
    grant = _grant(rig, grant_id)
    assert grant["state"] == "revoked"
    assert grant["revoke_reason"] == line.removeprefix("conduit: session ended: grant revoked: ")
    [revoked] = [e for e in audit_events(rig.broker, "grant.revoked") if e["subject"] == grant_id]
    assert revoked["actor"] == "system"
    assert revoked["details"]["trigger"] == "plant change"
    assert revoked["details"]["asset"] == "lab-ssh"
    [deny] = _rechecks(rig, "deny")  # the decision that said no
    assert deny["details"]["input_hash"] == revoked["details"]["input_hash"]
    assert deny["details"]["reasons"] == revoked["details"]["reasons"]
    ended = [e for e in audit_events(rig.broker, "session.ended")]
    assert ended and "eligibility lost" in ended[-1]["details"]["reason"]
    assert ended[-1]["details"]["reason_code"] == "eligibility_lost"
    assert ended[-1]["outcome"] == "deny"
    # The contract no longer covers lab-ssh for new connections either.
    again = rig.ssh("true")
    assert again.returncode != 0


def test_archiving_the_asset_ends_the_live_session(rig: SshRig) -> None:
    grant_id = rig.grant()
    proc = _start(rig, LONG)
    _plant(rig, "POST", "assets/lab-ssh/archive")
    [line] = _vendor_sees(proc)
    assert (
        line
        == "conduit: session ended: grant revoked: eligibility lost: asset lab-ssh was archived"
    )
    wait_until(lambda: _asset_connections(rig) == 0, "the asset-side SSH connection to close")
    assert _grant(rig, grant_id)["revoke_reason"] == "eligibility lost: asset lab-ssh was archived"


def test_a_login_no_longer_declared_ends_the_live_session(rig: SshRig) -> None:
    """The admin changes the SSH endpoint's logins: the grant's login is no longer one of them."""
    grant_id = rig.grant()
    proc = _start(rig, LONG)
    rig.declare("lab-ssh", {"logins": ["someone-else"]})
    [line] = _vendor_sees(proc)
    assert line.startswith("conduit: session ended: grant revoked: eligibility lost: ")
    assert f"login {rig.sshd.user} is not declared for read_only on lab-ssh" in line
    assert _grant(rig, grant_id)["state"] == "revoked"


def test_a_change_to_another_contract_leaves_the_session_running(rig: SshRig) -> None:
    grant_id = rig.grant()
    proc = _start(rig, LONG)
    contract = {
        "reference": "HIST-1",
        "asset": "hist-01",
        "valid_from": "-1d",
        "valid_until": "+30d",
    }
    _plant(rig, "POST", f"vendor-orgs/{ORG}/contracts", contract)
    wait_until(lambda: _rechecks(rig, "allow"), "the re-check after the new contract")
    _plant(rig, "PUT", f"vendor-orgs/{ORG}/contracts/HIST-1", {**contract, "valid_until": "+1d"})
    wait_until(lambda: len(_rechecks(rig, "allow")) == 2, "the re-check after the change")

    assert proc.poll() is None
    assert _asset_connections(rig) == 1
    assert _grant(rig, grant_id)["state"] == "active"
    assert not [e for e in audit_events(rig.broker, "grant.revoked") if e["subject"] == grant_id]
    assert rig.ssh("echo still-allowed").stdout.strip() == "still-allowed"
    proc.kill()
    proc.communicate()


def test_an_engine_failure_during_the_recheck_revokes_nothing(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    """OPA is down when the contract ends: the plant data cannot be pushed and every re-check
    decision fails, so nothing is revoked (``grant.recheck_failed``); once OPA is back, the
    next push re-checks and ends the session."""
    port, token = free_port(), "opa-test-token"
    opa = start_opa_server(default_bundle_dir(), token=token, port=port)
    try:
        broker = make_broker(
            policy={
                "engine": "opa",
                "opa_url": opa.url,
                "opa_token": token,
                "opa_timeout_ms": 5000,  # a loaded machine is slow, not wrong
                "opa_retries": 0,
                "data_refresh_s": 3600,  # only changes push, so the test says when
            }
        )
        rig = SshRig.build(broker, tmp_path)
        try:
            rig.vendor("alice")
            grant_id = rig.grant()
            proc = _start(rig, LONG)
            opa.kill()

            _end_contract(rig)

            failed = wait_until(
                lambda: audit_events(broker, "grant.recheck_failed"), "the failed re-check"
            )
            # One or more (the runner retries every few seconds), all for this grant.
            assert {e["subject"] for e in failed} == {grant_id}
            assert failed[0]["outcome"] == "error"
            assert "unreachable" in failed[0]["details"]["problem"]
            assert proc.poll() is None
            assert _asset_connections(rig) == 1
            assert _grant(rig, grant_id)["state"] == "active"
            assert not audit_events(broker, "grant.revoked")

            opa.stop()
            opa = start_opa_server(default_bundle_dir(), token=token, port=port)
            assert broker.refresh_policy_data() is True  # back: pushed, so re-checked
            [line] = _vendor_sees(proc)
            assert f"contract {CONTRACT} of vendor org {ORG} for lab-ssh" in line
            assert _grant(rig, grant_id)["state"] == "revoked"
        finally:
            rig.close()
    finally:
        opa.stop()


RETIRE = """
retired(asset) if asset.name == "lab-ssh"

deny contains "lab-ssh is retired by the plant's policy" if retired(input.asset)
"""


def test_a_bundle_that_denies_ends_the_session_once_it_is_active(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    """The policy admin activates a bundle under which the grant is no longer eligible: the
    re-check on the reload ends the session, naming the new bundle's reason."""
    bundle = shutil.copytree(default_bundle_dir(), tmp_path / "bundle")
    broker = make_broker(policy={"bundle_dir": str(bundle), "watch_interval_s": 0.2})
    rig = SshRig.build(broker, tmp_path / "rig")
    try:
        rig.vendor("alice")
        grant_id = rig.grant()
        proc = _start(rig, LONG)
        before = broker.services.policy_version()
        access = bundle / "conduit" / "access" / "access.rego"
        text = access.read_text()
        assert text.count("\tinput.asset.purdue_level != 0\n") == 1
        changed = text.replace(
            "\tinput.asset.purdue_level != 0\n",
            "\tinput.asset.purdue_level != 0\n\tnot retired(input.asset)\n",
        )
        access.write_text(changed + RETIRE)

        [line] = _vendor_sees(proc)
        assert line == (
            "conduit: session ended: grant revoked: eligibility lost: "
            "lab-ssh is retired by the plant's policy"
        )
        after = broker.services.policy_version()
        assert after != before
        [revoked] = [e for e in audit_events(broker, "grant.revoked") if e["subject"] == grant_id]
        assert revoked["details"]["trigger"] == f"policy bundle {after}"
        assert revoked["details"]["bundle_version"] == after
        assert _grant(rig, grant_id)["state"] == "revoked"
    finally:
        rig.close()
