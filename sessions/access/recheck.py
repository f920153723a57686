"""Re-checking live grants mid-window: a grant whose basis disappeared ends now.

:meth:`GrantRecheck.recheck` asks policy, for every ``active`` grant whose window is open, the
question activation asked (kind ``request`` with the request's ports, login and credential
context: :func:`sessions.access.lifecycle.eligibility_input`), against the plant as it is now.
A deny revokes the grant (``revoked_by`` ``system``, reason ``eligibility lost: <the policy's
reasons>``), audited as ``grant.revoked`` with the trigger and the deciding decision's input
hash and bundle version (the decision itself is the ``policy.decision`` event, purpose
``recheck:<trigger>``); ``on_grant_ended`` then ends the grant's live sessions. Two things
policy does not see are checked here: a disabled user and an archived asset.

Not trigger-happy: a deny that says the engine failed (``Decision.engine_failed``: OPA down, no
bundle, evaluation error; or the bundle's answer that the plant data is missing), or any deny
while the caller reports the plant data could not be pushed (``data_problem``), revokes nothing:
it is audited as ``grant.recheck_failed`` (outcome ``error``) and the next re-check tries again.
Vendor grants are skipped while the emergency lockout is on (they are suspended, not
ineligible). ``approved`` grants are not re-checked here: activation asks policy at window
start. What narrows obligations only (a smaller Modbus write range) still allows, changes
nothing here and applies from the next connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from policies.decision import Decision
from sessions.access.base import AccessCore
from sessions.access.lifecycle import eligibility_input
from sessions.db import session_scope
from sessions.identity import VENDOR
from sessions.models import Asset, Grant, GrantState, User

# Deny reasons that are the engine failing, not policy saying no (policies/opa.py,
# policies/embedded.py, policies/manager.py, and the default bundle without data.plant).
# The bundled policy's answer when data.plant is missing: the data, not the vendor, is wrong.
NO_PLANT_DATA = "emergency lockout assumed"


@dataclass(frozen=True)
class _Check:
    """One grant to re-check: a reason found here (no policy needed), else the policy input."""

    grant_id: str
    user_id: str
    asset: str
    document: dict[str, Any] | None
    reason: str | None = None


@dataclass
class RecheckReport:
    """What one re-check did: grant ids checked, revoked, and whose check failed."""

    trigger: str
    checked: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def engine_failure(decision: Decision) -> str | None:
    """The reason of a deny that reports the engine failing, else None."""
    if decision.allow:
        return None
    if decision.engine_failed:
        return decision.reasons[0]
    return next((r for r in decision.reasons if r.startswith(NO_PLANT_DATA)), None)


class GrantRecheck(AccessCore):
    """Ends active grants that policy (or the plant) no longer supports (see the module)."""

    async def recheck(self, trigger: str, *, data_problem: str | None = None) -> RecheckReport:
        """Re-check every active grant now; ``trigger`` names why (``plant change``,
        ``policy bundle <version>``, ``periodic``). ``data_problem``: the plant data could not
        be pushed to the engine, so no deny is trusted. Never revokes on an engine failure.
        Database errors propagate (the caller logs and retries)."""
        report = RecheckReport(trigger)
        checks = await asyncio.to_thread(self._collect, self._clock.now())
        for check in checks:
            report.checked.append(check.grant_id)
            if check.reason is not None:
                await self._revoke(check, check.reason, trigger, {})
                report.revoked.append(check.grant_id)
                continue
            assert check.document is not None
            decision = await self._ask(check.document, "system", f"recheck:{trigger}")
            if decision.allow:
                continue
            problem = engine_failure(decision) or data_problem
            if problem is not None:
                await asyncio.to_thread(
                    self._record, "grant.recheck_failed", "system", "error", check.grant_id,
                    trigger=trigger, problem=problem, asset=check.asset,
                )  # fmt: skip
                report.failed.append(check.grant_id)
                continue
            reason = "eligibility lost: " + "; ".join(decision.reasons)
            decided = {
                "reasons": list(decision.reasons),
                "input_hash": decision.input_hash,
                "bundle_version": decision.bundle_version,
            }
            if await self._revoke(check, reason, trigger, decided):
                report.revoked.append(check.grant_id)
        return report

    def _collect(self, now: datetime) -> list[_Check]:
        """The active grants inside their window, each with its policy input (worker thread)."""
        with session_scope(self._engine) as db:
            locked = self._locked(db)
            checks = []
            for grant in db.exec(
                select(Grant).where(Grant.state == GrantState.ACTIVE, col(Grant.ends_at) > now)
            ).all():
                user, asset = db.get(User, grant.user_id), db.get(Asset, grant.asset_id)
                if user is not None and locked and VENDOR in user.roles:
                    continue  # suspended by the lockout, which decides when it ends
                checks.append(_check(db, grant, user, asset, now))
            return checks

    async def _revoke(
        self, check: _Check, reason: str, trigger: str, decided: dict[str, Any]
    ) -> bool:
        done = await asyncio.to_thread(self._revoke_ineligible, check, reason, trigger, decided)
        if done:
            self._ended(check.grant_id, f"grant revoked: {reason}")
        return done

    def _revoke_ineligible(
        self, check: _Check, reason: str, trigger: str, decided: dict[str, Any]
    ) -> bool:
        """Revoke the grant if it is still active (an admin may have revoked it meanwhile)."""
        with self._tx() as db:
            grant = db.get(Grant, check.grant_id)
            if grant is None or grant.state != GrantState.ACTIVE:
                return False
            grant.state, grant.revoked_at = GrantState.REVOKED, self._clock.now()
            grant.revoked_by, grant.revoke_reason = "system", reason
            db.add(grant)
            self._record(
                "grant.revoked", "system", "ok", grant.id,
                reason=reason, trigger=trigger, asset=check.asset, **decided,
            )  # fmt: skip
            return True


def _check(
    db: Session, grant: Grant, user: User | None, asset: Asset | None, now: datetime
) -> _Check:
    name = asset.name if asset is not None else grant.asset_id
    if user is None or user.disabled:
        who = (user.name or user.sub) if user is not None else grant.user_id
        why = f"eligibility lost: user {who} is disabled"
        return _Check(grant.id, grant.user_id, name, None, why)
    if asset is None or asset.archived_at is not None:
        why = f"eligibility lost: asset {name} was archived"
        return _Check(grant.id, user.id, name, None, why)
    return _Check(grant.id, user.id, name, eligibility_input(db, grant, user, now))
