"""Who sees which sessions and recordings: one rule for the web pages, the API and the CLI.

* admins and security reviewers: everything;
* approvers: their own, and those on assets whose ``owner_group`` is one of their groups
  (the same scope as their approval queue, ``broker/web/access_pages.py``);
* everyone else (vendors): their own only.

Ending a live session stays admin-only (``POST /api/sessions/{id}/kill``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from broker.auth.auth import Principal
from broker.runtime.live_sessions import LiveSession
from broker.runtime.people import people
from sessions.db import session_scope
from sessions.identity import ADMIN, APPROVER, SECURITY
from sessions.models import AccessRequest, Asset, Grant, MaintenanceSession


def sees_all(principal: Principal) -> bool:
    return principal.has(ADMIN, SECURITY)


def owns_assets(principal: Principal) -> bool:
    """Whether the principal sees other people's sessions on the assets its groups own."""
    return principal.has(APPROVER) and bool(principal.groups)


def session_filter(principal: Principal) -> Any:
    """A WHERE clause on MaintenanceSession joined with Asset for what ``principal`` sees."""
    if sees_all(principal):
        return sa.true()
    own = col(MaintenanceSession.user_id) == principal.user_id
    if owns_assets(principal):
        return sa.or_(own, col(Asset.owner_group).in_(principal.groups))
    return own


def may_see(principal: Principal, user_id: str, owner_group: str | None) -> bool:
    """The same rule for one session or recording."""
    return (
        sees_all(principal)
        or user_id == principal.user_id
        or (owns_assets(principal) and owner_group in principal.groups)
    )


def live_rows(engine: Any, principal: Principal, live: list[LiveSession]) -> list[dict[str, Any]]:
    """The live sessions ``principal`` may see, as ``LiveSession.as_dict()`` with ``user`` the
    display name, ``user_id`` and the grant's ``obligations`` (None: standing access) added
    (runs queries: call it off the event loop)."""
    with session_scope(engine) as db:
        groups = dict(db.exec(select(Asset.name, Asset.owner_group)).all())
        shown = [s for s in live if may_see(principal, s.user_id, groups.get(s.asset))]
        names = people(db, {s.user_id for s in shown})
        grant_ids = {s.grant_id for s in shown if s.grant_id}
        found = db.exec(
            select(Grant, AccessRequest.protocols)
            .join(AccessRequest, col(AccessRequest.id) == col(Grant.request_id))
            .where(col(Grant.id).in_(grant_ids))
        ).all()
        obligations = {g.id: (g.obligations, list(protocols)) for g, protocols in found}
    return [
        {
            **s.as_dict(),
            "user": names[s.user_id].name,
            "user_id": s.user_id,
            "obligations": obligations.get(s.grant_id or "", (None, None))[0],
            "protocols": obligations.get(s.grant_id or "", (None, None))[1],
        }
        for s in shown
    ]
