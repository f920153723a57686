"""``/admin/identity`` (admin, read-only): how IdP claims become roles and vendor organisations.

Roles come from the IdP groups claim through ``[roles]`` in the settings; a user's vendor
organisation from the vendor-org claim, matched against each organisation's slug and its
``idp_values`` (the plant file). Nothing here can be changed from the UI: the settings file
or environment and ``conduit plant apply`` are where they change, and this page says so.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.http.web import render, require
from broker.services import services
from sessions.db import session_scope
from sessions.identity import ADMIN, ROLES
from sessions.models import VendorOrg


def _orgs(engine: Any) -> list[dict[str, Any]]:
    with session_scope(engine) as db:
        orgs = db.exec(select(VendorOrg).order_by(col(VendorOrg.slug))).all()
        return [{"slug": o.slug, "name": o.name, "values": [o.slug, *o.idp_values]} for o in orgs]


async def identity(request: Request) -> Response:
    await require(request, ADMIN)
    svc = services(request)
    mapping = svc.settings.roles.as_mapping()
    ctx = {
        "roles": [(r, mapping.get(r, []), f"CONDUIT_ROLES__{r.upper()}") for r in ROLES],
        "groups_claim": svc.settings.oidc.groups_claim,
        "org_claim": svc.settings.oidc.vendor_org_claim,
        "orgs": await run_in_threadpool(_orgs, svc.engine),
    }
    return render(request, "identity.html", ctx)


routes = [Route("/admin/identity", identity, methods=["GET"])]
