"""The plant as code over the API: ``GET /api/plant``, ``POST /api/plant/apply`` (admins).

``apply`` takes ``{"document": {...}, "dry_run": bool, "archive": bool}``, validates the
document (path-named errors, 400), plans the changes (:func:`sessions.plant.diff`) and, unless
``dry_run``, applies them in one transaction (409 when a removal is refused), audits each as
``plant.<kind>.<action>`` with ``before``/``after`` and refreshes the policy data.
One object at a time: :mod:`broker.api.plant_objects`. docs/plant.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.api.access_api import _json, domain_error
from broker.auth.auth import Principal
from broker.http.web import require
from broker.runtime.errors import BadRequest
from broker.services import services
from sessions.db import session_scope
from sessions.errors import SessionsError
from sessions.identity import ADMIN
from sessions.plant import Plan, apply, diff, export, parse


async def export_api(request: Request) -> Response:
    await require(request, ADMIN)
    return JSONResponse(await exported(request))


async def apply_document(
    request: Request,
    principal: Principal,
    data: Any,
    *,
    dry_run: bool = False,
    archive: bool = False,
) -> Plan:
    """Validate ``data``, plan and (unless ``dry_run``) apply it, audit each change as
    ``plant.<kind>.<action>`` with before/after and refresh the policy data. What
    ``conduit plant apply``, the JSON API and the admin plant page all use.
    Raises :class:`sessions.errors.SessionsError` (nothing changed; audited as
    ``plant.refused`` unless ``dry_run``)."""
    svc = services(request)
    now = svc.clock.now()

    def _run() -> Plan:
        doc = parse(data, now)
        with session_scope(svc.engine, write=not dry_run) as db:
            plan = diff(db, doc, archive=archive)
            if not dry_run:
                apply(db, plan, now)
            return plan

    try:
        plan = await run_in_threadpool(_run)
    except SessionsError as exc:
        if not dry_run:
            await refused(request, principal, exc)
        raise
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
    return plan


async def refused(request: Request, principal: Principal, exc: SessionsError) -> None:
    """Audit a refused plant change (``plant.refused``: bad input, or still in use)."""
    await services(request).record(
        request,
        "plant.refused",
        actor=principal.user_id,
        outcome="refused",
        details={"error": exc.code, "message": str(exc)},
    )


async def edit_plant(
    request: Request, principal: Principal, edit: Callable[[dict[str, Any]], bool]
) -> Plan:
    """Export the plant, let ``edit`` change the document in place (it returns whether
    removed assets with history are archived) and apply it with :func:`apply_document`.
    A refusal of either step is audited and raised (:class:`SessionsError`); nothing changed."""
    data = await exported(request)
    try:
        archive = edit(data)
    except SessionsError as exc:
        await refused(request, principal, exc)
        raise
    return await apply_document(request, principal, data, archive=archive)


async def exported(request: Request) -> dict[str, Any]:
    """The plant document as plain data (``GET /api/plant``)."""
    svc = services(request)

    def _export() -> dict[str, Any]:
        with session_scope(svc.engine) as db:
            return export(db).to_data()

    return await run_in_threadpool(_export)


async def apply_api(request: Request) -> Response:
    principal = await require(request, ADMIN)
    body = await _json(request)
    flags = {k: body.get(k, False) for k in ("dry_run", "archive")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise BadRequest("dry_run and archive must be true or false")
    if "document" not in body:
        raise BadRequest("the body needs a plant document under 'document'")
    dry_run, archive = flags["dry_run"], flags["archive"]
    try:
        plan = await apply_document(
            request, principal, body["document"], dry_run=dry_run, archive=archive
        )
    except SessionsError as exc:
        return domain_error(exc)
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
