"""What approvers see before approving (issue 15, Web UI): the obligations of the policy's
decision at filing, on the queue (HTML, JSON, CLI, Chromium) and the request page, and the MFA
warning derived from that decision's ``require_mfa`` rather than from a copy of the rule.

Real broker, real dev IdP, the demo plant and the bundled policy (or a copy of it changed the
way a policy admin would); requests are filed and approved through the HTTP API and the CLI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, expect

from broker.dev.demo import seed
from tests.harness.broker import RunningBroker, same_origin_api, web_login
from tests.harness.browser import screenshot
from tests.harness.cli import cli_env, run_conduit
from tests.harness.wait import TIMEOUT_S

BUNDLE = Path(__file__).resolve().parents[1] / "policies" / "bundle"
# The demo plant's plc-press-3 (Purdue level 1) declares these tune write ranges.
TUNE_WRITES = "writes to coils 0\u201315; holding registers 0\u201399"  # en dashes
TUNE_RANGES = [
    {"table": "coils", "first": 0, "last": 15, "unit_ids": None},
    {"table": "holding_registers", "first": 0, "last": 99, "unit_ids": None},
]
STRICT = "strict (the session ends if recording fails)"


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


@contextmanager
def signed_in(broker: RunningBroker, name: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
        answer = web_login(client, broker.url, name, f"{name}-demo-pw")
        assert answer.status_code == 303, answer.text
        yield client


def file_tune_request(broker: RunningBroker, vendor: str = "alice") -> str:
    """``vendor`` (signed in with a password only: amr pwd) asks to tune plc-press-3."""
    with signed_in(broker, vendor) as web:
        made = same_origin_api(web, broker.url).post(
            f"{broker.url}/api/requests",
            json={
                "asset": "plc-press-3",
                "operation_class": "tune",
                "duration": "1h",
                "reason": "retune the press PID",
            },
        )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def queue_row(html: str, request_id: str) -> str:
    assert f'id="pending-{request_id}"' in html, request_id
    return html.split(f'id="pending-{request_id}"')[1].split("</tr>")[0]


def pending_json(broker: RunningBroker, approver: str = "olga") -> dict[str, dict[str, Any]]:
    with signed_in(broker, approver) as web:
        rows = web.get(f"{broker.url}/api/requests", params={"state": "pending"}).json()
    return {r["id"]: r for r in rows}


def active_bundle_version(broker: RunningBroker) -> str:
    with signed_in(broker, "adam") as web:
        return str(web.get(f"{broker.url}/api/policy/status").json()["version"])


def test_queue_shows_the_filing_obligations_and_the_decisions_mfa_warning(
    plant: RunningBroker, tmp_path: Path
) -> None:
    """A vendor without MFA files a Modbus tune request on a level-1 PLC: the approver sees
    the write ranges, record mode and MFA need the policy decided, the bundle version, and
    the MFA warning because that decision says ``require_mfa``."""
    rid = file_tune_request(plant)
    version = active_bundle_version(plant)
    with signed_in(plant, "olga") as web:
        row = queue_row(web.get(f"{plant.url}/approvals").text, rid)
        detail = web.get(f"{plant.url}/requests/{rid}").text
    assert "Obligations at filing" in detail
    for html in (row, detail):
        assert TUNE_WRITES in html and STRICT in html
        assert "<dt>MFA</dt><dd>required at connect</dd>" in html
        assert f"(policy bundle <code>{version}</code>)" in html
        assert "Approving asks policy again" in html
        assert "requires MFA at connect (require_mfa)" in html and "amr: pwd" in html
    assert f'id="mfa-warning-{rid}"' in row and 'id="mfa-warning"' in detail

    mine = pending_json(plant)[rid]
    assert mine["obligations"]["modbus"]["write_ranges"] == TUNE_RANGES
    assert mine["obligations"]["record"] == "strict"
    assert mine["obligations"]["require_mfa"] is True
    assert mine["policy_version"] == version
    assert "requires MFA at connect" in mine["mfa_warning"]
    [modbus] = [t for t in mine["obligations_text"] if t.startswith("at filing: Modbus: ")]
    assert TUNE_WRITES in modbus

    olga = cli_env(plant, tmp_path, "olga")
    listed = run_conduit("requests", "--state", "pending", env=olga)
    assert listed.returncode == 0, listed.stderr
    assert f"    at filing: Recording: {STRICT}" in listed.stdout
    assert TUNE_WRITES in listed.stdout and "warning: The requester's last sign-in" in listed.stdout

    # Approval asks policy again; the grant carries that decision's obligations.
    approved = run_conduit("approve", rid, env=olga)
    assert approved.returncode == 0 and "is approved" in approved.stdout, approved.stderr
    with signed_in(plant, "olga") as web:
        detail = web.get(f"{plant.url}/requests/{rid}").text
    assert 'id="request-obligations"' in detail and 'id="filing-obligations"' in detail
    assert 'id="mfa-warning"' not in detail  # no longer pending
    with signed_in(plant, "alice") as web:
        [grant] = web.get(f"{plant.url}/api/grants", params={"mine": "1"}).json()
    assert grant["obligations"]["modbus"]["write_ranges"] == TUNE_RANGES


def _bundle_without_mfa_at_levels_1_2(target: Path) -> Path:
    """A copy of the bundled policy changed as a policy admin would: MFA only for program and
    firmware work, at any Purdue level (the access tests that pin the old rule are dropped)."""
    shutil.copytree(BUNDLE, target)
    access = target / "conduit" / "access"
    obligations = access / "obligations.rego"
    old_rule = "require_mfa(level, by_class) := true if level in [1, 2]\nelse := by_class\n"
    text = obligations.read_text(encoding="utf-8")
    assert old_rule in text
    obligations.write_text(text.replace(old_rule, "require_mfa(_, by_class) := by_class\n"))
    # One edit: the connect-time refusal (access.rego mfa_needed) follows require_mfa.
    (access / "access_test.rego").unlink()
    return target


def test_a_bundle_that_needs_no_mfa_at_level_1_shows_no_warning(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    """The warning follows the policy, not a rule in the broker: with the bundle changed to
    ask MFA only for program/firmware work, the same level-1 tune request is not flagged."""
    bundle = _bundle_without_mfa_at_levels_1_2(tmp_path / "bundle")
    broker = make_broker(policy={"bundle_dir": str(bundle)})
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    rid = file_tune_request(broker)
    with signed_in(broker, "olga") as web:
        row = queue_row(web.get(f"{broker.url}/approvals").text, rid)
        detail = web.get(f"{broker.url}/requests/{rid}").text
    for html in (row, detail):
        assert "mfa-warning" not in html
        assert "<dt>MFA</dt><dd>not required</dd>" in html and TUNE_WRITES in html
    mine = pending_json(broker)[rid]
    assert mine["obligations"]["require_mfa"] is False and mine["mfa_warning"] is None


def test_requests_filed_before_obligations_were_stored_say_so(
    plant: RunningBroker, tmp_path: Path
) -> None:
    """A request from before migration 0010 (its obligations NULL, as the migration leaves
    them): "not recorded" everywhere, and the MFA warning says the need is unknown instead of
    guessing."""
    rid = file_tune_request(plant)
    with plant.services.engine.begin() as conn:  # what migration 0010 leaves on older rows
        conn.execute(
            sa.text(
                "UPDATE access_requests SET obligations = NULL, policy_version = NULL "
                "WHERE id = :id"
            ),
            {"id": rid},
        )
    with signed_in(plant, "olga") as web:
        row = queue_row(web.get(f"{plant.url}/approvals").text, rid)
        detail = web.get(f"{plant.url}/requests/{rid}").text
    for html in (row, detail):
        assert "not recorded (filed before Conduit stored the policy" in html
        assert TUNE_WRITES not in html
        assert "whether connecting needs MFA is not known here" in html
    mine = pending_json(plant)[rid]
    assert mine["obligations"] is None and mine["policy_version"] is None
    assert mine["obligations_text"] == [
        "Obligations at filing: not recorded (filed before Conduit stored them)"
    ]
    listed = run_conduit("requests", "--json", env=cli_env(plant, tmp_path, "olga"))
    assert [r["obligations"] for r in json.loads(listed.stdout) if r["id"] == rid] == [None]


@pytest.mark.browser
def test_queue_page_in_chromium_shows_the_write_ranges(
    plant: RunningBroker, chromium: Browser, tmp_path: Path
) -> None:
    """The approver's queue in a real browser: the filing obligations of a tune request,
    record mode and write ranges, next to the MFA warning."""
    rid = file_tune_request(plant)
    page = chromium.new_context().new_page()
    page.goto(plant.url + "/")
    page.click("#signin-main")
    page.fill("#username", "olga")
    page.fill("#password", "olga-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(plant.url + "/")
    page.goto(plant.url + "/approvals")
    shown = page.locator(f"#filing-obligations-{rid}")
    expect(shown).to_contain_text(TUNE_WRITES)
    expect(shown).to_contain_text(STRICT)
    expect(page.locator(f"#mfa-warning-{rid}")).to_contain_text("requires MFA at connect")
    screenshot(page, tmp_path, "approvals-filing-obligations")
    page.click(f"#details-{rid}")
    expect(page.locator("#filing-obligations")).to_contain_text(TUNE_WRITES)
    screenshot(page, tmp_path, "request-filing-obligations")
    page.context.close()
