"""A grant's life in time: pending requests expire at their window's end; ``approved``
grants become ``active`` at their window's start if policy still finds the requester eligible
(kind ``request``, with the credential context the request was filed with), else ``revoked``;
live grants expire at the window's end. Vendor grants wait while the lockout is on.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from policies.decision import Decision
from sessions.access.base import LIVE_GRANT_STATES, AccessCore
from sessions.authorizer import build_input, user_document
from sessions.credentials import AuthContext
from sessions.identity import VENDOR
from sessions.models import AccessRequest, AccessRequestState, Asset, Grant, GrantState, User

# A grant whose window opened: its id, the policy input for activation, the requester's id.
_Due = tuple[str, dict[str, Any], str]


class GrantClock(AccessCore):
    """Moves requests and grants along with time (see :meth:`tick`)."""

    async def tick(self) -> dict[str, list[str]]:
        """Expire stale requests and grants; activate grants whose window opened (after
        re-checking eligibility with policy). Returns the ids that changed, by new state."""
        now = self._clock.now()
        changed: dict[str, list[str]] = {"expired": [], "active": [], "revoked": []}
        due = await asyncio.to_thread(self._expire_and_collect, now, changed["expired"])
        for grant_id, document, user_id in due:
            decision = await self._ask(document, user_id, "activate")
            state = GrantState.ACTIVE if decision.allow else GrantState.REVOKED
            if await asyncio.to_thread(self._activate, grant_id, state, decision):
                changed["active" if decision.allow else "revoked"].append(grant_id)
        for grant_id in changed["expired"]:
            self._ended(grant_id, "grant expired")
        for grant_id in changed["revoked"]:
            self._ended(grant_id, "eligibility lost before the window opened")
        return changed

    def _expire_and_collect(self, now: datetime, expired: list[str]) -> list[_Due]:
        """Expire what ended (grant ids into ``expired``); the grants due for activation."""
        with self._tx() as db:
            for req in db.exec(
                select(AccessRequest).where(
                    AccessRequest.state == AccessRequestState.PENDING,
                    col(AccessRequest.ends_at) <= now,
                )
            ).all():
                req.state, req.decided_at = AccessRequestState.EXPIRED, now
                db.add(req)
                self._record("access.expired", "system", "ok", req.id)
            for grant in db.exec(
                select(Grant).where(
                    col(Grant.state).in_(LIVE_GRANT_STATES), col(Grant.ends_at) <= now
                )
            ).all():
                grant.state = GrantState.EXPIRED
                db.add(grant)
                expired.append(grant.id)
                self._record("grant.expired", "system", "ok", grant.id)
            locked = self._locked(db)
            due = []
            for grant in db.exec(
                select(Grant).where(Grant.state == GrantState.APPROVED, col(Grant.starts_at) <= now)
            ).all():
                user = db.get(User, grant.user_id)
                assert user is not None
                if locked and VENDOR in user.roles:
                    continue  # suspended: activated (policy asked) once the lockout ends
                due.append((grant.id, eligibility_input(db, grant, user, now), user.id))
            return due

    def _activate(self, grant_id: str, state: str, decision: Decision) -> bool:
        with self._tx() as db:
            grant = db.get(Grant, grant_id)
            if grant is None or grant.state != GrantState.APPROVED:
                return False  # revoked meanwhile
            grant.state = state
            if state == GrantState.REVOKED:
                grant.revoked_at, grant.revoked_by = self._clock.now(), "system"
                grant.revoke_reason = "eligibility lost: " + "; ".join(decision.reasons)
            db.add(grant)
            kind = "grant.activated" if state == GrantState.ACTIVE else "grant.revoked"
            self._record(kind, "system", "ok", grant_id, reasons=list(decision.reasons))
            return True


def eligibility_input(db: Session, grant: Grant, user: User, now: datetime) -> dict[str, Any]:
    """The policy input re-checking a grant's request (kind ``request``, the request's ports,
    login and credential context): at its window start, and mid-window
    (:mod:`sessions.access.recheck`)."""
    asset = db.get(Asset, grant.asset_id)
    grant_req = db.get(AccessRequest, grant.request_id)
    assert asset is not None
    # The request's own credential context: how the requester signed in then.
    filed = AuthContext(
        tuple(grant_req.auth_amr) if grant_req else (),
        grant_req.auth_acr if grant_req else None,
    )
    return build_input(
        db,
        user=user_document(db, user, filed),
        asset=asset,
        grant=None,
        action={
            "kind": "request",
            "operation_class": grant.operation_class,
            "ports": list(grant_req.ports) if grant_req else [],
            "login": grant_req.login if grant_req else None,
        },
        now=now,
    )
