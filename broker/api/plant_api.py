"""The plant as code over the API: ``GET /api/plant``, ``POST /api/plant/apply`` (admins).

``apply`` takes ``{"document": {...}, "dry_run": bool, "archive": bool}``, validates the
document (path-named errors, 400), plans the changes (:func:`sessions.plant.diff`) and, unless
``dry_run``, applies them in one transaction (409 when a removal is refused), audits each as
``plant.<kind>.<action>`` with ``before``/``after`` and refreshes the policy data.
Both use :mod:`broker.http.plant_changes`; one object at a time: :mod:`broker.api.plant_objects`.
docs/plant.md.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.api.access_api import domain_error
from broker.http.plant_changes import apply_document, exported
from broker.http.request_input import json_object
from broker.http.web import require
from broker.runtime.errors import BadRequest
from sessions.errors import SessionsError
from sessions.identity import ADMIN


async def export_api(request: Request) -> Response:
    await require(request, ADMIN)
    return JSONResponse(await exported(request))


async def apply_api(request: Request) -> Response:
    principal = await require(request, ADMIN)
    body = await json_object(request)
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
