"""The admin's agents page: health, inventory, join tokens, revoke and adopt (``/admin/agents``).

Server-rendered; every route needs the admin role and every POST the session's CSRF token.
The list is :func:`broker.http.agent_view.agent_list`, the same data as ``GET /api/agents``: it
never holds a secret. A new join token is shown once, in the answer to the POST that created it
(the response is not cached: the app sends ``Cache-Control: no-store``); no later page shows it.
A refused action re-renders the page with the service's message and a 400/404/409/503 status;
revoke and adopt redirect (303) back with a message when they succeed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Engine
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.http.agent_view import agent_list
from broker.http.request_input import parse_duration
from broker.http.web import check_csrf, render, require
from broker.runtime.errors import BrokerError
from broker.services import services
from sessions.db import session_scope
from sessions.errors import ConflictError, NotFoundError, SessionsError, ValidationError
from sessions.identity import ADMIN
from sessions.models import Criticality, Site, Zone

PAGE = "/admin/agents"
TTLS = (("15m", "15 minutes"), ("1h", "1 hour"), ("4h", "4 hours"), ("24h", "24 hours"))
_STATUS = {ValidationError: 400, NotFoundError: 404, ConflictError: 409}


def _sites(engine: Engine) -> dict[str, list[str]]:
    """Site name -> its zone names (both sorted), for the token and adopt forms."""
    with session_scope(engine) as db:
        rows = db.exec(
            select(Site.name, Zone.name)
            .join(Zone, col(Zone.site_id) == col(Site.id), isouter=True)
            .order_by(col(Site.name), col(Zone.purdue_level).desc(), col(Zone.name))
        ).all()
    sites: dict[str, list[str]] = {}
    for site, zone in rows:
        sites.setdefault(site, [])
        if zone is not None:
            sites[site].append(zone)
    return sites


async def _page(
    request: Request,
    *,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    new_token: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    svc = services(request)
    ctx = {
        "agents": await agent_list(svc),
        "sites": await run_in_threadpool(_sites, svc.engine),
        "ttls": TTLS,
        "criticalities": Criticality.ALL,
        "gateway": svc.gateway is not None,
        "form": form or {},
        "new_token": new_token,
        "message": request.query_params.get("message") if new_token is None else None,
        "error": error,
    }
    return render(request, "admin_agents.html", ctx, status=status)


def _refused(exc: SessionsError | BrokerError) -> tuple[str, int]:
    if isinstance(exc, BrokerError):
        return exc.message, exc.status
    return exc.message, next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)


def _done(message: str) -> Response:
    return RedirectResponse(f"{PAGE}?{urlencode({'message': message})}", status_code=303)


async def agents_page(request: Request) -> Response:
    await require(request, ADMIN)
    return await _page(request)


async def create_token(request: Request) -> Response:
    """Create a join token; the answer is the page showing it (and its command) this once."""
    principal = await require(request, ADMIN)
    form = {k: str(v) for k, v in (await check_csrf(request, principal)).items() if k != "csrf"}
    svc = services(request)
    site, zone, name = form.get("site", ""), form.get("zone", "") or None, form.get("name", "")
    try:
        if form.get("ttl") not in dict(TTLS):
            raise ValidationError("pick one of the offered token lifetimes")
        ttl = parse_duration(form["ttl"])
        token, row = await run_in_threadpool(
            lambda: svc.agents.create_token(
                actor=principal.user_id, site=site, zone=zone, ttl=ttl, name=name.strip()
            )
        )
    except (SessionsError, BrokerError) as exc:
        message, status = _refused(exc)
        return await _page(request, form=form, error=message, status=status)
    url = svc.settings.public_url.rstrip("/")
    shown = {
        "token": str(token),
        "token_id": token.token_id,
        "site": site,
        "zone": zone or "",
        "expires_at": row.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": f"conduit-agent join --broker {url} --token {token}",
    }
    return await _page(request, new_token=shown, status=201)


async def revoke(request: Request) -> Response:
    """Revoke an agent; with the gateway running its live tunnel is cut at once."""
    principal = await require(request, ADMIN)
    await check_csrf(request, principal)
    svc, agent_id = services(request), request.path_params["id"]
    try:
        if svc.gateway is not None:
            await svc.gateway.revoke(agent_id, actor=principal.user_id)
        else:
            await run_in_threadpool(lambda: svc.agents.revoke(agent_id, actor=principal.user_id))
    except (SessionsError, BrokerError) as exc:
        message, status = _refused(exc)
        return await _page(request, error=message, status=status)
    return _done(f"agent {agent_id} revoked; its key can never connect again")


async def adopt(request: Request) -> Response:
    """Create the asset for an unmatched endpoint and push the new plant data to policy."""
    principal = await require(request, ADMIN)
    form = {k: str(v) for k, v in (await check_csrf(request, principal)).items() if k != "csrf"}
    svc = services(request)
    try:
        asset, endpoint = await run_in_threadpool(
            lambda: svc.agents.adopt(
                request.path_params["id"],
                actor=principal.user_id,
                name=form.get("name", ""),
                owner_group=form.get("owner_group", ""),
                criticality=form.get("criticality", "") or Criticality.MEDIUM,
                zone=form.get("zone", "") or None,
            )
        )
    except (SessionsError, BrokerError) as exc:
        message, status = _refused(exc)
        return await _page(request, form=form, error=message, status=status)
    await svc.refresh_policy_data()
    return _done(f"asset {asset.name} created for {endpoint.host}:{endpoint.port}")


routes = [
    Route(PAGE, agents_page),
    Route(f"{PAGE}/tokens", create_token, methods=["POST"]),
    Route(f"{PAGE}/{{id}}/revoke", revoke, methods=["POST"]),
    Route(f"{PAGE}/endpoints/{{id}}/adopt", adopt, methods=["POST"]),
]
