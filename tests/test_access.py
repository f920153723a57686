"""Requests, approvals and time-limited grants, on the real default policy, with a manual clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from broker.dev.demo import seed_plant
from policies.embedded import EmbeddedEngine
from sessions.access.base import AccessDenied
from sessions.access.request_spec import RequestSpec
from sessions.access.service import AccessService
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer
from sessions.db import session_scope
from sessions.errors import ConflictError, ValidationError
from sessions.models import Grant, GrantState, User, VendorOrg
from sessions.plant import PlantDoc, apply, diff, export
from sessions.policy_data import build_plant_data
from sessions.testing import ManualClock

BUNDLE = Path(__file__).resolve().parents[1] / "policies" / "bundle"
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class World:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.clock = ManualClock(T0)
        seed_plant(engine, self.clock)
        self.audit = AuditLog(engine, self.clock)
        self.policy = EmbeddedEngine.from_directory(BUNDLE)
        self.svc = AccessService(
            engine, Authorizer(self.policy, self.audit), self.audit, self.clock
        )
        self.ended: list[tuple[str, str]] = []
        self.svc.on_grant_ended.append(lambda g, r: self.ended.append((g, r)))
        with session_scope(engine) as db:
            org = db.exec(select(VendorOrg)).one()
            self.alice = self._user(db, "alice", ["vendor"], ["conduit-vendors"], org.id)
            self.olga = self._user(db, "olga", ["approver"], ["ot-approvers", "ot-press-line"])
            self.paul = self._user(db, "paul", ["approver"], ["ot-approvers", "ot-press-line"])
            self.adam = self._user(db, "adam", ["admin"], ["conduit-admins"])
        self.refresh()

    def _user(
        self, db: object, name: str, roles: list[str], groups: list[str], org: str | None = None
    ) -> str:
        user = User(
            issuer="https://idp",
            sub=f"u-{name}",
            email=f"{name}@x",
            name=name,
            groups=groups,
            roles=roles,
            vendor_org_id=org,
            amr=["pwd", "mfa"],
            created_at=T0,
        )
        db.add(user)  # type: ignore[attr-defined]
        db.flush()  # type: ignore[attr-defined]
        return user.id

    def refresh(self) -> None:
        with session_scope(self.engine) as db:
            self.policy.set_data(build_plant_data(db))

    def spec(
        self, asset: str = "hist-01", op: str = "read_only", start: float = 1, hours: float = 2
    ) -> RequestSpec:
        starts = self.clock.now() + timedelta(hours=start)
        return RequestSpec(
            asset=asset,
            operation_class=op,
            starts_at=starts,
            ends_at=starts + timedelta(hours=hours),
            reason="diagnostics",
            ticket="CHG-1",
        )

    def grant_state(self, grant_id: str) -> str:
        with session_scope(self.engine) as db:
            grant = db.get(Grant, grant_id)
            assert grant is not None
            return grant.state

    def kinds(self) -> list[tuple[str, str]]:
        return [
            (e.kind, e.outcome)
            for e in self.audit.iter_events()
            if not e.kind.startswith("policy.")
        ]


@pytest.fixture
def world(engine: sa.Engine) -> World:
    return World(engine)


async def test_request_approve_activate_expire(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec())
    grant = await world.svc.approve(req.id, world.olga)
    assert grant is not None and grant.state == GrantState.APPROVED
    assert grant.obligations["approvals_required"] == 1
    assert await world.svc.tick() == {"expired": [], "active": [], "revoked": []}
    world.clock.advance(3600)
    assert (await world.svc.tick())["active"] == [grant.id]
    world.clock.advance(2 * 3600)
    assert (await world.svc.tick())["expired"] == [grant.id]
    assert world.grant_state(grant.id) == GrantState.EXPIRED
    assert world.ended == [(grant.id, "grant expired")]
    assert world.kinds() == [
        ("access.request", "ok"),
        ("access.approve", "ok"),
        ("grant.created", "ok"),
        ("grant.activated", "ok"),
        ("grant.expired", "ok"),
    ]
    assert world.audit.verify().ok


async def test_self_approval_is_refused(world: World) -> None:
    req = await world.svc.request(world.adam, world.spec())
    with pytest.raises(AccessDenied) as err:
        await world.svc.approve(req.id, world.adam)
    assert "cannot approve your own request" in err.value.reasons


async def test_program_needs_two_distinct_approvers_and_one_counts_once(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec("scada-01", "program", hours=1))
    assert await world.svc.approve(req.id, world.olga) is None
    with pytest.raises((AccessDenied, ConflictError)):
        await world.svc.approve(req.id, world.olga)
    grant = await world.svc.approve(req.id, world.paul)
    assert grant is not None and grant.obligations["supervise"] is True


async def test_denied_request_cannot_be_approved(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec())
    world.svc.deny(req.id, world.olga, "not during the production run")
    with pytest.raises((AccessDenied, ConflictError)):
        await world.svc.approve(req.id, world.paul)


async def test_vendor_cannot_deny_and_deny_needs_reason(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec())
    with pytest.raises(ValidationError):
        world.svc.deny(req.id, world.olga, "  ")
    with pytest.raises(AccessDenied):
        world.svc.deny(req.id, world.alice, "no")


async def test_windows_in_the_past_or_too_long_are_refused(world: World) -> None:
    with pytest.raises(ValidationError, match="starts in the past"):
        await world.svc.request(world.alice, world.spec(start=-2))
    with pytest.raises(ValidationError, match="longer than policy allows for program"):
        await world.svc.request(world.alice, world.spec("scada-01", "program", hours=5))
    spec = world.spec()
    with pytest.raises(ValidationError, match="reason is required"):
        await world.svc.request(world.alice, RequestSpec(**{**spec.__dict__, "reason": " "}))


async def test_one_pending_request_per_user_and_asset(world: World) -> None:
    await world.svc.request(world.alice, world.spec())
    with pytest.raises(ConflictError, match="already have a pending request"):
        await world.svc.request(world.alice, world.spec(start=3))


async def test_level_zero_and_foreign_assets_are_refused(world: World) -> None:
    with pytest.raises(AccessDenied) as err:
        await world.svc.request(world.alice, world.spec("drive-press-3"))
    assert any("level 0" in r for r in err.value.reasons)


async def test_eligibility_lost_before_start_means_no_activation(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec())
    grant = await world.svc.approve(req.id, world.olga)
    assert grant is not None
    with session_scope(world.engine) as db:
        user = db.get(User, world.alice)
        assert user is not None
        user.roles, user.groups = [], []  # left the vendor group at the IdP
        db.add(user)
    world.clock.advance(3600)
    assert (await world.svc.tick())["revoked"] == [grant.id]
    assert world.grant_state(grant.id) == GrantState.REVOKED


async def test_lockout_suspends_vendor_grants_and_refuses_requests(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec())
    grant = await world.svc.approve(req.id, world.olga)
    assert grant is not None
    assert world.svc.set_lockout(True, world.adam, "incident 42") == 1
    assert world.grant_state(grant.id) == GrantState.APPROVED  # suspended, not revoked
    assert world.ended == [(grant.id, "emergency lockout: vendor access is suspended")]
    with pytest.raises(AccessDenied, match="emergency lockout"):
        await world.svc.request(world.alice, world.spec("scada-01"))
    world.clock.advance(3600)  # the window opened during the lockout: not activated yet
    assert (await world.svc.tick())["active"] == []
    assert world.svc.set_lockout(False, world.adam, "all clear") == 1
    world.refresh()
    assert (await world.svc.tick())["active"] == [grant.id]
    assert (await world.svc.request(world.alice, world.spec("scada-01"))).state == "pending"


async def test_grant_that_ends_during_the_lockout_stays_expired(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec())
    grant = await world.svc.approve(req.id, world.olga)
    assert grant is not None
    world.svc.set_lockout(True, world.adam, "incident 43")
    world.clock.advance(4 * 3600)
    assert (await world.svc.tick())["expired"] == [grant.id]
    assert world.svc.set_lockout(False, world.adam, "all clear") == 0
    world.refresh()
    assert (await world.svc.tick())["active"] == []
    assert world.grant_state(grant.id) == GrantState.EXPIRED


async def test_revoke_one_grant(world: World) -> None:
    req = await world.svc.request(world.alice, world.spec())
    grant = await world.svc.approve(req.id, world.olga)
    assert grant is not None
    with pytest.raises(AccessDenied):
        world.svc.revoke(grant.id, world.alice, "mine")
    world.svc.revoke(grant.id, world.paul, "wrong line")
    assert world.grant_state(grant.id) == GrantState.REVOKED
    assert world.ended == [(grant.id, "grant revoked: wrong line")]


async def test_fifty_concurrent_approvers_make_exactly_one_grant(world: World) -> None:
    with session_scope(world.engine) as db:
        approvers = [world._user(db, f"ap{i}", ["approver"], ["ot-approvers"]) for i in range(50)]
    req = await world.svc.request(world.alice, world.spec())
    results = await asyncio.gather(
        *(world.svc.approve(req.id, a) for a in approvers), return_exceptions=True
    )
    grants = [r for r in results if isinstance(r, Grant)]
    assert len(grants) == 1
    assert all(r is None or isinstance(r, Grant | ConflictError | AccessDenied) for r in results), (
        results
    )
    with session_scope(world.engine) as db:
        assert len(db.exec(select(Grant)).all()) == 1


async def test_an_archived_asset_takes_no_new_requests(world: World) -> None:
    await world.svc.request(world.alice, world.spec("hist-01"))  # history: archive, not delete
    with session_scope(world.engine, write=True) as db:
        doc = export(db)
        kept = tuple(a for a in doc.assets if a.name != "hist-01")
        plan = diff(
            db, PlantDoc(sites=doc.sites, assets=kept, vendor_orgs=doc.vendor_orgs), archive=True
        )
        assert [(c.key, c.action) for c in plan.changes] == [("hist-01", "archived")]
        apply(db, plan, world.clock.now())
    world.refresh()
    with pytest.raises(ValidationError) as refused:
        await world.svc.request(world.alice, world.spec("hist-01"))
    assert refused.value.message == "asset 'hist-01' is archived: it takes no new access requests"
    assert world.kinds()[-1] == ("access.request", "rejected")
