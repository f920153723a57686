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
from broker.auth import Principal
from broker.errors import BadRequest
from broker.services import services
from broker.web import require
from sessions.db import session_scope
from sessions.errors import ConflictError, NotFoundError, SessionsError
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
    Raises :class:`sessions.errors.SessionsError` (nothing changed)."""
    svc = services(request)
    now = svc.clock.now()

    def _run() -> Plan:
        doc = parse(data, now)
        with session_scope(svc.engine, write=not dry_run) as db:
            plan = diff(db, doc, archive=archive)
            if not dry_run:
                apply(db, plan, now)
            return plan

    plan = await run_in_threadpool(_run)
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


# ----------------------------------------------------------------- one asset at a time
# Each call edits the exported document and applies it: the same validation (paths name the
# asset's place in the whole document, e.g. ``assets[2].endpoints[0].port``), audit and
# policy-data refresh as ``conduit plant apply``.


def asset_index(data: dict[str, Any], name: str) -> int | None:
    """Where the asset ``name`` is in the document's ``assets`` (None if absent)."""
    return next((i for i, a in enumerate(data["assets"]) if a.get("name") == name), None)


async def _applied(request: Request, principal: Principal, data: Any, **flags: bool) -> Response:
    try:
        plan = await apply_document(request, principal, data, **flags)
    except SessionsError as exc:
        return domain_error(exc)
    return JSONResponse({"summary": plan.summary(), "changes": [c.to_data() for c in plan.changes]})


async def assets_api(request: Request) -> Response:
    principal = await require(request, ADMIN)
    data = await exported(request)
    if request.method == "GET":
        return JSONResponse({"assets": data["assets"]})
    body = await _json(request)
    name = body.get("name")
    if isinstance(name, str) and asset_index(data, name) is not None:
        return domain_error(ConflictError(f"asset {name!r} already exists; PUT to replace it"))
    data["assets"].append(body)
    return await _applied(request, principal, data)


def _no_asset(name: str) -> Response:
    return domain_error(NotFoundError(f"no asset {name!r} (archived assets are not listed)"))


async def asset_api(request: Request) -> Response:
    principal = await require(request, ADMIN)
    name = request.path_params["name"]
    data = await exported(request)
    index = asset_index(data, name)
    if index is None:
        return _no_asset(name)
    if request.method == "GET":
        return JSONResponse(data["assets"][index])
    body = await _json(request)
    if body.setdefault("name", name) != name:
        raise BadRequest(f"the body names asset {body['name']!r}, the path {name!r}")
    data["assets"][index] = body
    return await _applied(request, principal, data)


async def archive_api(request: Request) -> Response:
    """Remove the asset; one with history is archived (``archived_at``), else deleted."""
    principal = await require(request, ADMIN)
    name = request.path_params["name"]
    data = await exported(request)
    index = asset_index(data, name)
    if index is None:
        return _no_asset(name)
    del data["assets"][index]
    return await _applied(request, principal, data, archive=True)


routes = [
    Route("/api/plant", export_api, methods=["GET"]),
    Route("/api/plant/apply", apply_api, methods=["POST"]),
    Route("/api/plant/assets", assets_api, methods=["GET", "POST"]),
    Route("/api/plant/assets/{name}", asset_api, methods=["GET", "PUT"]),
    Route("/api/plant/assets/{name}/archive", archive_api, methods=["POST"]),
]
