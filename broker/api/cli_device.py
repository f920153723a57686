"""CLI sign-in, device flow (RFC 8628 style, ``conduit login --no-browser``).

``POST /api/cli/device`` gives the CLI a device code and a short user code (anonymous starts are
limited per address and audited in aggregate, :mod:`broker.auth.device_starts`); the person types
the user code at ``/cli/activate`` in any browser (a code in the link is ignored), sees where
and how long ago the request was made next to their own address, and allows or denies it. Only
a browser session can approve. The CLI then redeems the device code at ``/api/cli/token``
(:mod:`broker.api.cli_token`). Every step is audited ``cli.activate``; an unknown, expired or
already decided code is refused (400) and changes nothing.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlencode

from sqlmodel import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from broker.api.cli_oauth import bind_session, client_name, oauth_error, read_params
from broker.auth.auth import Principal, secret_hash
from broker.http.web import check_csrf, current_principal, render, require
from broker.services import Services, client_ip, services
from sessions.db import session_scope
from sessions.models import CliAuthorization

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O or 1/I confusion
POLL_INTERVAL_S = 2


def normalize_user_code(value: str) -> str:
    return "".join(c for c in value.upper() if c in USER_CODE_ALPHABET)


def format_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


async def device_start(request: Request) -> Response:
    svc = services(request)
    params = await read_params(request)
    ip = client_ip(request)
    name = client_name(params.get("client_name"))
    wait = await run_in_threadpool(svc.device_starts.retry_after, ip)
    svc.device_starts.note(ip, admitted=wait is None, client_name=name)
    if wait is not None:
        refused = oauth_error(
            "slow_down",
            f"too many pending CLI sign-ins from {ip}; try again in {wait} s",
            status=429,
        )
        refused.headers["Retry-After"] = str(wait)
        return refused
    device_code = secrets.token_urlsafe(32)
    user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    now = svc.clock.now()
    row = CliAuthorization(
        kind="device",
        device_code_hash=secret_hash(device_code),
        user_code=user_code,
        state="pending",
        client_name=name,  # untrusted: audit only, never shown to the approver
        created_at=now,
        expires_at=now + timedelta(seconds=svc.settings.device_code_ttl_s),
        source_ip=ip,
    )

    def _save() -> None:
        with session_scope(svc.engine) as db:
            db.add(row)

    await run_in_threadpool(_save)
    base = svc.settings.public_url.rstrip("/")
    return JSONResponse(
        {
            "device_code": device_code,
            "user_code": format_user_code(user_code),
            "verification_uri": f"{base}/cli/activate",
            "expires_in": svc.settings.device_code_ttl_s,
            "interval": POLL_INTERVAL_S,
        }
    )


def _find_pending_device(svc: Services, user_code: str) -> CliAuthorization | None:
    with session_scope(svc.engine) as db:
        row = db.exec(
            select(CliAuthorization).where(
                CliAuthorization.user_code == user_code, CliAuthorization.kind == "device"
            )
        ).first()
        if row is None or row.state != "pending" or row.expires_at <= svc.clock.now():
            return None
        db.expunge(row)
        return row


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


async def activate_page(request: Request) -> Response:
    """Step 1: the person types the code their terminal shows (a code in the link is ignored)."""
    principal = await current_principal(request)
    if principal is None:
        return RedirectResponse(f"/login?{urlencode({'next': '/cli/activate'})}", 303)
    return render(request, "cli_activate.html", {"step": "enter", "entered": ""})


async def _refuse_activation(
    request: Request, principal: Principal, entered: str, reason: str
) -> Response:
    await services(request).record(
        request,
        "cli.activate",
        actor=principal.user_id,
        outcome="rejected",
        details={"reason": reason},
    )
    return render(
        request,
        "cli_activate.html",
        {"step": "enter", "entered": entered[:20], "unknown": True, "reason": reason},
        status=400,
    )


async def activate_submit(request: Request) -> Response:
    """Step 2 (no ``decision``): show who asked, from where, how long ago. Step 3: decide."""
    svc = services(request)
    principal = await require(request)
    form = await check_csrf(request, principal)
    entered = str(form.get("user_code", ""))
    code = normalize_user_code(entered)
    decision = form.get("decision")
    if principal.via != "session" or principal.credential is None:
        return await _refuse_activation(
            request, principal, entered, "CLI sign-ins are approved in a browser session only"
        )
    if decision not in ("approve", "deny"):
        row = await run_in_threadpool(_find_pending_device, svc, code) if code else None
        if row is None:
            return await _refuse_activation(
                request, principal, entered, "unknown or expired user code"
            )
        now = svc.clock.now()
        mine = client_ip(request)
        return render(
            request,
            "cli_activate.html",
            {
                "step": "confirm",
                "user_code": format_user_code(code),
                "source_ip": row.source_ip or "unknown",
                "your_ip": mine or "unknown",
                "elsewhere": row.source_ip != mine,
                "age": _age((now - row.created_at).total_seconds()),
                "expires_in": _age((row.expires_at - now).total_seconds()),
            },
        )
    approve = decision == "approve"
    session = principal.credential

    def _decide() -> str | None:
        with session_scope(svc.engine, write=True) as db:
            row = db.exec(
                select(CliAuthorization).where(
                    CliAuthorization.user_code == code, CliAuthorization.kind == "device"
                )
            ).first()
            if row is None or row.state != "pending" or row.expires_at <= svc.clock.now():
                return None
            row.state = "approved" if approve else "denied"
            row.user_id = principal.user_id
            bind_session(row, principal, session.key)
            db.add(row)
            return row.id

    auth_id = await run_in_threadpool(_decide) if code else None
    if auth_id is None:
        return await _refuse_activation(request, principal, entered, "unknown or expired user code")
    await svc.record(
        request,
        "cli.activate",
        actor=principal.user_id,
        outcome="ok" if approve else "deny",
        subject=auth_id,
    )
    return render(request, "cli_done.html", {"approved": approve})


routes = [
    Route("/api/cli/device", device_start, methods=["POST"]),
    Route("/cli/activate", activate_page, methods=["GET"]),
    Route("/cli/activate", activate_submit, methods=["POST"]),
]
