"""``/requests/{id}``: one access request in full, for its requester, its approvers and admins.

Shows what the approval queue shows (asset, zone and Purdue level, class, what it reaches,
window, reason, ticket, the policy's reasons), plus the state it is shown in everywhere
(:func:`sessions.request_state.shown_state`), the obligations of the decision at filing (or
"not recorded" for requests filed before they were stored), every approver's verdict, the
grant's obligations and, while it is pending, the MFA warning of :mod:`broker.http.mfa_notice`.
Who may look: the requester, approvers whose groups include the asset's ``owner_group``
(the queue's scope) and admins; anyone else gets 404 (no hint that the id exists), audited
as ``access.denied``.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.auth.auth import Principal
from broker.http.mfa_notice import mfa_warning
from broker.http.web import render, require
from broker.runtime.errors import BrokerError
from broker.runtime.people import people
from broker.services import services
from sessions.db import session_scope
from sessions.identity import ADMIN, APPROVER
from sessions.models import AccessRequest, AccessRequestState, Approval, Asset, Grant, User, Zone
from sessions.request_state import shown_state


def _may_see(principal: Principal, req: AccessRequest, owner_group: str) -> bool:
    if principal.has(ADMIN) or req.requester_id == principal.user_id:
        return True
    return principal.has(APPROVER) and owner_group in principal.groups


def _load(engine: Any, principal: Principal, request_id: str) -> dict[str, Any] | None:
    """The page's context, or None when absent or not the principal's to see."""
    with session_scope(engine) as db:
        req = db.get(AccessRequest, request_id)
        asset = db.get(Asset, req.asset_id) if req else None
        if req is None or asset is None or not _may_see(principal, req, asset.owner_group):
            return None
        zone, user = db.get(Zone, asset.zone_id), db.get(User, req.requester_id)
        level = zone.purdue_level if zone else None
        grant = db.exec(select(Grant).where(Grant.request_id == req.id)).first()
        approvals = list(
            db.exec(
                select(Approval)
                .where(Approval.request_id == req.id)
                .order_by(col(Approval.created_at))
            )
        )
        names = people(db, {req.requester_id, *(a.approver_id for a in approvals)})
        pending = req.state == AccessRequestState.PENDING
        for row in (req, asset, zone, grant, *approvals):
            if row is not None:
                db.expunge(row)
        return {
            "req": req,
            "asset": asset,
            "zone": zone,
            "level": level,
            "grant": grant,
            "approvals": approvals,
            "people": names,
            "state": shown_state(req.state, grant.state if grant else None),
            "mfa_warning": mfa_warning(user.amr, req.obligations) if pending and user else None,
        }


async def request_page(request: Request) -> Response:
    principal = await require(request)
    svc = services(request)
    request_id = request.path_params["id"]
    ctx = await run_in_threadpool(_load, svc.engine, principal, request_id)
    if ctx is None:
        await svc.record(
            request,
            "access.denied",
            actor=principal.user_id,
            outcome="deny",
            subject=f"request:{request_id[:64]}",
            details={"path": request.url.path[:200]},
        )
        raise BrokerError(f"no request {request_id[:64]} you may see", code="not_found", status=404)
    return render(request, "request.html", ctx)


routes = [Route("/requests/{id}", request_page, methods=["GET"])]
