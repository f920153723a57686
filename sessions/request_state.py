"""The one state a request is shown in, everywhere (web, API, CLI).

A request's own state machine ends at ``approved`` (sessions/access/); from then on its
grant carries the story (``approved`` → ``active`` → ``expired``, or ``revoked``: by a person,
or by the broker when policy no longer finds the grant eligible, at activation or mid-window,
:mod:`sessions.access.recheck`; ``revoke_reason`` says which). Listings
show :func:`shown_state`: the grant's state once there is a grant, else the request's own, so
a revoked grant's request never reads "approved".
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import Session, col, select

from sessions.models import AccessRequestState, Grant


def shown_state(request_state: str, grant_state: str | None) -> str:
    """``grant_state`` for an approved request with a grant; ``request_state`` otherwise."""
    if request_state == AccessRequestState.APPROVED and grant_state:
        return grant_state
    return request_state


def grants_by_request(db: Session, request_ids: Iterable[str]) -> dict[str, Grant]:
    """Request id -> its grant (a request has at most one), for the ids given."""
    ids = set(request_ids)
    if not ids:
        return {}
    return {g.request_id: g for g in db.exec(select(Grant).where(col(Grant.request_id).in_(ids)))}
