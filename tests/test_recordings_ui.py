"""Session and recording pages with real IdP users: list and filters, vendor scoping (403 +
audit), download, verify on demand (OK, then BROKEN after tampering), the live-session kill
switch, and playback with the locally served asciinema-player in Chromium.

Recordings are written with the real framework (``RecordingWriter`` + ``AsciicastRecorder``
with the broker's recording key) into ``<data_dir>/recordings/<id>`` next to their DB rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from playwright.sync_api import Browser, ConsoleMessage, expect
from sqlmodel import col, select

from broker.dev.demo import seed
from broker.keys.recording import load_recording_signer
from broker.runtime.live_sessions import LiveSession
from sessions.asciicast import AsciicastRecorder
from sessions.db import session_scope
from sessions.models import (
    Asset,
    MaintenanceSession,
    Recording,
    RecordingIntegrity,
    SessionKind,
    SessionState,
    User,
)
from sessions.recording import LocalStore, RecordingWriter
from sessions.session_end import EndCode, Ending
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events, form_values, web_login
from tests.harness.wait import TIMEOUT_S

Login = Callable[[str], httpx2.Client]
OTPS = {"victor": "246810"}


@dataclass(frozen=True)
class Made:
    id: str
    session_id: str


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


@pytest.fixture
def login(plant: RunningBroker) -> Iterator[Login]:
    clients: list[httpx2.Client] = []

    def factory(username: str) -> httpx2.Client:
        client = httpx2.Client(timeout=30.0, follow_redirects=False)
        clients.append(client)
        answer = web_login(
            client, plant.url, username, f"{username}-demo-pw", otp=OTPS.get(username)
        )
        assert answer.status_code == 303, answer.text
        return client

    yield factory
    for client in clients:
        client.close()


def _user_id(broker: RunningBroker, username: str) -> str:
    with session_scope(broker.services.engine) as db:
        user = db.exec(select(User).where(col(User.sub).endswith(username))).one()
        return user.id


def make_recording(
    broker: RunningBroker,
    username: str,
    asset: str,
    *,
    started: datetime,
    text: str = "hello from the asset",
) -> Made:
    """A closed SSH session of ``username`` with a signed, finalized asciicast recording."""
    svc = broker.services
    data_dir = svc.settings.data_dir
    with session_scope(svc.engine, write=True) as db:
        asset_id = db.exec(select(Asset.id).where(Asset.name == asset)).one()
        session = MaintenanceSession(
            user_id=_user_id(broker, username),
            asset_id=asset_id,
            kind=SessionKind.SSH,
            login="operator",
            state=SessionState.CLOSED,
            source_ip="127.0.0.1",
            started_at=started,
            ended_at=started + timedelta(minutes=5),
            end_reason="client closed",
        )
        db.add(session)
        db.flush()
        rec = Recording(session_id=session.id, format="asciicast", path="", created_at=started)
        db.add(rec)
        db.flush()
        rec.path = f"recordings/{rec.id}"
        made = Made(rec.id, session.id)
    clock = ManualClock(started)
    writer = RecordingWriter(
        LocalStore(data_dir / "recordings"),
        made.id,
        kind="asciicast",
        signer=load_recording_signer(data_dir / "keys"),
        clock=clock,
        meta={"session_id": made.session_id},
    )
    cast = AsciicastRecorder(writer, 80, 24, clock=clock, title=f"operator@{asset}")
    clock.advance(0.2)
    cast.output(f"{text}\r\n".encode())
    writer.flush()
    clock.advance(0.5)
    cast.output(b"$ exit\r\n")
    cast.close("client closed")
    with session_scope(svc.engine, write=True) as db:
        row = db.get(Recording, made.id)
        assert row is not None
        row.size_bytes, row.chain_head = writer.size, writer.chain_head
        row.finalized_at = clock.now()
    return made


@pytest.fixture
def recordings(plant: RunningBroker, login: Login) -> dict[str, Made]:
    for name in ("alice", "victor", "sam", "adam", "olga"):
        login(name)
    day = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    return {
        "alice": make_recording(plant, "alice", "hist-01", started=day),
        "victor": make_recording(plant, "victor", "scada-01", started=day + timedelta(days=2)),
    }


def _ids(html: str) -> set[str]:
    return {part.split('"')[0] for part in html.split('data-recording-id="')[1:]}


def test_reviewer_lists_and_filters_all(
    plant: RunningBroker, login: Login, recordings: dict[str, Made]
) -> None:
    sam = login("sam")
    everything = sam.get(f"{plant.url}/recordings")
    assert everything.status_code == 200
    assert _ids(everything.text) == {recordings["alice"].id, recordings["victor"].id}
    assert str(plant.services.settings.data_dir) not in everything.text  # no paths shown
    assert 'href="/recordings"' in everything.text  # in the nav

    def ids(**query: str) -> set[str]:
        answer = sam.get(f"{plant.url}/recordings", params=query)
        assert answer.status_code == 200
        return _ids(answer.text)

    assert ids(asset="hist-01") == {recordings["alice"].id}
    assert ids(user="VICTOR") == {recordings["victor"].id}
    assert ids(user="victor@acme") == {recordings["victor"].id}
    assert ids(kind="pcap") == set()
    assert ids(kind="asciicast") == set(_ids(everything.text))
    assert ids(**{"from": "2026-03-11"}) == {recordings["victor"].id}
    assert ids(to="2026-03-10") == {recordings["alice"].id}
    assert ids(**{"from": "2026-03-13", "to": "2026-03-20"}) == set()
    assert ids(**{"from": "not-a-date"}) == set(_ids(everything.text))

    assert login("adam").get(f"{plant.url}/recordings").status_code == 200


def test_vendor_sees_only_own_recordings(
    plant: RunningBroker, login: Login, recordings: dict[str, Made]
) -> None:
    alice = login("alice")
    mine, theirs = recordings["alice"].id, recordings["victor"].id
    listing = alice.get(f"{plant.url}/recordings", params={"user": "victor"})
    assert _ids(listing.text) == {mine}  # the user filter cannot widen a vendor's view
    own = alice.get(f"{plant.url}/recordings/{mine}")
    assert own.status_code == 200 and 'data-cast-url="/recordings/' in own.text
    # the player compiles WebAssembly: only its page allows that, and still no inline script
    assert "script-src 'self' 'wasm-unsafe-eval';" in own.headers["content-security-policy"]
    assert "wasm" not in listing.headers["content-security-policy"]

    for path in (f"/recordings/{theirs}", f"/recordings/{theirs}/download"):
        refused = alice.get(plant.url + path)
        assert refused.status_code == 403, path
        assert "hello from the asset" not in refused.text
    denied = audit_events(plant, "recording.access.denied")
    assert len(denied) == 2
    assert denied[0]["actor"] == _user_id(plant, "alice")
    assert denied[0]["subject"] == f"recording:{theirs}"
    assert denied[0]["outcome"] == "deny"

    csrf = form_values(alice.get(f"{plant.url}/recordings/{mine}").text)["csrf"]
    refused_verify = alice.post(f"{plant.url}/recordings/{theirs}/verify", data={"csrf": csrf})
    assert refused_verify.status_code == 403
    assert alice.get(f"{plant.url}/recordings/nope").status_code == 404


def test_roles_without_recordings_are_refused(
    plant: RunningBroker, login: Login, recordings: dict[str, Made]
) -> None:
    nora = login("nora")  # no role at all
    assert nora.get(f"{plant.url}/recordings").status_code == 403
    assert nora.get(f"{plant.url}/recordings/{recordings['alice'].id}").status_code == 403
    assert nora.get(f"{plant.url}/sessions").status_code == 403
    # approvers see the recordings of the assets their group owns (tests/test_views_roles.py)
    olga = login("olga")
    assert olga.get(f"{plant.url}/recordings/{recordings['alice'].id}").status_code == 200
    assert login("alice").get(f"{plant.url}/sessions").status_code == 200  # her own only
    anonymous = httpx2.get(f"{plant.url}/recordings", follow_redirects=False, timeout=TIMEOUT_S)
    assert anonymous.status_code == 303 and "/signin" in anonymous.headers["location"]


def test_download_is_the_asciicast(
    plant: RunningBroker, login: Login, recordings: dict[str, Made]
) -> None:
    rid = recordings["alice"].id
    got = login("alice").get(f"{plant.url}/recordings/{rid}/download")
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("application/x-asciicast")
    assert got.headers["content-disposition"] == f'attachment; filename="{rid}.cast"'
    assert got.headers["x-conduit-integrity"] == RecordingIntegrity.UNKNOWN
    lines = got.text.splitlines()
    header = json.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 80, 24)
    assert json.loads(lines[1]) == [0.2, "o", "hello from the asset\r\n"]
    assert json.loads(lines[2])[1:] == ["o", "$ exit\r\n"]
    events = audit_events(plant, "recording.downloaded")
    assert [e["subject"] for e in events] == [f"recording:{rid}"]


def test_verify_on_demand_then_tamper(
    plant: RunningBroker, login: Login, recordings: dict[str, Made]
) -> None:
    sam = login("sam")
    rid = recordings["victor"].id
    page = sam.get(f"{plant.url}/recordings/{rid}")
    csrf = form_values(page.text)["csrf"]
    assert sam.post(f"{plant.url}/recordings/{rid}/verify", data={}).status_code == 400

    ok = sam.post(f"{plant.url}/recordings/{rid}/verify", data={"csrf": csrf})
    assert ok.status_code == 303
    shown = sam.get(plant.url + ok.headers["location"])
    assert "OK: 2 chunks" in shown.text
    assert _integrity(plant, rid) == RecordingIntegrity.OK

    chunk = plant.services.settings.data_dir / "recordings" / rid / "chunk-000001.cast"
    chunk.write_bytes(chunk.read_bytes().replace(b"hello", b"HELLO"))
    broken = sam.post(f"{plant.url}/recordings/{rid}/verify", data={"csrf": csrf})
    shown = sam.get(plant.url + broken.headers["location"])
    assert "BROKEN: chunk 1 (chunk-000001.cast): sha256 mismatch" in shown.text
    assert _integrity(plant, rid) == RecordingIntegrity.BROKEN
    listing = sam.get(f"{plant.url}/recordings")
    assert f'data-recording-id="{rid}" data-integrity="broken"' in listing.text
    outcomes = [e["outcome"] for e in audit_events(plant, "recording.verified")]
    assert outcomes == ["ok", "error"]


def _integrity(broker: RunningBroker, rid: str) -> str:
    with session_scope(broker.services.engine) as db:
        row = db.get(Recording, rid)
        assert row is not None
        return row.integrity


def test_path_outside_the_store_is_refused(
    plant: RunningBroker, login: Login, recordings: dict[str, Made]
) -> None:
    rid = recordings["alice"].id
    sam = login("sam")
    for path in ("keys", "recordings", "recordings/../keys", "../..", "/etc"):
        with session_scope(plant.services.engine, write=True) as db:
            row = db.get(Recording, rid)
            assert row is not None
            row.path = path
        got = sam.get(
            f"{plant.url}/recordings/{rid}/download", headers={"accept": "application/json"}
        )
        assert got.status_code == 404, path
        assert got.json()["error"] == "recording_missing", path


def test_live_sessions_page_and_kill(plant: RunningBroker, login: Login) -> None:
    killed: list[Ending] = []
    now = datetime.now(UTC)
    plant.services.live.add(
        LiveSession(
            id="sess-test-1",
            kind="ssh",
            user_id="alice-user-id",
            user="Alice Vendor",
            asset="hist-01",
            login="operator",
            grant_id=None,
            source_ip="127.0.0.1",
            started_at=now,
            deadline=now + timedelta(hours=1),
            deadline_reason=Ending(EndCode.GRANT_EXPIRED, "grant window ended"),
            idle_timeout_s=3600,
            last_activity=now,
            kill=killed.append,
            bytes_up=12,
            bytes_down=345,
        )
    )
    sam = login("sam")
    seen = sam.get(f"{plant.url}/sessions")
    assert seen.status_code == 200 and 'id="session-sess-test-1"' in seen.text
    assert "12 / 345" in seen.text
    assert "kill-confirm-" not in seen.text  # reviewers watch, admins kill
    sam_csrf = form_values(seen.text)["csrf"]
    assert (
        sam.post(f"{plant.url}/sessions/sess-test-1/kill", data={"csrf": sam_csrf}).status_code
        == 403
    )

    adam = login("adam")
    page = adam.get(f"{plant.url}/sessions")
    assert 'id="kill-confirm-sess-test-1"' in page.text
    csrf = form_values(page.text)["csrf"]
    assert adam.post(f"{plant.url}/sessions/sess-test-1/kill", data={}).status_code == 400
    done = adam.post(f"{plant.url}/sessions/sess-test-1/kill", data={"csrf": csrf})
    assert done.status_code == 303
    assert [(k.code, k.text) for k in killed] == [
        ("admin_kill", "terminated by an administrator (Adam Admin)")
    ]
    event = audit_events(plant, "session.killed")[-1]
    assert event["subject"] == "session:sess-test-1"
    assert event["actor"] == _user_id(plant, "adam")
    after = adam.get(plant.url + done.headers["location"])
    assert "Session sess-test-1 ended." in after.text and 'id="no-sessions"' in after.text
    again = adam.post(f"{plant.url}/sessions/sess-test-1/kill", data={"csrf": csrf})
    assert "not live" in adam.get(plant.url + again.headers["location"]).text


@pytest.mark.browser
def test_playback_page_runs_asciinema_player(
    chromium: Browser, plant: RunningBroker, recordings: dict[str, Made]
) -> None:
    rid = recordings["alice"].id
    context = chromium.new_context()
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # there is no favicon: not this page's business
        where = message.location.get("url", "")
        if message.type == "error" and not where.endswith("/favicon.ico"):
            problems.append(f"{where}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(plant.url + "/")
    page.click("#signin-main")
    page.fill("#username", "sam")
    page.fill("#password", "sam-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(plant.url + "/")
    page.click("nav >> text=Recordings")
    page.click(f"#open-{rid}")
    expect(page.locator("#player .ap-player")).to_be_visible(timeout=10_000)
    page.locator("#player .ap-player").click()  # start playback
    expect(page.locator("#player")).to_contain_text("hello from the asset", timeout=10_000)
    assert not problems, problems
    context.close()
