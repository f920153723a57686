"""The session core on its own (broker/core): MaintenanceSession, AssetLink.stop, ForwardRelay.

Small fakes stand in for policy (an allow with a deadline), the session rows and the asset's
channel; the live-session registry is the real one. The end-to-end behaviour (stock ssh, sshd,
agents, PLCs) is in tests/test_ssh_sessions.py, test_ssh_channels.py and test_ot_*.py.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from broker.core.asset_link import AssetCommand, AssetLink
from broker.core.forward import RateLimiters
from broker.core.relay import ForwardRelay
from broker.core.session import MaintenanceSession, SessionDeps, Target
from broker.runtime.live_sessions import LiveSessions
from sessions.access import AccessDenied
from sessions.credentials import CredentialRefused
from sessions.ot.base import Verdicts
from sessions.session_end import EndCode, Ending, grant_ending
from sessions.testing import ManualClock
from tests.harness.wait import async_wait_until
from tests.test_tcp_forward import _Channel, _Vendor


class _Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def record(self, kind: str, *, outcome: str, **kw: Any) -> None:
        self.events.append((kind, outcome, dict(kw.get("details") or {})))

    def post(self, kind: str, *, outcome: str, **kw: Any) -> None:
        self.events.append((kind, outcome, dict(kw.get("details") or {})))


class _Maintenance:
    """Policy allows (a grant ending in an hour); rows are counted."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.opened: list[str] = []
        self.closed: list[tuple[str, str]] = []
        self.endings: list[Ending] = []

    async def authorize(self, **kw: Any) -> Any:
        ends = self.clock.now() + timedelta(hours=1)
        return SimpleNamespace(
            grant=SimpleNamespace(id="g-1", ends_at=ends),
            deadline=ends,
            user=SimpleNamespace(id="u-1", email="v@example.test", name="V", sub="v"),
            asset=SimpleNamespace(name="plc-1", labels={}, agent_id=None),
            endpoint=SimpleNamespace(name="modbus", host="10.0.0.5", port=502, protocol="modbus"),
            decision=SimpleNamespace(
                obligations=SimpleNamespace(idle_timeout_s=None, record="strict")
            ),
        )

    def open(self, auth: Any, *, kind: str, login: str, source_ip: str | None) -> str:
        self.opened.append(kind)
        return f"s-{len(self.opened)}"

    def close(self, session_id: str, ending: Ending, **kw: Any) -> None:
        self.closed.append((session_id, ending.text))
        self.endings.append(ending)


class _Edge:
    def __init__(self) -> None:
        self.told: list[str] = []
        self.disconnected: list[str] = []

    def ending(self, reason: str) -> None:
        self.told.append(reason)

    def disconnect(self, reason: str, *, forwarding: bool) -> None:
        self.disconnected.append(reason)


def _session(
    refuse: bool = False,
) -> tuple[MaintenanceSession, _Maintenance, _Edge, _Audit, LiveSessions]:
    clock = ManualClock()
    maintenance, audit, edge = _Maintenance(clock), _Audit(), _Edge()
    live = LiveSessions(clock)

    async def credential() -> Any:
        if refuse:
            raise CredentialRefused("certificate revoked")
        return object(), SimpleNamespace(label="cert:7")

    deps = SessionDeps(
        maintenance=maintenance,  # type: ignore[arg-type]
        gateway=lambda: None,
        audit=audit,  # type: ignore[arg-type]
        clock=clock,
        live=live,
        recorder=None,  # type: ignore[arg-type]
        keys=None,  # type: ignore[arg-type]
        pin_host_key=lambda asset, key: None,
        alert=lambda kind, subject, details: None,
        limiters=RateLimiters(clock),
        track_credential=lambda session_id, credential: None,
        default_idle_timeout_s=900.0,
    )
    session = MaintenanceSession(
        deps,
        target=Target("maint", "plc-1"),
        user_id="u-1",
        peer="192.0.2.7",
        credential=credential,
        credential_details={"serial": 7},
        edge=edge,
    )
    return session, maintenance, edge, audit, live


async def test_end_is_idempotent_tells_the_edge_once_and_closes_the_row_once() -> None:
    session, maintenance, edge, _, live = _session()
    await session.authorize("tcp", host="10.0.0.5", port=502)
    assert session.record is not None and live.get(session.record.id) is session.record
    finished: list[str] = []

    async def work() -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        finished.append("work")

    session.own(work())
    session.end(Ending(EndCode.REVOKED, "grant revoked"))
    session.end(Ending(EndCode.ADMIN_KILL, "again"))
    live.kill(
        session.record.id, Ending(EndCode.ADMIN_KILL, "and again")
    )  # the registry no longer has it
    await session.aclose()
    assert edge.told == ["grant revoked"]
    assert edge.disconnected == ["grant revoked"]
    assert maintenance.closed == [("s-1", "grant revoked")]
    assert [(e.code, e.outcome) for e in maintenance.endings] == [("grant_revoked", "deny")]
    assert finished == ["work"]
    assert live.get(session.record.id) is None
    with pytest.raises(AccessDenied, match="session ended: grant revoked"):
        await session.authorize("tcp", host="10.0.0.5", port=502)


async def test_the_live_registry_ends_the_session_through_its_record() -> None:
    session, maintenance, edge, _, live = _session()
    await session.authorize("tcp", host="10.0.0.5", port=502)
    assert session.record is not None
    assert live.kill(session.record.id, Ending(EndCode.ADMIN_KILL, "killed by an admin"))
    await session.aclose()
    assert session.ended == "killed by an admin"
    assert maintenance.closed == [("s-1", "killed by an admin")]
    assert edge.told == ["killed by an admin"]


async def test_one_grant_per_session_later_authorizations_are_bound() -> None:
    session, maintenance, _, _, _ = _session()
    calls: list[dict[str, Any]] = []
    authorize = maintenance.authorize

    async def spy(**kw: Any) -> Any:
        calls.append(kw)
        return await authorize(**kw)

    maintenance.authorize = spy  # type: ignore[method-assign]
    await asyncio.gather(
        session.authorize("tcp", host="10.0.0.5", port=502),
        session.authorize("tcp", host="10.0.0.5", port=502),
    )
    assert maintenance.opened == ["tcp"]  # one session row for both
    assert [(c["bound"], c["grant_id"]) for c in calls] == [(False, None), (True, "g-1")]
    session.end(Ending(EndCode.CLIENT_DISCONNECTED, "done"))
    await session.aclose()


async def test_a_refused_credential_is_denied_and_audited_with_the_edges_details() -> None:
    session, maintenance, edge, audit, _ = _session(refuse=True)
    with pytest.raises(AccessDenied, match="credential refused: certificate revoked"):
        await session.authorize("ssh")
    assert maintenance.opened == []
    [(kind, outcome, details)] = audit.events
    assert (kind, outcome) == ("session.denied", "deny")
    assert details == {
        "kind": "ssh",
        "reasons": ["credential refused: certificate revoked"],
        "serial": 7,
    }
    session.end(Ending(EndCode.CLIENT_DISCONNECTED, "client disconnected"))
    await session.aclose()
    assert maintenance.closed == [] and edge.told == ["client disconnected"]


# ---- AssetLink.stop: TERM, then KILL, then close --------------------------------------------


class _AssetChannel:
    """An asset command channel: closes on the signals in ``ends_on``."""

    def __init__(self, command: AssetCommand, ends_on: set[str]) -> None:
        self.command, self.ends_on = command, ends_on
        self.signals: list[str] = []
        self.closed = False

    def send_signal(self, sig: str) -> None:
        self.signals.append(sig)
        if sig in self.ends_on:
            self.command.exit_signal = (sig, False, "", "")
            self.command.closed.set()

    def close(self) -> None:
        self.closed = True


class _Sink:
    def from_asset(self, data: bytes, stderr: bool) -> None: ...
    def asset_eof(self) -> None: ...
    def hold_input(self) -> None: ...
    def release_input(self) -> None: ...
    def asset_closed(self, command: AssetCommand, exc: Exception | None) -> None: ...


def _link(audit: _Audit) -> AssetLink:
    return AssetLink(
        session_id="s-1",
        actor="u-1",
        keys=None,  # type: ignore[arg-type]
        gateway=lambda: None,
        pin_host_key=lambda asset, key: None,
        audit=audit,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("ends_on", "sent"), [({"TERM"}, ["TERM"]), (set(), ["TERM", "KILL"])], ids=["term", "kill"]
)
async def test_stop_signals_a_running_command_then_closes(
    ends_on: set[str], sent: list[str]
) -> None:
    audit = _Audit()
    link = _link(audit)
    command = AssetCommand(_Sink(), subsystem=False)
    chan = _AssetChannel(command, ends_on)
    command.chan = chan  # type: ignore[assignment]
    link.stop(command, 1, "grant revoked")
    await link.aclose()
    assert chan.signals == sent and chan.closed
    assert [e[2]["signal"] for e in audit.events if e[0] == "session.signal"] == sent
    assert {e[2]["reason"] for e in audit.events} == {"grant revoked"}


async def test_stop_closes_sftp_and_finished_commands_without_signals() -> None:
    audit = _Audit()
    link = _link(audit)
    for subsystem, status in ((True, None), (False, 0)):
        command = AssetCommand(_Sink(), subsystem=subsystem)
        command.exit_status = status
        chan = _AssetChannel(command, set())
        command.chan = chan  # type: ignore[assignment]
        link.stop(command, 2, "channel closed")
        assert chan.closed and chan.signals == []
    await link.aclose()
    assert audit.events == []


# ---- ForwardRelay takes any inspector -------------------------------------------------------


class _RefuseAll:
    """An inspector that refuses every client frame with b"NO" and records it."""

    accepting = True
    drained = True

    def from_client(self, data: bytes) -> Verdicts:
        record = {"protocol": "fake", "allowed": False, "reason": "read only", "class": "write"}
        return Verdicts(to_client=b"NO", records=(record,))

    def from_server(self, data: bytes) -> Verdicts:
        return Verdicts(to_client=data)

    def poll(self) -> Verdicts:
        return Verdicts()

    def begin_close(self, reason: str) -> Verdicts:
        return Verdicts()

    def finish(self) -> list[dict[str, Any]]:
        return []


async def test_relay_with_any_inspector_applies_its_verdicts() -> None:
    vendor, channel = _Vendor(b"write please"), _Channel()
    alerts: list[tuple[str, dict[str, Any]]] = []
    relay = ForwardRelay(
        vendor_in=vendor,
        vendor_out=vendor,
        channel=channel,  # type: ignore[arg-type]
        session=None,
        clock=ManualClock(),
        recording=None,
        inspector=_RefuseAll(),
        alert=lambda kind, details: alerts.append((kind, details)),
        drain_s=0.1,
    )
    task = asyncio.create_task(relay.run())
    await async_wait_until(lambda: alerts, "the refusal alert")
    relay.stop("session ended")
    assert await task == "session ended"
    assert bytes(channel.sent) == b""  # never reached the PLC
    assert bytes(vendor.written) == b"NO"
    assert [(k, d["protocol"], d["allowed"]) for k, d in alerts] == [("ot.refused", "fake", False)]
    assert vendor.closed


def test_grant_endings_map_the_access_services_words_to_codes() -> None:
    """``AccessService.on_grant_ended`` passes text; each known ending gets its code."""
    assert grant_ending("grant expired").code == EndCode.GRANT_EXPIRED
    assert grant_ending("grant revoked: vendor done").code == EndCode.REVOKED
    lockout = grant_ending("emergency lockout: vendor access is suspended")
    assert (lockout.code, lockout.outcome) == (EndCode.LOCKOUT, "deny")
    assert grant_ending("eligibility lost before the window opened").code == "eligibility_lost"
    other = grant_ending("something new")  # deny by default, never "ok"
    assert (other.code, other.outcome, other.text) == ("grant_ended", "deny", "something new")
    with pytest.raises(ValueError, match="unknown session end code"):
        Ending("made_up", "text")


async def test_ended_while_its_row_was_opening_the_row_is_closed_and_nothing_is_live() -> None:
    """The user leaves (or the broker stops) during the first authorization: the row opened
    meanwhile is closed with that ending, the session is never listed, the channel refused."""
    session, maintenance, edge, _, live = _session()
    opening, release = threading.Event(), threading.Event()
    open_row = maintenance.open

    def slow_open(auth: Any, **kw: Any) -> str:
        opening.set()
        release.wait(10)
        return open_row(auth, **kw)

    maintenance.open = slow_open  # type: ignore[method-assign]
    attempt = asyncio.ensure_future(session.authorize("tcp", host="10.0.0.5", port=502))
    await async_wait_until(opening.is_set, "the row to start opening")
    session.end(Ending(EndCode.CLIENT_DISCONNECTED, "client disconnected"))
    release.set()
    with pytest.raises(AccessDenied):
        await attempt
    await session.aclose()
    assert maintenance.closed == [("s-1", "client disconnected")]
    assert live.list() == []
    assert edge.told == ["client disconnected"]


async def test_a_grant_that_ends_during_authorization_ends_the_new_session() -> None:
    """The grant is revoked after policy said yes but before the session was listed: the
    revocation could not reach it, so listing it ends it; a grant resumed earlier does not."""
    session, maintenance, _, _, live = _session()
    live.start()
    try:
        live.end_grant("g-1", "emergency lockout: vendor access is suspended")  # before: ignored
        asked = asyncio.Event()
        authorize = maintenance.authorize

        async def slow_authorize(**kw: Any) -> Any:
            auth = await authorize(**kw)
            asked.set()
            await asyncio.sleep(0)  # the revocation lands here
            live.end_grant("g-1", "grant revoked: by admin")
            return auth

        maintenance.authorize = slow_authorize  # type: ignore[method-assign]
        with pytest.raises(AccessDenied):
            await session.authorize("tcp", host="10.0.0.5", port=502)
        await session.aclose()
        assert asked.is_set()
        assert maintenance.closed == [("s-1", "grant revoked: by admin")]
        assert [e.code for e in maintenance.endings] == ["grant_revoked"]
        assert live.list() == []

        again, maintenance2, _, _, live2 = _session()
        live2.start()
        try:
            live2.end_grant("g-1", "emergency lockout: vendor access is suspended")
            await again.authorize("tcp", host="10.0.0.5", port=502)  # resumed before: allowed
            assert again.record is not None and live2.get(again.record.id) is again.record
            again.end(Ending(EndCode.CLIENT_DISCONNECTED, "client disconnected"))
            await again.aclose()
            assert maintenance2.closed == [("s-1", "client disconnected")]
        finally:
            await live2.aclose()
    finally:
        await live.aclose()


async def test_an_ending_step_that_raises_does_not_leave_the_row_open() -> None:
    session, maintenance, edge, _, live = _session()
    await session.authorize("tcp", host="10.0.0.5", port=502)

    def broken(reason: str) -> None:
        raise RuntimeError("edge gone")

    edge.ending = broken  # type: ignore[method-assign]
    session.end(Ending(EndCode.ADMIN_KILL, "terminated by an administrator"))
    await session.aclose()
    assert maintenance.closed == [("s-1", "terminated by an administrator")]
    assert live.list() == []
