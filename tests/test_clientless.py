"""Clientless sign-in rules without the network: the switch, settings, codes (injected clock).

The end-to-end checks (stock ssh, the page, a browser) are in tests/test_ssh_clientless.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from broker.dev.demo import seed_plant
from broker.runtime.errors import SettingsError
from broker.runtime.settings import SshSettings, load_settings
from broker.ssh.clientless import (
    WRONG_CODE_LIMIT,
    ClientlessApprovals,
    ClientlessRefused,
    CodeRejected,
    PendingState,
    TooManyWrongCodes,
    normalize,
    source_key,
)
from sessions.audit import AuditLog
from sessions.clientless import ClientlessSwitch, clientless_switch, decide
from sessions.db import create_db_engine, migrate, session_scope
from sessions.models import Asset
from sessions.testing import ManualClock

ISSUER = {"issuer": "http://127.0.0.1:9000"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CONDUIT_"):
            monkeypatch.delenv(key)


# ---- the per-asset switch ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "level", "allowed"),
    [
        ({}, 5, True),
        ({}, 3, True),  # default on at level 3 and above
        ({}, 2, False),
        ({}, 0, False),
        ({"clientless": "on"}, 1, True),  # the label overrides the level
        ({"clientless": " On "}, 0, True),
        ({"clientless": "off"}, 4, False),
        ({"clientless": "OFF"}, 3, False),
        ({"clientless": "yes"}, 4, False),  # neither on nor off: fail closed
        ({"clientless": ""}, 5, False),
        ({"other": "on"}, 2, False),
    ],
)
def test_switch_label_overrides_purdue_default(
    labels: dict[str, str], level: int, allowed: bool
) -> None:
    assert decide(labels, level, min_purdue_level=3).allowed is allowed


def test_switch_threshold_is_a_setting() -> None:
    assert decide({}, 2, min_purdue_level=2).allowed
    assert not decide({}, 4, min_purdue_level=5).allowed


def test_switch_reads_the_plant_model(engine: sa.Engine) -> None:
    seed_plant(engine, ManualClock())
    with session_scope(engine, write=True) as db:
        asset = db.exec(select(Asset).where(Asset.name == "scada-01")).one()
        asset.labels = {**asset.labels, "clientless": "on"}
        db.add(asset)
    level3 = clientless_switch(engine, "hist-01", min_purdue_level=3)
    assert level3 == ClientlessSwitch(True, "Purdue level 3 (default on at 3 and above)")
    assert clientless_switch(engine, "scada-01", min_purdue_level=3).allowed
    assert not clientless_switch(engine, "hmi-press-3", min_purdue_level=3).allowed
    assert clientless_switch(engine, "nope", min_purdue_level=3) == ClientlessSwitch(
        False, "unknown asset"
    )


# ---- settings ---------------------------------------------------------------------------------


def test_clientless_settings_defaults() -> None:
    ssh = load_settings(None, oidc=ISSUER).ssh
    assert ssh.clientless_enabled is True
    assert ssh.clientless_min_purdue_level == 3
    assert ssh.clientless_code_ttl_s == 120
    assert (ssh.clientless_max_pending_per_ip, ssh.clientless_max_pending) == (3, 100)


@pytest.mark.parametrize(
    ("ssh", "message"),
    [
        ({"clientless_code_ttl_s": 300}, "ssh.clientless_code_ttl_s"),  # more than 2 minutes
        ({"clientless_min_purdue_level": 6}, "ssh.clientless_min_purdue_level"),
        ({"clientless_max_pending": 0}, "ssh.clientless_max_pending"),
        (
            {"clientless_max_pending_per_ip": 5, "clientless_max_pending": 4},
            "must not exceed ssh.clientless_max_pending",
        ),
        ({"clientless_enabled": "perhaps"}, "ssh.clientless_enabled"),
    ],
)
def test_clientless_settings_are_validated(ssh: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, oidc=ISSUER, ssh=ssh)


# ---- codes --------------------------------------------------------------------------------------


def test_typed_codes_are_normalized() -> None:
    assert normalize(" abcd-efgh ") == "ABCD-EFGH"
    assert normalize("ABCD EFGH") == "ABCD-EFGH"
    assert normalize("abcdefgh") == "ABCD-EFGH"
    assert normalize("ABCD-EFG0") == ""  # 0 is not in the alphabet
    assert normalize("ABCD-EFGHJ") == ""
    assert normalize("x" * 10_000) == ""


def test_caps_count_ipv6_per_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key(None) == source_key("garbage") == "unknown"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def approvals(tmp_path: Path, clock: ManualClock) -> ClientlessApprovals:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    settings = SshSettings(clientless_max_pending_per_ip=2, clientless_max_pending=3)
    return ClientlessApprovals(
        settings, clock, AuditLog(engine, clock), lambda asset: ClientlessSwitch(True, "test")
    )


async def test_a_code_typed_by_a_second_person_is_cancelled(
    approvals: ClientlessApprovals,
) -> None:
    pending = await approvals.open(login="maint", asset="hist-01", peer="192.0.2.1")
    assert approvals.lookup(pending.code.lower(), user_id="alice") is pending
    assert approvals.lookup(pending.code, user_id="alice") is pending  # alice reloads: fine
    with pytest.raises(CodeRejected, match="already typed by someone else"):
        approvals.lookup(pending.code, user_id="mallory")
    assert pending.state == PendingState.REFUSED
    with pytest.raises(ClientlessRefused, match="typed by more than one person"):
        await approvals.wait(pending)
    with pytest.raises(CodeRejected):  # and alice cannot approve it any more
        await approvals.decide(pending.ref, user_id="alice", approve=True)


async def test_only_the_user_who_typed_the_code_can_decide(
    approvals: ClientlessApprovals,
) -> None:
    pending = await approvals.open(login="maint", asset="hist-01", peer="192.0.2.1")
    with pytest.raises(CodeRejected):  # nobody typed it: the reference alone is worth nothing
        await approvals.decide(pending.ref, user_id="alice", approve=True)
    approvals.lookup(pending.code, user_id="alice")
    with pytest.raises(CodeRejected):
        await approvals.decide(pending.ref, user_id="bob", approve=True)
    await approvals.decide(pending.ref, user_id="alice", approve=True)
    assert await approvals.wait(pending) == "alice"


async def test_expiry_follows_the_injected_clock(
    approvals: ClientlessApprovals, clock: ManualClock
) -> None:
    pending = await approvals.open(login="maint", asset="hist-01", peer="192.0.2.1")
    clock.advance(119.9)
    assert approvals.pending_count() == 1
    clock.advance(0.1)
    assert approvals.pending_count() == 0 and pending.state == PendingState.EXPIRED
    with pytest.raises(CodeRejected):
        approvals.lookup(pending.code, user_id="alice")


async def test_a_code_whose_connection_is_gone_is_cancelled(
    approvals: ClientlessApprovals,
) -> None:
    connected = True
    pending = await approvals.open(
        login="maint", asset="hist-01", peer="192.0.2.1", alive=lambda: connected
    )
    connected = False
    assert approvals.pending_count() == 0 and pending.state == PendingState.CANCELLED
    with pytest.raises(CodeRejected):
        approvals.lookup(pending.code, user_id="alice")


async def test_caps_per_address_and_overall(approvals: ClientlessApprovals) -> None:
    await approvals.open(login="maint", asset="a", peer="2001:db8::1")
    await approvals.open(login="maint", asset="a", peer="2001:db8::2")
    with pytest.raises(ClientlessRefused, match="from your address"):
        await approvals.open(login="maint", asset="a", peer="2001:db8::3")  # the same /64
    await approvals.open(login="maint", asset="a", peer="192.0.2.1")
    with pytest.raises(ClientlessRefused, match="on this broker"):
        await approvals.open(login="maint", asset="a", peer="192.0.2.2")


async def test_wrong_codes_lock_the_user_out_for_the_window(
    approvals: ClientlessApprovals, clock: ManualClock
) -> None:
    for _ in range(WRONG_CODE_LIMIT):
        with pytest.raises(CodeRejected):
            approvals.lookup("ZZZZ-ZZZZ", user_id="alice")
    pending = await approvals.open(login="maint", asset="hist-01", peer="192.0.2.1")
    with pytest.raises(TooManyWrongCodes) as first:
        approvals.lookup(pending.code, user_id="alice")
    assert first.value.first and first.value.retry_after_s == 600
    clock.advance(60)
    with pytest.raises(TooManyWrongCodes) as second:
        approvals.lookup(pending.code, user_id="alice")
    assert not second.value.first and second.value.retry_after_s == 540
    assert approvals.lookup(pending.code, user_id="bob") is pending  # others are not locked out
