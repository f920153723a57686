"""Web pages for access: a vendor's requests and grants, the approver queue, the grant list.

Server-rendered forms that call :class:`sessions.access.AccessService`, which asks policy and
audits every step. A refused action re-renders its page with the service's message (and the
policy's reasons) and a 400/403/404/409 status; a successful one redirects (303) back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.auth.auth import Principal
from broker.http.mfa_notice import mfa_warning
from broker.http.web import check_csrf, render, require
from broker.runtime.people import people, person_of
from broker.services import services
from broker.web.vendor_scope import (
    GrantView,
    allowances,
    connect_lines,
    covered_assets,
    covering,
    describe_contract,
)
from sessions.access.base import LIVE_GRANT_STATES, AccessDenied
from sessions.access.request_spec import RequestSpec
from sessions.access.service import AccessService
from sessions.db import session_scope
from sessions.endpoints import endpoints_of
from sessions.errors import ConflictError, NotFoundError, SessionsError, ValidationError
from sessions.identity import ADMIN, APPROVER, VENDOR
from sessions.models import (
    AccessRequest,
    AccessRequestState,
    Approval,
    ApprovalVerdict,
    Asset,
    AssetEndpoint,
    Grant,
    GrantState,
    OperationClass,
    PlantFlag,
    User,
    VendorContract,
    VendorOrg,
    Zone,
)
from sessions.policy_data import LOCKOUT_FLAG
from sessions.request_state import shown_state

DURATIONS = ((30, "30 min"), (60, "1 h"), (120, "2 h"), (240, "4 h"), (480, "8 h"))
_NEEDS = re.compile(r"needs (\d+) approval")
_STATUS = {ValidationError: 400, AccessDenied: 403, NotFoundError: 404, ConflictError: 409}
Rows = list[dict[str, Any]]


def _status(exc: SessionsError) -> int:
    return next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)


def _failure(exc: SessionsError) -> dict[str, Any]:
    reasons = list(exc.reasons) if isinstance(exc, AccessDenied) else []
    return {"error": exc.message, "reasons": reasons}


def _done(path: str, message: str) -> Response:
    return RedirectResponse(f"{path}?{urlencode({'message': message})}", status_code=303)


def _assets_in_scope(principal: Principal) -> Any:
    """A filter on Asset for what an approver owns (admins: everything)."""
    return sa.true() if principal.has(ADMIN) else col(Asset.owner_group).in_(principal.groups)


# ---- vendor: my access ----------------------------------------------------------------------


def _parse_spec(form: dict[str, Any]) -> RequestSpec:
    try:
        starts = datetime.fromisoformat(str(form.get("starts_at", "")))
        minutes = int(str(form.get("duration", "")))
    except ValueError as exc:
        raise ValidationError("start must be a date and time (UTC) and duration minutes") from exc
    if minutes not in dict(DURATIONS):
        raise ValidationError("pick one of the offered durations")
    starts = starts.replace(tzinfo=UTC) if starts.tzinfo is None else starts.astimezone(UTC)
    try:
        ends = starts + timedelta(minutes=minutes)
    except OverflowError:
        raise ValidationError("the window would end after the year 9999") from None
    return RequestSpec(
        asset=str(form.get("asset", "")),
        operation_class=str(form.get("operation_class", "")),
        starts_at=starts,
        ends_at=ends,
        reason=str(form.get("reason", "")),
        ticket=str(form.get("ticket", "")).strip() or None,
        maintenance_window_only=bool(form.get("maintenance_window_only")),
        login=str(form.get("login", "")).strip() or None,
        ports=_ports(form.get("ports", [])),
    )


def _ports(values: list[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValidationError("ports must be port numbers") from None


def _reaches(db: Session, rows: list[AccessRequest]) -> dict[str, list[str]]:
    """Request id -> what it reaches ("modbus 127.0.0.1:5020", "ssh 127.0.0.1:22 as maint")."""
    endpoints: dict[str, list[AssetEndpoint]] = {}
    for ep in db.exec(
        select(AssetEndpoint).where(col(AssetEndpoint.asset_id).in_({r.asset_id for r in rows}))
    ):
        endpoints.setdefault(ep.asset_id, []).append(ep)
    out: dict[str, list[str]] = {}
    for req in rows:
        found = [e for e in endpoints.get(req.asset_id, []) if e.port in req.ports]
        out[req.id] = [
            f"{e.protocol} {e.host}:{e.port}"
            + (f" as {req.login}" if e.protocol == "ssh" and req.login else "")
            for e in sorted(found, key=lambda e: e.port)
        ] + [
            f"port {p} (no longer declared)" for p in req.ports if p not in {e.port for e in found}
        ]
    return out


def _vendor_data(engine: Any, principal: Principal, now: datetime, front: Any) -> dict[str, Any]:
    user_id = principal.user_id
    with session_scope(engine) as db:
        user = db.get(User, user_id)
        offers = covered_assets(
            db, user.vendor_org_id if user else None, now, everything=principal.has(ADMIN)
        )
        names = {a.id: a.name for a in db.exec(select(Asset)).all()}
        requests = db.exec(
            select(AccessRequest)
            .where(AccessRequest.requester_id == user_id)
            .order_by(col(AccessRequest.created_at).desc())
        ).all()
        denials = {
            a.request_id: a.reason
            for a in db.exec(
                select(Approval).where(
                    col(Approval.request_id).in_([r.id for r in requests]),
                    Approval.verdict == ApprovalVerdict.DENY,
                )
            ).all()
        }
        grants = db.exec(
            select(Grant).where(Grant.user_id == user_id).order_by(col(Grant.starts_at).desc())
        ).all()
        reaches = _reaches(db, list(requests))
        by_id = {r.id: r for r in requests}
        grant_of = {g.request_id: g for g in grants}
        ssh_host, ssh_port = front if front else ("", None)
        grant_rows = []
        for g in grants:
            req = by_id.get(g.request_id)
            ports, login = (list(req.ports), req.login) if req else ([], None)
            view = GrantView(g, names.get(g.asset_id, "?"), ports, login)
            eps = endpoints_of(db, g.asset_id)
            grant_rows.append(
                {
                    "grant": g,
                    "asset": view.asset,
                    "reaches": reaches.get(g.request_id, []),
                    "connect": connect_lines(view, eps, ssh_host, ssh_port)
                    if g.state in LIVE_GRANT_STATES
                    else [],
                    "allows": allowances(view, eps),
                    "obligations": g.obligations,
                    "protocols": list(req.protocols) if req else None,
                }
            )
        return {
            "offers": offers,
            "requests": [
                {
                    "req": r,
                    "asset": names.get(r.asset_id, "?"),
                    "denial": denials.get(r.id),
                    "reaches": reaches.get(r.id, []),
                    "state": shown_state(r.state, _state(grant_of.get(r.id))),
                }
                for r in requests
            ],
            "grants": grant_rows,
        }


async def _vendor_page(
    request: Request,
    principal: Principal,
    form: dict[str, Any] | None = None,
    failure: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    svc = services(request)
    host = svc.settings.ssh.public_host or svc.settings.ssh.listen_host
    front = (host, svc.front.port) if svc.front is not None else None
    ctx = await run_in_threadpool(_vendor_data, svc.engine, principal, svc.clock.now(), front)
    defaults = {
        "operation_class": OperationClass.READ_ONLY,
        "starts_at": svc.clock.now().strftime("%Y-%m-%dT%H:%M"),
        "duration": "60",
    }
    form = {**defaults, **(form or {})}
    offers = ctx["offers"]
    wanted = str(form.get("asset") or request.query_params.get("asset", ""))
    chosen = next((o for o in offers if o.name == wanted), offers[0] if offers else None)
    ctx.update(
        suspended=await run_in_threadpool(svc.access.lockout_active),
        form=form,
        chosen=chosen,
        ports=set(form.get("ports", [])),
        durations=DURATIONS,
        message=request.query_params.get("message"),
        **(failure or {}),
    )
    return render(request, "vendor.html", ctx, status=status)


async def vendor_home(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    return await _vendor_page(request, principal)


async def create_request(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    form = await check_csrf(request, principal)
    form["ports"] = [str(p) for p in (await request.form()).getlist("ports")]  # cached by starlette
    try:
        spec = _parse_spec(form)
        created = await services(request).access.request(
            principal.user_id, spec, auth=principal.auth
        )
    except SessionsError as exc:
        return await _vendor_page(request, principal, form, _failure(exc), _status(exc))
    return _done("/vendor", f"request for {created.operation_class} on {spec.asset} filed")


async def cancel_request(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    await check_csrf(request, principal)
    request_id = request.path_params["id"]
    try:
        await run_in_threadpool(services(request).access.cancel, request_id, principal.user_id)
    except SessionsError as exc:
        return await _vendor_page(request, principal, None, _failure(exc), _status(exc))
    return _done("/vendor", "request cancelled")


# ---- approver queue -------------------------------------------------------------------------


def _state(grant: Grant | None) -> str | None:
    return grant.state if grant is not None else None


def _vendor_of(db: Session, requester: str, asset_id: str, now: datetime) -> dict[str, Any]:
    """The requester's vendor organisation and its contracts covering the asset now."""
    user, asset = db.get(User, requester), db.get(Asset, asset_id)
    org = db.get(VendorOrg, user.vendor_org_id) if user and user.vendor_org_id else None
    if org is None or asset is None:
        return {"org": None, "contracts": []}
    contracts = db.exec(select(VendorContract).where(VendorContract.vendor_org_id == org.id)).all()
    cover = covering(list(contracts), asset, now)
    return {"org": f"{org.name} ({org.slug})", "contracts": [describe_contract(c) for c in cover]}


def _queue(engine: Any, principal: Principal, now: datetime) -> Rows:
    with session_scope(engine) as db:
        rows = db.exec(
            select(AccessRequest, Asset.name, Zone.name, Zone.purdue_level)
            .join(Asset, col(Asset.id) == col(AccessRequest.asset_id))
            .join(Zone, col(Zone.id) == col(Asset.zone_id))
            .where(AccessRequest.state == AccessRequestState.PENDING, _assets_in_scope(principal))
            .order_by(col(AccessRequest.starts_at))
        ).all()
        reaches = _reaches(db, [r for r, *_ in rows])
        approvals = db.exec(
            select(Approval.request_id).where(
                col(Approval.request_id).in_([r.id for r, *_ in rows]),
                Approval.verdict == ApprovalVerdict.APPROVE,
            )
        ).all()
        out = []
        requesters = {r.requester_id for r, *_ in rows}
        users = {u.id: u for u in db.exec(select(User).where(col(User.id).in_(requesters)))}
        for req, asset, zone, level in rows:
            user = users[req.requester_id]
            needed = [int(m[1]) for m in map(_NEEDS.search, req.decision_reasons) if m]
            out.append(
                {
                    "req": req,
                    "requester": person_of(user),
                    "mfa_warning": mfa_warning(user.amr, req.obligations),
                    "asset": asset,
                    "zone": zone,
                    "level": level,
                    "approved": sum(1 for a in approvals if a == req.id),
                    "required": needed[0] if needed else None,
                    "reaches": reaches.get(req.id, []),
                    **_vendor_of(db, req.requester_id, req.asset_id, now),
                }
            )
        return out


async def _approvals_page(
    request: Request, principal: Principal, failure: dict[str, Any] | None = None, status: int = 200
) -> Response:
    svc = services(request)
    rows = await run_in_threadpool(_queue, svc.engine, principal, svc.clock.now())
    ctx = {"rows": rows, "message": request.query_params.get("message"), **(failure or {})}
    return render(request, "approvals.html", ctx, status=status)


async def approvals(request: Request) -> Response:
    principal = await require(request, APPROVER, ADMIN)
    return await _approvals_page(request, principal)


async def approve(request: Request) -> Response:
    principal = await require(request, APPROVER, ADMIN)
    await check_csrf(request, principal)
    try:
        grant = await services(request).access.approve(
            request.path_params["id"], principal.user_id, auth=principal.auth
        )
    except SessionsError as exc:
        return await _approvals_page(request, principal, _failure(exc), _status(exc))
    done = "approved: grant created" if grant else "approval recorded; more approvals needed"
    return _done("/approvals", done)


async def deny(request: Request) -> Response:
    principal = await require(request, APPROVER, ADMIN)
    form = await check_csrf(request, principal)
    access = services(request).access
    try:
        await run_in_threadpool(
            access.deny, request.path_params["id"], principal.user_id, str(form.get("reason", ""))
        )
    except SessionsError as exc:
        return await _approvals_page(request, principal, _failure(exc), _status(exc))
    return _done("/approvals", "request denied")


# ---- grants and requests overview, revoke, lockout ------------------------------------------


def _overview(
    engine: Any, principal: Principal, filters: dict[str, str], now: datetime
) -> dict[str, Any]:
    with session_scope(engine) as db:
        assets = {
            a.id: a.name for a in db.exec(select(Asset).where(_assets_in_scope(principal))).all()
        }
        ids = [i for i, n in assets.items() if filters["asset"] in ("", n)]
        grants = db.exec(
            select(Grant).where(col(Grant.asset_id).in_(ids)).order_by(col(Grant.starts_at).desc())
        ).all()
        requests = db.exec(
            select(AccessRequest)
            .where(col(AccessRequest.asset_id).in_(ids))
            .order_by(col(AccessRequest.created_at).desc())
        ).all()
        users = people(db, {g.user_id for g in grants} | {r.requester_id for r in requests})
        grant_of = {g.request_id: g for g in grants}
        protocols = {r.id: list(r.protocols) for r in requests}
        shown = {r.id: shown_state(r.state, _state(grant_of.get(r.id))) for r in requests}
        reaches = _reaches(db, list(requests))  # every grant's request is among them (same assets)

        def keep(state: str, user_id: str) -> bool:
            user = filters["user"].lower()
            name = users[user_id].name if user_id in users else ""
            return filters["state"] in ("", state) and (not user or user in name.lower())

        flag = db.get(PlantFlag, LOCKOUT_FLAG)
        on = bool(flag and flag.value.get("vendors"))
        suspended = {g.id for g in AccessService.vendor_grants(db, now)} if on else set()
        return {
            "grants": [
                {
                    "grant": g,
                    "asset": assets[g.asset_id],
                    "user": users.get(g.user_id),
                    "reaches": reaches.get(g.request_id, []),
                    "protocols": protocols.get(g.request_id),
                    "suspended": g.id in suspended,
                }
                for g in grants
                if keep(g.state, g.user_id)
            ],
            "requests": [
                {
                    "req": r,
                    "asset": assets[r.asset_id],
                    "user": users.get(r.requester_id),
                    "reaches": reaches.get(r.id, []),
                    "state": shown[r.id],
                }
                for r in requests
                if keep(shown[r.id], r.requester_id)
            ],
            "asset_names": sorted(assets.values()),
            "lockout": flag if flag and flag.value.get("vendors") else None,
        }


async def _grants_page(
    request: Request, principal: Principal, failure: dict[str, Any] | None = None, status: int = 200
) -> Response:
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("state", "asset", "user")}
    svc = services(request)
    ctx = await run_in_threadpool(_overview, svc.engine, principal, filters, svc.clock.now())
    ctx.update(
        filters=filters,
        states=sorted(set(GrantState.ALL) | set(AccessRequestState.ALL)),
        live=LIVE_GRANT_STATES,
        message=q.get("message"),
        **(failure or {}),
    )
    return render(request, "access_grants.html", ctx, status=status)


async def grants(request: Request) -> Response:
    principal = await require(request, ADMIN, APPROVER)
    return await _grants_page(request, principal)


async def revoke(request: Request) -> Response:
    principal = await require(request, ADMIN, APPROVER)
    form = await check_csrf(request, principal)
    access = services(request).access
    try:
        await run_in_threadpool(
            access.revoke, request.path_params["id"], principal.user_id, str(form.get("reason", ""))
        )
    except SessionsError as exc:
        return await _grants_page(request, principal, _failure(exc), _status(exc))
    return _done("/admin/grants", "grant revoked")


async def lockout(request: Request) -> Response:
    principal = await require(request, ADMIN)
    form = await check_csrf(request, principal)
    svc = services(request)
    on, reason = str(form.get("on", "")) == "1", str(form.get("reason", "")).strip()
    if not reason:
        failure = {"error": "a reason is required to change the vendor lockout", "reasons": []}
        return await _grants_page(request, principal, failure, 400)
    if str(form.get("confirm", "")) != "1":  # first the confirmation step (no script needed)
        affected = await run_in_threadpool(svc.access.vendor_grants_live)
        confirm = {"lockout_confirm": {"on": on, "reason": reason, "grants": affected}}
        return await _grants_page(request, principal, confirm)
    count = await run_in_threadpool(svc.access.set_lockout, on, principal.user_id, reason)
    await svc.refresh_policy_data()
    done = (
        f"vendor access suspended; {count} grant(s) suspended, their live sessions cut"
        if on
        else f"vendor access enabled; {count} grant(s) resumed"
    )
    return _done("/admin/grants", done)


routes = [
    Route("/vendor", vendor_home),
    Route("/vendor/requests", create_request, methods=["POST"]),
    Route("/vendor/requests/{id}/cancel", cancel_request, methods=["POST"]),
    Route("/approvals", approvals),
    Route("/approvals/{id}/approve", approve, methods=["POST"]),
    Route("/approvals/{id}/deny", deny, methods=["POST"]),
    Route("/admin/grants", grants),
    Route("/admin/grants/{id}/revoke", revoke, methods=["POST"]),
    Route("/admin/lockout", lockout, methods=["POST"]),
]
