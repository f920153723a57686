"""Access requests end to end through the JSON API and the `conduit` CLI (real broker, real IdP)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from sqlmodel import select

from broker.dev.demo import seed
from sessions.db import session_scope
from sessions.models import User
from tests.harness.broker import RunningBroker, audit_events, same_origin_api, web_login
from tests.harness.cli import cli_env, run_conduit
from tests.harness.wait import TIMEOUT_S


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


_cli_env = cli_env  # (kept: the tests below call it by this name)


def test_request_approve_list_via_cli(plant: RunningBroker, tmp_path: Path) -> None:
    alice, olga = _cli_env(plant, tmp_path, "alice"), _cli_env(plant, tmp_path, "olga")
    made = run_conduit(
        "request",
        "hist-01",
        "--for",
        "1h",
        "--reason",
        "read alarms",
        "--ticket",
        "CHG-1",
        env=alice,
    )
    assert made.returncode == 0, made.stderr
    request_id = made.stdout.split()[1]
    assert "pending" in made.stdout

    queue = run_conduit("requests", "--state", "pending", env=olga)
    assert request_id in queue.stdout and "hist-01" in queue.stdout
    approved = run_conduit("approve", request_id[:8], env=olga)  # a prefix, as listed
    assert approved.returncode == 0 and "is approved" in approved.stdout, approved.stderr

    grants = json.loads(run_conduit("grants", "--mine", "--json", env=alice).stdout)
    # The window starts now: the broker's grant clock (every second) may already have opened it.
    assert [(g["asset"], g["state"]) for g in grants] in (
        [("hist-01", "approved")],
        [("hist-01", "active")],
    )
    again = run_conduit("approve", request_id, env=olga)
    assert again.returncode == 2 and "pending" in again.stderr


def test_refusals_are_clear(plant: RunningBroker, tmp_path: Path) -> None:
    alice = _cli_env(plant, tmp_path, "alice")
    too_long = run_conduit(
        "request", "scada-01", "--class", "program", "--for", "5h", "--reason", "x", env=alice
    )
    assert too_long.returncode == 2 and "longer than policy allows" in too_long.stderr
    level0 = run_conduit("request", "drive-press-3", "--reason", "x", env=alice)
    assert level0.returncode == 2 and "level 0" in level0.stderr
    past = run_conduit(
        "request", "hist-01", "--reason", "x", "--start", "2020-01-01T00:00:00Z", env=alice
    )
    assert past.returncode == 2 and "in the past" in past.stderr
    no_approver = run_conduit("approve", "some-id", env=alice)
    assert no_approver.returncode == 2
    assert no_approver.stderr == (
        "conduit: this command needs the approver or admin role; you have: vendor\n"
    )


def test_self_approval_refused_by_api(plant: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, plant.url, "adam", "adam-demo-pw")
    same_origin_api(http, plant.url)  # the session cookie alone no longer changes anything
    made = http.post(
        f"{plant.url}/api/requests", json={"asset": "hist-01", "duration": "1h", "reason": "patch"}
    )
    assert made.status_code == 201, made.text
    answer = http.post(f"{plant.url}/api/requests/{made.json()['id']}/approve", json={})
    assert (
        answer.status_code == 403 and "cannot approve your own request" in answer.json()["reasons"]
    )
    bad = http.post(
        f"{plant.url}/api/requests", json={"asset": "hist-01", "duration": "soon", "reason": "x"}
    )
    assert bad.status_code == 400 and "duration" in bad.json()["message"]


def test_lockout_via_cli_suspends_and_resumes(plant: RunningBroker, tmp_path: Path) -> None:
    alice, olga, adam = (_cli_env(plant, tmp_path, u) for u in ("alice", "olga", "adam"))
    request_id = run_conduit("request", "hist-01", "--reason", "diag", env=alice).stdout.split()[1]
    run_conduit("approve", request_id, env=olga)
    on = run_conduit("lockout", "on", "--reason", "incident 9", env=adam)
    assert on.returncode == 0 and "1 vendor grant(s) suspended" in on.stdout, on.stderr
    assert json.loads(run_conduit("grants", "--mine", "--json", env=alice).stdout)[0]["state"] in (
        "approved",
        "active",
    )
    blocked = run_conduit("request", "scada-01", "--reason", "diag", env=alice)
    assert blocked.returncode == 2 and "emergency lockout" in blocked.stderr
    vendor_try = run_conduit("lockout", "off", "--reason", "me", env=alice)
    assert vendor_try.returncode == 2
    assert "ON" in run_conduit("lockout", "status", env=olga).stdout
    off = run_conduit("lockout", "off", "--reason", "all clear", env=adam)
    assert "1 vendor grant(s) resumed" in off.stdout, off.stderr
    assert "off" in run_conduit("lockout", "status", env=olga).stdout
    [on_event] = audit_events(plant, "lockout.on")
    [off_event] = audit_events(plant, "lockout.off")
    assert on_event["details"]["suspended_grants"] == 1
    assert off_event["details"]["resumed_grants"] == 1
    assert len(audit_events(plant, "grant.suspended")) == 1
    assert len(audit_events(plant, "grant.resumed")) == 1
    for state in ("on", "off"):  # the help says --reason is required (no brackets)
        usage = run_conduit("lockout", state, "--help", env=adam).stdout
        assert f"usage: conduit lockout {state} [-h] --reason REASON" in usage


def test_window_defaults_to_now(plant: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, plant.url, "alice", "alice-demo-pw")
    same_origin_api(http, plant.url)
    made = http.post(
        f"{plant.url}/api/requests", json={"asset": "hist-01", "duration": "1h30m", "reason": "x"}
    ).json()
    from datetime import datetime

    start, end = (
        datetime.fromisoformat(made[k].replace("Z", "+00:00")) for k in ("starts_at", "ends_at")
    )
    assert end - start == timedelta(minutes=90)


def test_maintenance_windows_limit_a_grant(plant: RunningBroker, tmp_path: Path) -> None:
    import asyncio
    from datetime import UTC, datetime, time
    from zoneinfo import ZoneInfo

    from sessions.authorizer import build_input, grant_document, user_document
    from sessions.models import Asset, Grant

    alice, olga, adam = (_cli_env(plant, tmp_path, u) for u in ("alice", "olga", "adam"))
    added = run_conduit(
        "windows",
        "add",
        "Riverside Plant",
        "--days",
        "tue",
        "--start",
        "22:00",
        "--end",
        "02:00",
        "--description",
        "weekly",
        env=adam,
    )
    assert added.returncode == 0, added.stderr
    listed = run_conduit("windows", "list", env=alice).stdout.split()
    assert listed[-3:] == ["tue", "22:00-02:00", "weekly"]
    bad = run_conduit(
        "windows",
        "add",
        "Riverside Plant",
        "--days",
        "tue",
        "--start",
        "25:00",
        "--end",
        "02:00",
        env=adam,
    )
    assert bad.returncode == 2 and "HH:MM" in bad.stderr
    assert (
        run_conduit(
            "windows",
            "add",
            "Riverside Plant",
            "--days",
            "tue",
            "--start",
            "22:00",
            "--end",
            "02:00",
            env=alice,
        ).returncode
        == 2
    )

    # The next Tuesday (from tomorrow on) in the plant's time zone: never in the past.
    berlin = ZoneInfo("Europe/Berlin")
    tomorrow = datetime.now(berlin).date() + timedelta(days=1)
    tuesday = tomorrow + timedelta(days=(1 - tomorrow.weekday()) % 7)

    def berlin_time(days: int, hh: int, mm: int) -> datetime:
        return datetime.combine(tuesday + timedelta(days=days), time(hh, mm), berlin)

    made = run_conduit(
        "request",
        "hist-01",
        "--start",
        berlin_time(0, 21, 0).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--for",
        "8h",
        "--reason",
        "weekly check",
        "--window-only",
        env=alice,
    )
    assert made.returncode == 0, made.stderr
    assert run_conduit("approve", made.stdout.split()[1], env=olga).returncode == 0

    def decide(at: datetime) -> bool:
        with session_scope(plant.services.engine) as db:
            grant = db.exec(select(Grant)).one()
            user, asset = db.get(User, grant.user_id), db.get(Asset, grant.asset_id)
            assert user is not None and asset is not None
            doc = build_input(
                db,
                user=user_document(db, user),
                asset=asset,
                grant=grant_document(db, grant),
                action={
                    "kind": "ssh",
                    "port": 22,
                    "operation_class": "read_only",
                    "login": "maint",
                },
                now=at.astimezone(UTC),
                agent_online=True,
            )
        decision = asyncio.run(
            plant.services.authorizer.decide(doc, actor="test", purpose="connect")
        )
        return decision.allow

    assert decide(berlin_time(0, 22, 30))  # Tuesday 22:30 in Berlin: inside
    assert not decide(berlin_time(1, 4, 30))  # Wednesday 04:30: grant valid, window closed


def test_deny_cancel_revoke_via_api(plant: RunningBroker) -> None:
    with httpx2.Client(timeout=TIMEOUT_S) as alice, httpx2.Client(timeout=TIMEOUT_S) as olga:
        web_login(alice, plant.url, "alice", "alice-demo-pw")
        web_login(olga, plant.url, "olga", "olga-demo-pw")
        same_origin_api(alice, plant.url)
        same_origin_api(olga, plant.url)
        body = {"duration": "1h", "reason": "diag"}
        first = alice.post(f"{plant.url}/api/requests", json={"asset": "hist-01", **body}).json()
        assert olga.post(f"{plant.url}/api/requests/{first['id']}/deny", json={}).status_code == 400
        denied = olga.post(
            f"{plant.url}/api/requests/{first['id']}/deny", json={"reason": "not now"}
        )
        assert denied.json() == {"id": first["id"], "state": "denied"}
        second = alice.post(f"{plant.url}/api/requests", json={"asset": "hist-01", **body}).json()
        assert (
            alice.post(f"{plant.url}/api/requests/{second['id']}/cancel", json={}).json()["state"]
            == "cancelled"
        )
        assert (
            olga.post(f"{plant.url}/api/requests/{second['id']}/cancel", json={}).status_code == 404
        )
        third = alice.post(f"{plant.url}/api/requests", json={"asset": "hist-01", **body}).json()
        grant_id = olga.post(f"{plant.url}/api/requests/{third['id']}/approve", json={}).json()[
            "grant_id"
        ]
        assert (
            alice.post(
                f"{plant.url}/api/grants/{grant_id}/revoke", json={"reason": "x"}
            ).status_code
            == 403
        )
        revoked = olga.post(
            f"{plant.url}/api/grants/{grant_id}/revoke", json={"reason": "wrong line"}
        )
        assert revoked.json() == {"id": grant_id, "state": "revoked"}
