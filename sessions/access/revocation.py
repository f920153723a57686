"""Ending grants early: one grant revoked by an approver or admin, or every vendor grant
suspended by the emergency lockout (and resumed when it is switched off).
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from sessions.access.base import LIVE_GRANT_STATES, AccessCore, AccessDenied
from sessions.db import session_scope
from sessions.errors import ConflictError, NotFoundError, ValidationError
from sessions.identity import ADMIN, VENDOR
from sessions.models import Asset, Grant, GrantState, PlantFlag, User
from sessions.policy_data import LOCKOUT_FLAG


class GrantRevocation(AccessCore):
    """Revoke one grant; switch the vendor lockout."""

    def revoke(self, grant_id: str, by: str, reason: str) -> Grant:
        """End one approved or active grant now (approver of the asset, or admin)."""
        if not reason.strip():
            raise ValidationError("a reason is required to revoke a grant")
        with self._tx() as db:
            grant, actor = db.get(Grant, grant_id), db.get(User, by)
            if grant is None or actor is None:
                raise NotFoundError("unknown grant")
            asset = db.get(Asset, grant.asset_id)
            if not (
                ADMIN in actor.roles
                or (
                    "approver" in actor.roles
                    and asset is not None
                    and asset.owner_group in actor.groups
                )
            ):
                self._record("grant.revoke", by, "rejected", grant_id, why="not an approver")
                raise AccessDenied("only an approver of this asset or an admin may revoke", ())
            if grant.state not in LIVE_GRANT_STATES:
                raise ConflictError(f"grant is {grant.state}; nothing to revoke")
            self._revoke_row(grant, by, reason.strip())
            db.add(grant)
        self._ended(grant_id, f"grant revoked: {reason.strip()}")
        return grant

    def _revoke_row(self, grant: Grant, by: str, reason: str) -> None:
        grant.state, grant.revoked_at = GrantState.REVOKED, self._clock.now()
        grant.revoked_by, grant.revoke_reason = by, reason
        self._record("grant.revoked", by, "ok", grant.id, reason=reason)

    def set_lockout(self, on: bool, by: str, reason: str) -> int:
        """Switch the emergency vendor lockout on (suspend) or off (resume); returns how many
        vendor grants were suspended or resumed.

        Suspend, not revoke: while it is on, policy denies every vendor action (no new request,
        session or connection), live vendor sessions are cut now, and grants keep their state
        (one not yet started stays ``approved``). Off: the vendor grants still inside their
        window work again; those whose window ended meanwhile were expired by :meth:`tick` and
        stay expired. Audited: ``lockout.on|off`` and one ``grant.suspended|resumed`` per grant.
        """
        now = self._clock.now()
        touched: list[str] = []
        with self._tx() as db:
            flag = db.get(PlantFlag, LOCKOUT_FLAG) or PlantFlag(key=LOCKOUT_FLAG)
            before = {
                "vendors": bool((flag.value or {}).get("vendors", False)),
                "reason": str((flag.value or {}).get("reason", "")),
            }
            flag.value = {"vendors": on, "reason": reason.strip()}
            flag.updated_at, flag.updated_by = now, by
            db.add(flag)
            for grant in self.vendor_grants(db, now):
                touched.append(grant.id)
                kind = "grant.suspended" if on else "grant.resumed"
                self._record(kind, by, "ok", grant.id, reason=f"emergency lockout: {reason}")
            self._record(
                "lockout.on" if on else "lockout.off",
                by,
                "ok",
                LOCKOUT_FLAG,
                reason=reason.strip(),
                before=before,
                after=dict(flag.value),
                **{"suspended_grants" if on else "resumed_grants": len(touched)},
            )
        if on:
            for grant_id in touched:
                self._ended(grant_id, "emergency lockout: vendor access is suspended")
        return len(touched)

    @staticmethod
    def vendor_grants(db: Session, now: datetime) -> list[Grant]:
        """Vendors' approved or active grants whose window has not ended (what the lockout
        suspends while it is on)."""
        found = []
        for grant in db.exec(
            select(Grant).where(col(Grant.state).in_(LIVE_GRANT_STATES), col(Grant.ends_at) > now)
        ).all():
            user = db.get(User, grant.user_id)
            if user is not None and VENDOR in user.roles:
                found.append(grant)
        return found

    def vendor_grants_live(self) -> int:
        """How many vendor grants the lockout would suspend (or resume) now."""
        with session_scope(self._engine) as db:
            return len(self.vendor_grants(db, self._clock.now()))
