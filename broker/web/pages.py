"""The web shell: home, who-am-I and one landing page per role."""

from __future__ import annotations

from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.http.web import current_principal, render, require
from broker.keys.ssh import SshKeys, asset_ca_setup
from broker.runtime.people import Person, people
from broker.services import services
from sessions.db import session_scope
from sessions.endpoints import describe, endpoints_of
from sessions.identity import ADMIN, SECURITY
from sessions.models import Asset, AuditEvent, Site, Zone

AUDIT_PAGE = 50


async def home(request: Request) -> Response:
    principal = await current_principal(request)
    if principal is None:
        return render(request, "signed_out.html", {"next": "/"})
    return render(request, "home.html")


async def whoami(request: Request) -> Response:
    await require(request)
    return render(request, "whoami.html")


async def admin_assets(request: Request) -> Response:
    await require(request, ADMIN)
    svc = services(request)

    def _load() -> list[tuple[Asset, str, str, int, list[str]]]:
        with session_scope(svc.engine) as db:
            rows = db.exec(
                select(Asset, Site.name, Zone.name, Zone.purdue_level)
                .join(Site, col(Site.id) == col(Asset.site_id))
                .join(Zone, col(Zone.id) == col(Asset.zone_id))
                .order_by(col(Site.name), col(Zone.purdue_level), col(Asset.name))
            ).all()
            return [
                (a, s, z, lvl, [describe(e) for e in endpoints_of(db, a.id)])
                for a, s, z, lvl in rows
            ]

    ca_line = SshKeys.public(svc.ssh_keys.asset_ca)
    return render(
        request,
        "assets.html",
        {
            "assets": await run_in_threadpool(_load),
            "asset_ca": ca_line,
            "asset_ca_setup": asset_ca_setup(ca_line),
        },
    )


async def security_audit(request: Request) -> Response:
    await require(request, SECURITY, ADMIN)
    svc = services(request)
    try:
        before = int(request.query_params.get("before", "0"))
    except ValueError:
        before = 0

    def _load() -> tuple[list[AuditEvent], dict[str, Person]]:
        with session_scope(svc.engine) as db:
            query = select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(AUDIT_PAGE)
            if before > 0:
                query = query.where(AuditEvent.seq < before)
            events = list(db.exec(query).all())
            for e in events:
                db.expunge(e)
            return events, people(db, {e.actor for e in events})

    events, actors = await run_in_threadpool(_load)
    verification = None
    if request.query_params.get("verify") == "1":
        verification = await run_in_threadpool(svc.audit.verify)
    return render(
        request,
        "audit.html",
        {
            "events": events,
            "actors": actors,
            "verification": verification,
            "older": events[-1].seq if len(events) == AUDIT_PAGE else None,
        },
    )


routes = [
    Route("/", home),
    Route("/whoami", whoami),
    Route("/admin/assets", admin_assets),
    Route("/security/audit", security_audit),
]
