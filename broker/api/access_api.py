"""JSON API for access requests, approvals, grants and the vendor lockout (CLI and integrations).

Every endpoint needs a signed-in principal (bearer token or session cookie); the domain
service (:mod:`sessions.access`) asks policy and audits. Errors are JSON
``{"error": code, "message": ..., "reasons": [...]}`` with 400 (invalid), 403 (policy or role),
404 (unknown), 409 (state conflict).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.http.mfa_notice import mfa_warning
from broker.http.obligations_view import obligation_rows
from broker.http.request_input import add_duration, json_object, parse_time
from broker.http.web import require
from broker.runtime.errors import BadRequest
from broker.runtime.people import display_name
from broker.services import Services, services
from sessions.access.base import AccessDenied
from sessions.access.request_spec import RequestSpec
from sessions.authorizer import iso
from sessions.db import session_scope
from sessions.endpoints import endpoints_of
from sessions.errors import ConflictError, NotFoundError, SessionsError, ValidationError
from sessions.identity import ADMIN, APPROVER, VENDOR
from sessions.models import (
    AccessRequest,
    AccessRequestState,
    Asset,
    AssetEndpoint,
    Grant,
    MaintenanceWindow,
    User,
)
from sessions.request_state import grants_by_request, shown_state
from sessions.windows import add_window, list_windows, remove_window

_STATUS = {ValidationError: 400, AccessDenied: 403, NotFoundError: 404, ConflictError: 409}


def domain_error(exc: SessionsError) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
    body: dict[str, Any] = {"error": exc.code, "message": str(exc)}
    if isinstance(exc, AccessDenied):
        body["reasons"] = list(exc.reasons)
    return JSONResponse(body, status_code=status)


# broker/api/session_api.py imports the old name from here (until it imports json_object).
_json = json_object


def scope_json(req: AccessRequest, endpoints: list[AssetEndpoint]) -> dict[str, Any]:
    """What a request (and so its grant) reaches: ports, their endpoints, the SSH login."""
    return {
        "ports": list(req.ports),
        "login": req.login,
        "endpoints": [
            {"name": e.name, "host": e.host, "port": e.port, "protocol": e.protocol}
            for e in endpoints
            if e.port in req.ports
        ],
    }


def request_json(
    req: AccessRequest,
    asset: str,
    requester: str,
    endpoints: list[AssetEndpoint],
    grant: Grant | None = None,
    mfa_warning: str | None = None,
) -> dict[str, Any]:
    """``state`` is the state shown everywhere (the grant's once there is one,
    :func:`sessions.request_state.shown_state`); ``request_state`` the request's own."""
    return {
        "id": req.id,
        "asset": asset,
        "requester": requester,
        "requester_id": req.requester_id,
        "state": shown_state(req.state, grant.state if grant else None),
        "request_state": req.state,
        "grant_id": grant.id if grant else None,
        "mfa_warning": mfa_warning,
        "operation_class": req.operation_class,
        **scope_json(req, endpoints),
        "starts_at": iso(req.starts_at),
        "ends_at": iso(req.ends_at),
        "reason": req.reason,
        "ticket": req.ticket,
        "policy_reasons": list(req.decision_reasons),
        **filing_obligations_json(req),
    }


def filing_obligations_json(req: AccessRequest) -> dict[str, Any]:
    """The obligations of the decision that allowed filing (what approvers see), the bundle
    version that produced them, and their rows in words. ``obligations`` null: filed before
    they were recorded (migration 0010). Approval asks policy again (the grant keeps that
    decision's obligations) and every connection is decided again."""
    if req.obligations is None:
        text = ["Obligations at filing: not recorded (filed before Conduit stored them)"]
    else:
        text = [f"at filing: {k}: {v}" for k, v in obligation_rows(req.obligations, req.protocols)]
    return {
        "obligations": req.obligations,
        "policy_version": req.policy_version,
        "obligations_text": text,
    }


def grant_json(
    grant: Grant, asset: str, user: str, req: AccessRequest, endpoints: list[AssetEndpoint]
) -> dict[str, Any]:
    return {
        "id": grant.id,
        "request_id": grant.request_id,
        "asset": asset,
        "user": user,
        "user_id": grant.user_id,
        "state": grant.state,
        "operation_class": grant.operation_class,
        **scope_json(req, endpoints),
        "starts_at": iso(grant.starts_at),
        "ends_at": iso(grant.ends_at),
        "obligations": grant.obligations,
        "obligations_text": [
            f"{k}: {v}" for k, v in obligation_rows(grant.obligations, req.protocols)
        ],
        "revoke_reason": grant.revoke_reason,
    }


def _login(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("login must be a string (the SSH login on the asset)")
    return value


async def create_request(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    svc = services(request)
    body = await json_object(request)
    now = svc.clock.now()
    starts = parse_time(str(body["starts_at"]), "starts_at") if body.get("starts_at") else now
    if body.get("ends_at"):
        ends = parse_time(str(body["ends_at"]), "ends_at")
    else:
        ends = add_duration(starts, str(body.get("duration", "")))
    ports = body.get("ports") or []
    if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise BadRequest("ports must be a list of port numbers")
    spec = RequestSpec(
        asset=str(body.get("asset", "")),
        operation_class=str(body.get("operation_class", "read_only")),
        starts_at=starts,
        ends_at=ends,
        reason=str(body.get("reason", "")),
        ticket=str(body["ticket"]) if body.get("ticket") else None,
        ports=ports,
        login=_login(body.get("login")),
        maintenance_window_only=bool(body.get("maintenance_window_only", False)),
    )
    try:
        row = await svc.access.request(principal.user_id, spec, auth=principal.auth)
    except SessionsError as exc:
        return domain_error(exc)

    def _endpoints() -> list[AssetEndpoint]:
        with session_scope(svc.engine) as db:
            return endpoints_of(db, row.asset_id)

    endpoints = await run_in_threadpool(_endpoints)
    return JSONResponse(
        request_json(row, spec.asset, principal.name or principal.email, endpoints), status_code=201
    )


def _list(
    svc: Services,
    principal_id: str,
    groups: tuple[str, ...],
    roles: tuple[str, ...],
    params: dict[str, str],
    what: str,
) -> list[dict[str, Any]]:
    model = AccessRequest if what == "requests" else Grant
    owner = col(AccessRequest.requester_id) if what == "requests" else col(Grant.user_id)
    with session_scope(svc.engine) as db:
        query = (
            select(model, Asset, User, AccessRequest)
            .join(Asset, col(Asset.id) == col(model.asset_id))
            .join(User, col(User.id) == owner)
        )
        if what == "grants":
            query = query.join(AccessRequest, col(AccessRequest.id) == col(Grant.request_id))
        if params.get("mine") in {"1", "true"} or not (ADMIN in roles or APPROVER in roles):
            query = query.where(owner == principal_id)
        elif ADMIN not in roles:
            query = query.where(col(Asset.owner_group).in_(groups))
        if params.get("state") and what == "grants":
            query = query.where(col(model.state) == params["state"])
        if params.get("asset"):
            query = query.where(Asset.name == params["asset"])
        rows = db.exec(query.order_by(col(model.created_at).desc()).limit(500)).all()
        endpoints: dict[str, list[AssetEndpoint]] = {}
        for ep in db.exec(
            select(AssetEndpoint).where(
                col(AssetEndpoint.asset_id).in_({req.asset_id for *_, req in rows})
            )
        ):
            endpoints.setdefault(ep.asset_id, []).append(ep)
        if what == "requests":
            grants = grants_by_request(db, [req.id for *_, req in rows])
            out = [
                request_json(
                    req,
                    asset.name,
                    display_name(user),
                    endpoints.get(req.asset_id, []),
                    grants.get(req.id),
                    mfa_warning(user.amr, req.obligations)
                    if req.state == AccessRequestState.PENDING
                    else None,
                )
                for _, asset, user, req in rows
            ]
            # the shown state (the grant's once there is one) is what the filter means
            return [r for r in out if params.get("state") in (None, "", r["state"])]
        return [
            grant_json(grant, asset.name, display_name(user), req, endpoints.get(req.asset_id, []))  # type: ignore[arg-type]
            for grant, asset, user, req in rows
        ]


async def list_requests(request: Request) -> Response:
    p = await require(request)
    data = await run_in_threadpool(
        _list,
        services(request),
        p.user_id,
        p.groups,
        p.roles,
        dict(request.query_params),
        "requests",
    )
    return JSONResponse(data)


async def list_grants(request: Request) -> Response:
    p = await require(request)
    data = await run_in_threadpool(
        _list, services(request), p.user_id, p.groups, p.roles, dict(request.query_params), "grants"
    )
    return JSONResponse(data)


async def approve(request: Request) -> Response:
    principal = await require(request, APPROVER, ADMIN)
    try:
        grant = await services(request).access.approve(
            request.path_params["id"], principal.user_id, auth=principal.auth
        )
    except SessionsError as exc:
        return domain_error(exc)
    return JSONResponse(
        {
            "approved": True,
            "grant_id": grant.id if grant else None,
            "grant_state": grant.state if grant else None,
        }
    )


async def _state_change(request: Request, change: Any, *roles: str, reason: bool) -> Response:
    """Run ``change(id, actor[, reason])`` off the loop; answer ``{"id", "state"}`` or the error."""
    principal = await require(request, *roles)
    args: list[str] = [request.path_params["id"], principal.user_id]
    if reason:
        args.append(str((await json_object(request)).get("reason", "")))
    try:
        row = await run_in_threadpool(change, *args)
    except SessionsError as exc:
        return domain_error(exc)
    return JSONResponse({"id": row.id, "state": row.state})


async def deny(request: Request) -> Response:
    return await _state_change(request, services(request).access.deny, APPROVER, ADMIN, reason=True)


async def cancel(request: Request) -> Response:
    return await _state_change(request, services(request).access.cancel, reason=False)


async def revoke(request: Request) -> Response:
    return await _state_change(
        request, services(request).access.revoke, APPROVER, ADMIN, reason=True
    )


async def lockout(request: Request) -> Response:
    svc = services(request)
    if request.method == "GET":
        await require(request)
        return JSONResponse({"vendor_lockout": await run_in_threadpool(svc.access.lockout_active)})
    principal = await require(request, ADMIN)
    body = await json_object(request)
    if not isinstance(body.get("on"), bool):
        raise BadRequest("'on' must be true or false")
    reason = str(body.get("reason", "")).strip()
    if not reason:
        raise BadRequest("a reason is required to change the vendor lockout")
    count = await run_in_threadpool(svc.access.set_lockout, body["on"], principal.user_id, reason)
    await svc.refresh_policy_data()
    key = "suspended_grants" if body["on"] else "resumed_grants"
    return JSONResponse({"vendor_lockout": body["on"], key: count})


routes = [
    Route("/api/requests", create_request, methods=["POST"]),
    Route("/api/requests", list_requests, methods=["GET"]),
    Route("/api/requests/{id}/approve", approve, methods=["POST"]),
    Route("/api/requests/{id}/deny", deny, methods=["POST"]),
    Route("/api/requests/{id}/cancel", cancel, methods=["POST"]),
    Route("/api/grants", list_grants, methods=["GET"]),
    Route("/api/grants/{id}/revoke", revoke, methods=["POST"]),
    Route("/api/lockout", lockout, methods=["GET", "POST"]),
]


def _window_json(window: MaintenanceWindow, site: str) -> dict[str, Any]:
    return {
        "id": window.id,
        "site": site,
        "days": window.days,
        "start": window.start,
        "end": window.end,
        "description": window.description,
    }


async def windows(request: Request) -> Response:
    """GET: every site's maintenance windows; POST (admin): add one."""
    svc = services(request)
    if request.method == "GET":
        await require(request)

        def _all() -> list[dict[str, Any]]:
            with session_scope(svc.engine) as db:
                return [_window_json(w, s) for w, s in list_windows(db)]

        return JSONResponse(await run_in_threadpool(_all))
    principal = await require(request, ADMIN)
    body = await json_object(request)
    days = body.get("days")
    if not isinstance(days, list):
        raise BadRequest("days must be a list such as ['tue', 'thu']")

    def _add() -> dict[str, Any]:
        with session_scope(svc.engine, write=True) as db:
            window = add_window(
                db,
                str(body.get("site", "")),
                [str(d) for d in days],
                str(body.get("start", "")),
                str(body.get("end", "")),
                str(body.get("description", "")),
            )
            return _window_json(window, str(body.get("site")))

    try:
        created = await run_in_threadpool(_add)
    except SessionsError as exc:
        return domain_error(exc)
    await svc.record(
        request,
        "plant.window_added",
        actor=principal.user_id,
        outcome="ok",
        subject=created["id"],
        details={"before": None, "after": created},
    )
    await svc.refresh_policy_data()
    return JSONResponse(created, status_code=201)


async def remove_window_route(request: Request) -> Response:
    principal = await require(request, ADMIN)
    svc = services(request)

    def _remove() -> dict[str, Any] | None:
        with session_scope(svc.engine) as db:
            window_id = request.path_params["id"]
            before = next(
                (_window_json(w, s) for w, s in list_windows(db) if w.id == window_id), None
            )
            remove_window(db, window_id)
            return before

    try:
        before = await run_in_threadpool(_remove)
    except SessionsError as exc:
        return domain_error(exc)
    await svc.record(
        request,
        "plant.window_removed",
        actor=principal.user_id,
        outcome="ok",
        subject=request.path_params["id"],
        details={"before": before, "after": None},
    )
    await svc.refresh_policy_data()
    return JSONResponse({"removed": request.path_params["id"]})


routes += [
    Route("/api/windows", windows, methods=["GET", "POST"]),
    Route("/api/windows/{id}", remove_window_route, methods=["DELETE"]),
]
