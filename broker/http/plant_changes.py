"""Changing the plant from a request: export it, edit the document, apply it.

:func:`apply_document` validates a plant document, plans the changes
(:func:`sessions.plant.diff`) and, unless ``dry_run``, applies them in one transaction, audits
each as ``plant.<kind>.<action>`` with before/after and refreshes the policy data; a refusal
(:class:`sessions.errors.SessionsError`: invalid, or still in use) changes nothing and is
audited ``plant.refused``. ``conduit plant apply`` (through ``POST /api/plant/apply``), the
per-object API and the admin plant page all change the plant through here. docs/plant.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from broker.auth.auth import Principal
from broker.services import services
from sessions.db import session_scope
from sessions.errors import SessionsError
from sessions.plant import Plan, apply, diff, export, parse


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
