"""CLI sign-in, loopback flow (RFC 8252 style, ``conduit login``).

The CLI listens on 127.0.0.1 and opens ``/cli/authorize`` in the browser with a PKCE S256
challenge and a ``state``; after sign-in the person sees which loopback address asks and
explicitly allows or denies. On allow the broker redirects to the loopback URL with a one-time
code (stored hashed) that the CLI redeems with its verifier at ``/api/cli/token``
(:mod:`broker.api.cli_token`); on deny with ``error=access_denied``. A redirect that is not an
``http://`` loopback address with a port, a missing or non-S256 challenge or a missing state is
refused (400) before anything is stored. Decisions are audited ``cli.authorize``.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.api.cli_oauth import bind_session, client_name
from broker.auth.auth import secret_hash
from broker.http.web import check_csrf, current_principal, render, require
from broker.runtime.errors import BadRequest
from broker.services import client_ip, services
from sessions.db import session_scope
from sessions.models import CliAuthorization


def _is_loopback_redirect(uri: str) -> bool:
    parts = urlsplit(uri)
    return (
        parts.scheme == "http"
        and parts.hostname in {"127.0.0.1", "::1", "localhost"}
        and parts.port is not None
        and not parts.username
        and not parts.fragment
    )


async def authorize_page(request: Request) -> Response:
    svc = services(request)
    q = request.query_params
    redirect_uri, challenge, state = (
        q.get("redirect_uri", ""),
        q.get("code_challenge", ""),
        q.get("state", ""),
    )
    if not _is_loopback_redirect(redirect_uri):
        raise BadRequest("redirect_uri must be an http://127.0.0.1:PORT/ loopback address")
    if q.get("code_challenge_method", "S256") != "S256" or not 43 <= len(challenge) <= 128:
        raise BadRequest("a PKCE S256 code_challenge is required")
    if not state:
        raise BadRequest("state is required")
    principal = await current_principal(request)
    if principal is None:
        return RedirectResponse(
            f"/login?{urlencode({'next': request.url.path + '?' + request.url.query})}", 303
        )
    now = svc.clock.now()
    row = CliAuthorization(
        kind="loopback",
        state="pending",
        code_challenge=challenge,
        redirect_uri=redirect_uri,
        user_id=principal.user_id,
        client_name=client_name(q.get("client_name")),  # untrusted: audit only
        created_at=now,
        expires_at=now + timedelta(seconds=svc.settings.device_code_ttl_s),
        source_ip=client_ip(request),
    )

    def _save() -> None:
        with session_scope(svc.engine, write=True) as db:
            db.add(row)

    await run_in_threadpool(_save)
    return render(
        request,
        "cli_authorize.html",
        {"auth_id": row.id, "state": state, "redirect_host": urlsplit(redirect_uri).netloc},
    )


async def authorize_submit(request: Request) -> Response:
    svc = services(request)
    principal = await require(request)
    form = await check_csrf(request, principal)
    auth_id, state = str(form.get("auth_id", "")), str(form.get("state", ""))
    approve = form.get("decision") == "approve"
    code = secrets.token_urlsafe(32)
    session = principal.credential

    def _decide() -> str | None:
        with session_scope(svc.engine, write=True) as db:
            row = db.get(CliAuthorization, auth_id)
            if (
                row is None
                or row.kind != "loopback"
                or row.state != "pending"
                or row.user_id != principal.user_id
                or row.expires_at <= svc.clock.now()
                or session is None
                or principal.via != "session"
            ):
                return None
            row.state = "approved" if approve else "denied"
            row.code_hash = secret_hash(code) if approve else None
            bind_session(row, principal, session.key)
            db.add(row)
            return row.redirect_uri

    redirect_uri = await run_in_threadpool(_decide)
    if redirect_uri is None:
        await svc.record(
            request,
            "cli.authorize",
            actor=principal.user_id,
            outcome="rejected",
            subject=auth_id,
            details={"reason": "unknown or expired request"},
        )
        raise BadRequest(
            "this CLI sign-in request is unknown or expired; run `conduit login` again"
        )
    await svc.record(
        request,
        "cli.authorize",
        actor=principal.user_id,
        outcome="ok" if approve else "deny",
        subject=auth_id,
    )
    params = (
        {"code": code, "state": state} if approve else {"error": "access_denied", "state": state}
    )
    return RedirectResponse(f"{redirect_uri}?{urlencode(params)}", status_code=303)


routes = [
    Route("/cli/authorize", authorize_page, methods=["GET"]),
    Route("/cli/authorize", authorize_submit, methods=["POST"]),
]
