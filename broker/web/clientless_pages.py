"""The browser side of clientless SSH sign-in: ``/ssh/approve`` (see :mod:`broker.ssh.clientless`).

1. ``GET /ssh/approve``: a form to type the code shown in your own terminal. A link that
   carries a code (``?code=``) is refused: the code is cancelled and the visit audited
   (``ssh.clientless.link_refused``), since only someone else can have sent that link.
2. ``POST`` with ``code``: the code is looked up (constant time, wrong codes counted per user
   and audited as ``ssh.clientless.code_rejected``; too many → ``ssh.clientless.rate_limited``)
   and claimed by this user; the page shows the connecting address, asset, login, when it
   asked, and a plain warning (a stronger one when the SSH client's address is not the
   browser's).
3. ``POST`` with ``ref`` and ``decision``: approve or deny that reviewed code, once
   (``ssh.clientless.approved|denied``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.auth.auth import Principal
from broker.http.web import check_csrf, render, require
from broker.runtime.errors import BadRequest
from broker.services import client_ip, services
from broker.ssh.clientless import (
    ClientlessRefused,
    CodeRejected,
    Pending,
    TooManyWrongCodes,
    source_key,
)
from sessions.identity import ADMIN, VENDOR
from sessions.models import AuditOutcome


def _context(pending: Pending, now: datetime, browser: str | None) -> dict[str, Any]:
    return {
        "pending": pending,
        "browser": browser,
        "other_address": source_key(browser) != source_key(pending.peer),
        "started": pending.started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "ago_s": max(0, int((now - pending.started).total_seconds())),
        "left_s": max(0, int((pending.expires - now).total_seconds())),
    }


async def approve_page(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    svc = services(request)
    if "code" not in request.query_params:
        return render(request, "ssh_approve.html", {"principal": principal})
    cancelled = svc.clientless.from_link(request.query_params.get("code", ""))
    details: dict[str, Any] = {"live_code": cancelled is not None}
    if cancelled is not None:
        details.update(cancelled.details())
    await svc.record(
        request,
        "ssh.clientless.link_refused",
        actor=principal.user_id,
        outcome=AuditOutcome.REJECTED,
        subject=f"asset:{cancelled.asset}" if cancelled else None,
        details=details,
    )
    return render(
        request, "ssh_approve.html", {"principal": principal, "link_refused": True}, status=400
    )


async def post(request: Request) -> Response:
    principal = await require(request, VENDOR, ADMIN)
    form = await check_csrf(request, principal)
    if "decision" in form:
        return await _decide(request, principal, form)
    return await _lookup(request, principal, str(form.get("code", "")))


async def _lookup(request: Request, principal: Principal, typed: str) -> Response:
    svc = services(request)
    try:
        pending = svc.clientless.lookup(typed, user_id=principal.user_id)
    except TooManyWrongCodes as exc:
        if exc.first:
            await svc.record(
                request,
                "ssh.clientless.rate_limited",
                actor=principal.user_id,
                outcome=AuditOutcome.REJECTED,
                details={"retry_after_s": exc.retry_after_s},
            )
        response = render(
            request,
            "ssh_approve.html",
            {"principal": principal, "rate_limited": exc.message},
            status=exc.status,
        )
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except CodeRejected as exc:
        details: dict[str, Any] = {"reason": exc.reason}
        if exc.pending is not None:
            details.update(exc.pending.details())
        await svc.record(
            request,
            "ssh.clientless.code_rejected",
            actor=principal.user_id,
            outcome=AuditOutcome.REJECTED,
            subject=f"asset:{exc.pending.asset}" if exc.pending else None,
            details=details,
        )
        return render(
            request,
            "ssh_approve.html",
            {"principal": principal, "code_error": exc.message},
            status=exc.status,
        )
    return render(
        request,
        "ssh_approve.html",
        {"principal": principal, **_context(pending, svc.clock.now(), client_ip(request))},
    )


async def _decide(request: Request, principal: Principal, form: dict[str, Any]) -> Response:
    svc = services(request)
    verdict = str(form.get("decision", ""))
    if verdict not in ("approve", "deny"):
        raise BadRequest("decision must be approve or deny")
    approve = verdict == "approve"
    kind = f"ssh.clientless.{'approved' if approve else 'denied'}"
    try:
        pending = await svc.clientless.decide(
            str(form.get("ref", "")), user_id=principal.user_id, approve=approve
        )
    except (CodeRejected, ClientlessRefused) as exc:
        refused = isinstance(exc, ClientlessRefused)
        await svc.record(
            request,
            "ssh.clientless.refused" if refused else "ssh.clientless.code_rejected",
            actor=principal.user_id,
            outcome=AuditOutcome.REJECTED,
            details={"ref": str(form.get("ref", ""))[:32], "decision": verdict,
                     "reason": exc.message if refused else getattr(exc, "reason", "")},
        )  # fmt: skip
        return render(
            request,
            "ssh_approve.html",
            {"principal": principal, "code_error": exc.message},
            status=exc.status,
        )
    await svc.record(
        request,
        kind,
        actor=principal.user_id,
        outcome=AuditOutcome.OK if approve else AuditOutcome.DENY,
        subject=f"asset:{pending.asset}",
        details={
            **pending.details(),
            "same_address": source_key(client_ip(request)) == source_key(pending.peer),
        },
    )
    return render(request, "ssh_approve.html", {"principal": principal, "decided": verdict})


routes = [
    Route("/ssh/approve", approve_page, methods=["GET"]),
    Route("/ssh/approve", post, methods=["POST"]),
]
