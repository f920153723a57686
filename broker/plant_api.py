"""The plant as code over the API: ``GET /api/plant``, ``POST /api/plant/apply`` (admins).

``apply`` takes ``{"document": {...}, "dry_run": bool, "archive": bool}``, validates the
document (path-named errors, 400), plans the changes (:func:`sessions.plant.diff`) and, unless
``dry_run``, applies them in one transaction (409 when a removal is refused), audits each as
``plant.<kind>.<action>`` with ``before``/``after`` and refreshes the policy data.
docs/plant.md.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.access_api import _json, domain_error
from broker.errors import BadRequest
from broker.services import services
from broker.web import require
from sessions.db import session_scope
from sessions.errors import SessionsError
from sessions.identity import ADMIN
from sessions.plant import Plan, apply, diff, export, parse


async def export_api(request: Request) -> Response:
    await require(request, ADMIN)
    svc = services(request)

    def _export() -> dict[str, Any]:
        with session_scope(svc.engine) as db:
            return export(db).to_data()

    return JSONResponse(await run_in_threadpool(_export))


async def apply_api(request: Request) -> Response:
    principal = await require(request, ADMIN)
    svc = services(request)
    body = await _json(request)
    flags = {k: body.get(k, False) for k in ("dry_run", "archive")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise BadRequest("dry_run and archive must be true or false")
    if "document" not in body:
        raise BadRequest("the body needs a plant document under 'document'")
    dry_run, archive = flags["dry_run"], flags["archive"]
    now = svc.clock.now()

    def _run() -> Plan:
        doc = parse(body["document"], now)
        with session_scope(svc.engine, write=not dry_run) as db:
            plan = diff(db, doc, archive=archive)
            if not dry_run:
                apply(db, plan, now)
            return plan

    try:
        plan = await run_in_threadpool(_run)
    except SessionsError as exc:
        return domain_error(exc)
    if not dry_run:
        for change in plan.changes:
            await svc.record(
                request,
                f"plant.{change.kind}.{change.action}",
                actor=principal.user_id,
                outcome="ok",
                subject=change.key,
                details={"before": change.before, "after": change.after},
            )
        if plan.changes:
            await svc.refresh_policy_data()
    return JSONResponse(
        {
            "dry_run": dry_run,
            "applied": not dry_run,
            "summary": plan.summary(),
            "refused": plan.refusals(),
            "changes": [c.to_data() for c in plan.changes],
        }
    )


routes = [
    Route("/api/plant", export_api, methods=["GET"]),
    Route("/api/plant/apply", apply_api, methods=["POST"]),
]
