"""Clientless SSH sign-in against the running broker: stock ssh, a signed-in user, real assets.

The attack this guards against: an anonymous ``ssh`` client used to get
``open http://broker/ssh/approve?code=XXXX-XXXX``; anyone signed in who clicked Approve bound
the attacker's connection to their own identity and grants. Now the page address carries no
code, the code must be typed, a link with a code is refused (and cancels it), and codes are
short-lived, single use, capped and switchable.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlmodel import select

from broker.dev.demo import seed
from sessions.db import session_scope
from sessions.models import Asset, User
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.clientless import Approver, ClientlessSsh
from tests.harness.components import needs
from tests.harness.ssh_session import ASSET, SshRig
from tests.harness.wait import wait_until

pytestmark = needs("sshd")


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Callable[..., ClientlessSsh]]:
    started: list[ClientlessSsh] = []

    def start(
        broker: RunningBroker, target: str, command: str | None = None, *, source: str = "127.0.0.1"
    ) -> ClientlessSsh:
        ssh = ClientlessSsh(broker, tmp_path, target, command, source=source)
        started.append(ssh)
        return ssh

    yield start
    for ssh in started:
        ssh.close()


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path)
    yield rig
    rig.close()


def _signed_in_page(browser: Browser, broker: RunningBroker, name: str) -> Page:
    page = browser.new_context().new_page()
    page.goto(f"{broker.url}/signin")
    page.click("#signin-main")
    page.fill("#username", name)
    page.fill("#password", f"{name}-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(f"{broker.url}/**")
    return page


def _label(broker: RunningBroker, asset: str, **labels: str) -> None:
    with session_scope(broker.services.engine, write=True) as db:
        row = db.exec(select(Asset).where(Asset.name == asset)).one()
        row.labels = {**row.labels, **labels}
        db.add(row)


# ---- the attack, reproduced: now refused -------------------------------------------------


@needs("sshd", "chromium")
def test_one_click_link_sent_by_an_attacker_is_refused(
    rig: SshRig, chromium: Browser, clients: Callable[..., ClientlessSsh]
) -> None:
    rig.grant()  # alice may reach lab-ssh: what the attacker wants to ride on
    alice = _signed_in_page(chromium, rig.broker, "alice")

    attacker = clients(rig.broker, f"{rig.sshd.user}@{ASSET}", "echo attacker-got-in")
    url, code = attacker.prompt()
    assert url == f"{rig.broker.url}/ssh/approve"  # the address carries no code
    assert code not in url and "code=" not in url

    # The attacker builds the one-click link of old and sends it to alice, who opens it.
    alice.goto(f"{url}?code={code}")
    expect(alice.locator("#link-refused")).to_contain_text("This link carried a sign-in code")
    expect(alice.locator("#approve")).to_have_count(0)  # nothing to click

    attacker.press_enter()
    out = attacker.refused()
    assert b"conduit: sign-in refused: the code was opened from a link, not typed" in out
    assert b"attacker-got-in" not in out

    # The code is dead: even typed by hand now, it is refused.
    alice.fill("#code", code)
    alice.click("#continue")
    expect(alice.locator("#code-error")).to_contain_text("unknown, used or expired")
    expect(alice.locator("#approve")).to_have_count(0)

    [refused] = audit_events(rig.broker, "ssh.clientless.link_refused")
    assert refused["actor"] == rig.users["alice"] and refused["outcome"] == "rejected"
    assert refused["subject"] == f"asset:{ASSET}"
    assert refused["details"]["live_code"] is True
    assert refused["details"]["client"] == "127.0.0.1"
    assert code not in str(audit_events(rig.broker))  # codes are secrets: never audited
    assert not audit_events(rig.broker, "ssh.clientless.approved")
    assert not audit_events(rig.broker, "session.started")
    assert rig.broker.services.live.list() == []


@needs("sshd", "chromium")
def test_a_forged_cross_site_form_cannot_approve(
    broker: RunningBroker, chromium: Browser, clients: Callable[..., ClientlessSsh]
) -> None:
    seed(broker.services.settings.database_url)
    attacker = clients(broker, "maint@hist-01")
    _, code = attacker.prompt()
    approve_url = f"{broker.url}/ssh/approve"
    html = (
        f'<form id="f" method="post" action="{approve_url}">'
        f'<input name="code" value="{code}"><input name="decision" value="approve"></form>'
        "<script>document.getElementById('f').submit()</script>"
    ).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: object) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        alice = _signed_in_page(chromium, broker, "alice")
        alice.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        alice.wait_for_url(approve_url)
        expect(alice.locator("body")).to_contain_text("not sent by this site")
    finally:
        evil.shutdown()
        evil.server_close()
    assert not audit_events(broker, "ssh.clientless.approved")
    assert broker.services.clientless.pending_count() == 1  # still waiting, never approved


# ---- expiry, single use -------------------------------------------------------------------


def test_code_expires_after_two_minutes(
    make_broker: Callable[..., RunningBroker],
    tmp_path: Path,
    clients: Callable[..., ClientlessSsh],
) -> None:
    clock = ManualClock(datetime.now(UTC))
    broker = make_broker(clock=clock)
    rig = SshRig.build(broker, tmp_path)
    approver = Approver(broker, "alice")
    try:
        rig.grant()
        target = f"{rig.sshd.user}@{ASSET}"
        on_time = clients(broker, target, "echo on-time")
        late = clients(broker, target, "echo too-late")
        _, on_time_code = on_time.prompt()
        _, late_code = late.prompt()
        late.press_enter()  # waiting for an approval that never comes in time

        clock.advance(119)  # a second before the end: still good
        assert approver.approve(on_time_code).status_code == 200
        on_time.press_enter()
        assert b"on-time" in on_time.read_until(b"on-time")

        clock.advance(1)  # 120 s: expired
        out = late.refused()
        assert b"conduit: the sign-in code expired after 120 seconds" in out
        assert b"too-late" not in out
        typed = approver.type_code(late_code)
        assert typed.status_code == 404 and 'id="code-error"' in typed.text
    finally:
        approver.close()
        rig.close()
    [expired] = audit_events(broker, "ssh.clientless.expired")
    assert expired["details"]["client"] == "127.0.0.1" and expired["outcome"] == "rejected"
    rejected = audit_events(broker, "ssh.clientless.code_rejected")
    assert rejected[-1]["actor"] == rig.users["alice"]


def test_code_works_once(rig: SshRig, clients: Callable[..., ClientlessSsh]) -> None:
    rig.grant()
    approver = Approver(rig.broker, "alice")
    try:
        first = clients(rig.broker, f"{rig.sshd.user}@{ASSET}", "echo first-in")
        _, code = first.prompt()
        review = approver.type_code(code)
        assert review.status_code == 200 and 'id="ssh-other-address"' not in review.text
        assert approver.decide(review, "approve").status_code == 200
        first.press_enter()
        assert b"first-in" in first.read_until(b"first-in")
        assert first.proc.wait(10) == 0

        again = approver.type_code(code)  # used: gone
        assert again.status_code == 404 and 'id="code-error"' in again.text
        replay = approver.decide(review, "approve")  # the same review form, posted again
        assert replay.status_code == 404 and "no longer pending" in replay.text

        second = clients(
            rig.broker, f"{rig.sshd.user}@{ASSET}", "echo second-in", source="127.0.0.2"
        )
        _, code2 = second.prompt()
        assert code2 != code
        review2 = approver.type_code(code2)  # not from the browser's address: warned
        assert 'id="ssh-other-address"' in review2.text and "127.0.0.2" in review2.text
        denied = approver.decide(review2, "deny")
        assert denied.status_code == 200 and 'id="ssh-denied"' in denied.text
        second.press_enter()
        out = second.refused()
        assert b"conduit: the sign-in was denied in the browser" in out
        assert approver.type_code(code2).status_code == 404
    finally:
        approver.close()
    [approved] = audit_events(rig.broker, "ssh.clientless.approved")
    assert approved["outcome"] == "ok" and approved["actor"] == rig.users["alice"]
    assert approved["details"]["same_address"] is True
    reasons = [
        e["details"]["reason"] for e in audit_events(rig.broker, "ssh.clientless.code_rejected")
    ]
    assert reasons == [
        "unknown, used or expired code",
        "review of a code that is not pending for this user",
        "unknown, used or expired code",
    ]
    assert [e["outcome"] for e in audit_events(rig.broker, "ssh.clientless.denied")] == ["deny"]


# ---- caps -----------------------------------------------------------------------------------


def test_pending_codes_are_capped_per_address_and_overall(
    make_broker: Callable[..., RunningBroker], clients: Callable[..., ClientlessSsh]
) -> None:
    broker = make_broker(
        ssh={"listen_port": 0, "clientless_max_pending_per_ip": 2, "clientless_max_pending": 3}
    )
    seed(broker.services.settings.database_url)
    target = "maint@hist-01"
    a1, a2 = clients(broker, target), clients(broker, target)
    a1.prompt()
    a2.prompt()
    a3 = clients(broker, target)
    assert b"conduit: too many clientless sign-ins are pending from your address" in a3.refused()

    b1 = clients(broker, target, source="127.0.0.2")  # another address: room left overall
    b1.prompt()
    c1 = clients(broker, target, source="127.0.0.3")
    assert b"conduit: too many clientless sign-ins are pending on this broker" in c1.refused()

    a1.close()  # a client that gives up frees its slot
    wait_until(
        lambda: broker.services.clientless.pending_count() == 2, "a1's code cancelled", timeout=10
    )
    clients(broker, target, source="127.0.0.3").prompt()

    refused = audit_events(broker, "ssh.clientless.refused")
    reasons = sorted((e["source_ip"], e["details"]["reason"]) for e in refused)
    assert reasons == [
        ("127.0.0.1", "too many pending codes from this address"),
        ("127.0.0.3", "too many pending codes on this broker"),
    ]


# ---- switches -------------------------------------------------------------------------------


def test_clientless_switched_off_on_the_broker(
    make_broker: Callable[..., RunningBroker], clients: Callable[..., ClientlessSsh]
) -> None:
    broker = make_broker(ssh={"listen_port": 0, "clientless_enabled": False})
    seed(broker.services.settings.database_url)
    out = clients(broker, "maint@hist-01").refused()
    assert b"conduit: clientless sign-in is switched off on this broker" in out
    assert b"Press Enter" not in out
    [refused] = audit_events(broker, "ssh.clientless.refused")
    assert refused["details"]["reason"] == "switched off on this broker"


def test_clientless_switch_per_asset(
    broker: RunningBroker, clients: Callable[..., ClientlessSsh]
) -> None:
    seed(broker.services.settings.database_url)
    # hist-01: Purdue level 3, default on; scada-01, hmi-press-3: level 2, default off.
    _label(broker, "hist-01", clientless="off")
    _label(broker, "scada-01", clientless="on")
    _label(broker, "hmi-press-3", clientless="maybe")  # not on/off: fail closed

    clients(broker, "maint@scada-01").prompt()  # label on beats the level-2 default
    for asset in ("hist-01", "hmi-press-3", "plc-press-3", "no-such-asset"):
        out = clients(broker, f"maint@{asset}").refused()
        assert f"conduit: clientless sign-in is not available for {asset}".encode() in out, out

    _label(broker, "hist-01", clientless="ON ")  # case and spaces do not matter
    clients(broker, "maint@hist-01").prompt()

    reasons = {
        e["subject"]: e["details"]["reason"] for e in audit_events(broker, "ssh.clientless.refused")
    }
    assert reasons == {
        "asset:hist-01": "asset label clientless=off",
        "asset:hmi-press-3": "asset label clientless='maybe' is not on or off",
        "asset:plc-press-3": "Purdue level 1 (default off below 3)",
        "asset:no-such-asset": "unknown asset",
    }


def test_switching_an_asset_off_stops_pending_approvals(
    broker: RunningBroker, clients: Callable[..., ClientlessSsh]
) -> None:
    seed(broker.services.settings.database_url)
    ssh = clients(broker, "maint@hist-01")
    _, code = ssh.prompt()
    approver = Approver(broker, "alice")
    try:
        review = approver.type_code(code)
        _label(broker, "hist-01", clientless="off")  # an admin switches it off meanwhile
        answer = approver.decide(review, "approve")
    finally:
        approver.close()
    assert answer.status_code == 403 and "not available for hist-01" in answer.text
    ssh.press_enter()
    assert (
        b"conduit: sign-in refused: clientless sign-in is not available for hist-01"
        in ssh.refused()
    )


# ---- wrong codes ------------------------------------------------------------------------------


def test_wrong_codes_are_rate_limited_and_audited(
    make_broker: Callable[..., RunningBroker], clients: Callable[..., ClientlessSsh]
) -> None:
    clock = ManualClock(datetime.now(UTC))
    broker = make_broker(clock=clock)
    seed(broker.services.settings.database_url)
    approver = Approver(broker, "alice")
    try:
        for guess in ("AAAA-AAAA", "BBBB-BBBB", "not a code", "CCCC-CCCC", "DDDD-DDDD"):
            assert approver.type_code(guess).status_code == 404
        ssh = clients(broker, "maint@hist-01")
        _, code = ssh.prompt()
        locked = approver.type_code(code)  # even the right code, while locked out
        assert locked.status_code == 429 and 'id="rate-limited"' in locked.text
        assert int(locked.headers["Retry-After"]) == 600
        assert approver.type_code(code).status_code == 429

        clock.advance(601)  # the window has passed (and that code expired with it)
        fresh = clients(broker, "maint@hist-01")
        _, fresh_code = fresh.prompt()
        assert approver.approve(fresh_code).status_code == 200
    finally:
        approver.close()
    rejected = audit_events(broker, "ssh.clientless.code_rejected")
    assert len(rejected) == 5
    assert {e["actor"] for e in rejected} == {approver_id(broker, "alice")}
    assert all(e["source_ip"] == "127.0.0.1" for e in rejected)
    [limited] = audit_events(broker, "ssh.clientless.rate_limited")  # once per lock-out
    assert limited["details"]["retry_after_s"] == 600


def approver_id(broker: RunningBroker, name: str) -> str:
    with session_scope(broker.services.engine) as db:
        user = db.exec(select(User).where(User.sub.endswith(name))).one()  # type: ignore[attr-defined]
        return user.id
