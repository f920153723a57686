"""Policy administration: active bundle status, reload, and the what-if simulator (UI + API).

The simulator asks the live engine exactly what the broker would ask: the input is built by
:func:`sessions.authorizer.build_input` from a real user (or pasted claims mapped to roles like
a sign-in would), a real asset, an action and a moment. Simulated decisions are audited with
purpose ``what-if`` and never change anything.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from broker.http.web import check_csrf, render, require
from broker.runtime.errors import BadRequest
from broker.services import Services, services
from broker.web.policy_view import TestCache, bundle_view, data_view
from policies.decision import Decision
from policies.errors import BundleError
from sessions.authorizer import ACTION_KINDS, build_input, iso, user_document
from sessions.credentials import AuthContext
from sessions.db import session_scope
from sessions.endpoints import endpoints_of, logins_for, ssh_endpoint
from sessions.identity import ADMIN, map_roles
from sessions.models import Asset, OperationClass, User

CLAIM_FIELDS = ("sub", "email", "name", "groups", "amr", "acr", "vendor_org")


def _claims_user(svc: Services, raw: str) -> dict[str, Any]:
    try:
        claims = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"claims are not valid JSON: {exc}") from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        raise BadRequest("claims must be a JSON object with at least a string 'sub'")
    groups = claims.get("groups", [])
    amr = claims.get("amr", [])
    if not isinstance(groups, list) or not isinstance(amr, list):
        raise BadRequest("claims 'groups' and 'amr' must be lists")
    return {
        "sub": claims["sub"],
        "email": str(claims.get("email", "")),
        "name": str(claims.get("name", claims["sub"])),
        "groups": [str(g) for g in groups],
        "roles": map_roles([str(g) for g in groups], svc.settings.roles.as_mapping()),
        "amr": [str(a) for a in amr],
        "acr": claims.get("acr"),
        "idp": svc.settings.oidc.issuer,
        "vendor_org": claims.get("vendor_org"),
    }


def _parse_at(value: str | None, now: datetime) -> datetime:
    if not value:
        return now
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"time {value!r} is not ISO-8601 (YYYY-MM-DDTHH:MM)") from exc
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _build(svc: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The input document for a what-if question; raises BadRequest on bad parameters."""
    kind = params.get("kind")
    if kind not in ACTION_KINDS:
        raise BadRequest(f"action kind must be one of {', '.join(ACTION_KINDS)}")
    op_class = params.get("operation_class") or OperationClass.READ_ONLY
    if op_class not in OperationClass.ALL:
        raise BadRequest(f"operation class must be one of {', '.join(OperationClass.ALL)}")
    port_raw = params.get("port")
    try:
        port = int(port_raw) if port_raw not in (None, "") else None
    except (TypeError, ValueError) as exc:
        raise BadRequest("port must be a number") from exc
    if port is not None and not 0 < port < 65536:
        raise BadRequest("port must be between 1 and 65535")
    at = _parse_at(params.get("at"), svc.clock.now())
    with session_scope(svc.engine) as db:
        asset = db.exec(select(Asset).where(Asset.name == params.get("asset"))).first()
        if asset is None:
            raise BadRequest(f"unknown asset {params.get('asset')!r}")
        if params.get("claims"):
            user = _claims_user(svc, str(params["claims"]))
        else:
            row = db.get(User, str(params.get("user_id", "")))
            if row is None:
                raise BadRequest("pick a user or paste claims")
            # A simulation: the user's latest sign-in stands in for a credential.
            user = user_document(db, row, AuthContext(tuple(row.amr)))
        # The question names an endpoint by port (ssh/sftp: the asset's SSH endpoint by
        # default) and a login (default: the only one declared for the class).
        endpoints = endpoints_of(db, asset.id)
        ssh = ssh_endpoint(endpoints)
        if port is None and kind in ("ssh", "sftp", "web_terminal") and ssh is not None:
            port = ssh.port
        declared = [e.port for e in endpoints]
        ports = [port] if port is not None else declared
        logins = logins_for([e for e in endpoints if e.port in ports], op_class)
        login = str(params.get("login") or "") or (logins[0] if len(logins) == 1 else None)
        protocol = next((e.protocol for e in endpoints if e.port == port), None)
        grant = None
        if params.get("with_grant"):
            grant = {
                "id": "what-if",
                "requester": user["sub"],
                "approvers": [],
                "starts_at": iso(at - timedelta(hours=1)),
                "ends_at": iso(at + timedelta(hours=1)),
                "ticket": None,
                "state": "approved",
                "maintenance_window_only": False,
                "operation_class": op_class,
                "ports": ports,
                "login": login,
            }
        return build_input(
            db,
            user=user,
            asset=asset,
            action={
                "kind": kind,
                "port": port,
                "ports": ports if kind in ("request", "approve") else [],
                "protocol": protocol,
                "operation_class": op_class,
                "login": login,
            },
            grant=grant,
            now=at,
            agent_online=bool(params.get("agent_online", True)),
        )


async def _simulate(
    request: Request, params: dict[str, Any], actor: str
) -> tuple[Decision, dict[str, Any]]:
    svc = services(request)
    document = await run_in_threadpool(_build, svc, params)
    decision = await svc.authorizer.decide(document, actor=actor, purpose="what-if")
    return decision, document


def _choices(svc: Services) -> dict[str, Any]:
    with session_scope(svc.engine) as db:
        users = [
            (u.id, f"{u.name} <{u.email}>")
            for u in db.exec(select(User).order_by(col(User.name))).all()
        ]
        assets = [a.name for a in db.exec(select(Asset).order_by(col(Asset.name))).all()]
    return {"users": users, "assets": assets, "kinds": ACTION_KINDS, "classes": OperationClass.ALL}


async def whatif_page(request: Request) -> Response:
    principal = await require(request, ADMIN)
    svc = services(request)
    ctx: dict[str, Any] = await run_in_threadpool(_choices, svc)
    ctx.update(
        form={
            "kind": "ssh",
            "operation_class": "read_only",
            "agent_online": "1",
            "at": svc.clock.now().strftime("%Y-%m-%dT%H:%M"),
        },
        decision=None,
        error=None,
        document=None,
        version=svc.policy_version(),
    )
    if request.method == "POST":
        form = await check_csrf(request, principal)
        ctx["form"] = form
        try:
            decision, document = await _simulate(request, form, principal.user_id)
            ctx.update(decision=decision, document=json.dumps(document, indent=2))
        except BadRequest as exc:
            ctx["error"] = exc.message
    return render(request, "whatif.html", ctx, status=400 if ctx["error"] else 200)


async def whatif_api(request: Request) -> Response:
    principal = await require(request, ADMIN)
    try:
        params = await request.json()
    except ValueError as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(params, dict):
        raise BadRequest("request body must be a JSON object")
    action = params.get("action")
    flat = {**params, **(action if isinstance(action, dict) else {})}
    if isinstance(flat.get("claims"), dict):
        flat["claims"] = json.dumps(flat["claims"])
    decision, document = await _simulate(request, flat, principal.user_id)
    return JSONResponse({"decision": decision.as_dict(), "input": document})


def _status(svc: Services) -> dict[str, Any]:
    manager = svc.policy_manager
    status: dict[str, Any] = {
        "engine": svc.settings.policy.engine,
        "version": svc.policy_version(),
        # data.plant delivery: successful pushes so far, the last push's failure (None if ok)
        "data_push": {"pushes": svc.policy_data.pushes, "problem": svc.policy_data.problem},
    }
    if manager is not None:
        st = manager.status()
        status.update(
            bundle_dir=st.bundle_dir,
            last_error=st.last_error,
            problems=list(st.last_problems),
            activated_at=st.activated_at.isoformat() if st.activated_at else None,
            evaluator=st.evaluator.as_dict() if st.evaluator else None,
            evaluator_text=st.evaluator.describe() if st.evaluator else None,
        )
    else:
        status["url"] = svc.settings.policy.opa_url
    return status


async def status_api(request: Request) -> Response:
    await require(request, ADMIN)
    return JSONResponse(_status(services(request)))


async def policy_page(request: Request) -> Response:
    """Status, and for the embedded engine the bundle's files (highlighted), version,
    revision and Rego test results (``broker/web/policy_view.py``, cached per bundle version)."""
    await require(request, ADMIN)
    svc = services(request)
    status = _status(svc)
    bundle, data = None, None
    if svc.policy_manager is not None:
        cache = getattr(request.app.state, "policy_tests", None)
        if cache is None:
            cache = request.app.state.policy_tests = TestCache()
        bundle = await run_in_threadpool(bundle_view, Path(status["bundle_dir"]), cache)
        data = await run_in_threadpool(data_view, svc.policy_manager.data)
    ctx = {
        "status": status,
        "bundle": bundle,
        "data": data,
        "message": request.query_params.get("message"),
    }
    return render(request, "policy.html", ctx)


async def reload_now(request: Request) -> Response:
    principal = await require(request, ADMIN)
    await check_csrf(request, principal)
    svc = services(request)
    manager = svc.policy_manager
    if manager is None:
        raise BadRequest("the OPA server manages its own bundles; nothing to reload here")
    try:
        version = await run_in_threadpool(manager.reload)
        message = f"bundle {version} is active"
    except BundleError as exc:
        message = f"rejected: {exc.message}; the previous bundle stays active"
    await svc.record(
        request,
        "policy.reload_requested",
        actor=principal.user_id,
        outcome="ok",
        details={"result": message},
    )
    return RedirectResponse(f"/admin/policy?{urlencode({'message': message})}", status_code=303)


routes = [
    Route("/admin/policy", policy_page),
    Route("/admin/policy/reload", reload_now, methods=["POST"]),
    Route("/admin/whatif", whatif_page, methods=["GET", "POST"]),
    Route("/api/policy/whatif", whatif_api, methods=["POST"]),
    Route("/api/policy/status", status_api),
]
