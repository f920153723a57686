"""The browser side of clientless SSH sign-in: ``/ssh/approve`` (see :mod:`broker.clientless`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.errors import BadRequest
from broker.services import services
from broker.web import check_csrf, render, require
from sessions.identity import ADMIN, VENDOR


async def approve_page(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    svc = services(request)
    code = request.query_params.get("code", "")
    pending = svc.clientless.get(code) if code else None
    return render(
        request,
        "ssh_approve.html",
        {"pending": pending, "code": code, "unknown": bool(code) and pending is None,
         "principal": principal},
    )  # fmt: skip


async def decide(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    form = await check_csrf(request, principal)
    svc = services(request)
    code = str(form.get("code", ""))
    verdict = str(form.get("decision", ""))
    if verdict not in ("approve", "deny"):
        raise BadRequest("decision must be approve or deny")
    pending = svc.clientless.decide(code, user_id=principal.user_id, approve=verdict == "approve")
    details: dict[str, Any] = {"code": code[:16]}
    if pending is not None:
        details.update(login=pending.login, asset=pending.asset, client=pending.peer)
    await svc.record(
        request,
        f"ssh.clientless.{'approved' if verdict == 'approve' else 'denied'}",
        actor=principal.user_id,
        outcome=("ok" if verdict == "approve" else "deny") if pending else "rejected",
        subject=f"asset:{pending.asset}" if pending else None,
        details=details,
    )
    return render(
        request,
        "ssh_approve.html",
        {"decided": verdict if pending else None, "unknown": pending is None, "code": code,
         "principal": principal},
        status=200 if pending else 404,
    )  # fmt: skip


routes = [
    Route("/ssh/approve", approve_page, methods=["GET"]),
    Route("/ssh/approve", decide, methods=["POST"]),
]
