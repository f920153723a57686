"""Signing the ``conduit`` CLI in: two flows that end in a short-lived bearer token.

* Loopback (RFC 8252 style): the CLI listens on 127.0.0.1, opens ``/cli/authorize`` in the
  browser with a PKCE S256 challenge; after sign-in and an explicit "allow" the broker
  redirects to the loopback URL with a one-time code, which the CLI redeems with its verifier.
* Device (RFC 8628 style, ``--no-browser``): the CLI gets a device code and a short user code,
  the person types the user code at ``/cli/activate`` in any browser, sees where and when the
  request was made and allows it; the CLI polls ``/api/cli/token`` until approved.

Against consent phishing (someone else starts a device sign-in and talks a victim into
approving it): nothing the requester sends is shown as trusted text (the client name is kept
for the audit log only); there is no ``verification_uri_complete`` and the code in a link is
ignored, so the person must type the code their own terminal shows; the confirmation page
shows the requester's address and the request's age next to the approver's own address; codes
expire after ``device_code_ttl_s`` (5 min by default); anonymous starts are limited per address
and audited in aggregate (:mod:`broker.auth.device_starts`).

Only a browser session can approve (a bearer token cannot approve another token). The token
inherits the approving session's ``amr``/``acr``/``auth_time`` and dies when that session is
signed out (:mod:`sessions.credentials`). ``POST /api/cli/logout`` revokes the calling token
and the SSH certificates it minted (``conduit logout``).

Codes are stored hashed, single use and expire after ``device_code_ttl_s``. Every step is audited.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlmodel import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from broker.auth.auth import Principal, secret_hash
from broker.http.web import check_csrf, current_principal, render, require
from broker.runtime.errors import BadRequest
from broker.services import Services, client_ip, services
from sessions.credentials import AuthContext
from sessions.db import session_scope
from sessions.models import CliAuthorization, User, WebSession

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O or 1/I confusion
POLL_INTERVAL_S = 2


def normalize_user_code(value: str) -> str:
    return "".join(c for c in value.upper() if c in USER_CODE_ALPHABET)


def format_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def _is_loopback_redirect(uri: str) -> bool:
    parts = urlsplit(uri)
    return (
        parts.scheme == "http"
        and parts.hostname in {"127.0.0.1", "::1", "localhost"}
        and parts.port is not None
        and not parts.username
        and not parts.fragment
    )


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _client_name(raw: object) -> str:
    name = str(raw or "conduit CLI")
    return "".join(c for c in name if c.isprintable())[:80] or "conduit CLI"


async def _read_params(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadRequest("request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body
    return dict(await request.form())


# --- device flow ------------------------------------------------------------------------


async def device_start(request: Request) -> Response:
    svc = services(request)
    params = await _read_params(request)
    ip = client_ip(request)
    name = _client_name(params.get("client_name"))
    wait = await run_in_threadpool(svc.device_starts.retry_after, ip)
    svc.device_starts.note(ip, admitted=wait is None, client_name=name)
    if wait is not None:
        refused = _oauth_error(
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
            _bind(row, principal, session.key)
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


def _bind(row: CliAuthorization, principal: Principal, session_hash: str) -> None:
    """The token to come inherits the approving session's authentication and dies with it."""
    row.amr = list(principal.auth.amr)
    row.acr = principal.auth.acr
    row.auth_time = principal.auth.auth_time
    row.session_hash = session_hash


# --- loopback flow ----------------------------------------------------------------------


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
        client_name=_client_name(q.get("client_name")),  # untrusted: audit only
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
            _bind(row, principal, session.key)
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


# --- token endpoint ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Redeemed:
    auth_id: str
    user_id: str
    auth: AuthContext
    session_hash: str | None


def _redeem(svc: Services, params: dict[str, Any]) -> _Redeemed | JSONResponse:
    """Check a token request; on success mark the authorization consumed."""
    grant = params.get("grant_type")
    now = svc.clock.now()
    with session_scope(svc.engine, write=True) as db:
        if grant == DEVICE_GRANT:
            dc = str(params.get("device_code", ""))
            row = (
                db.exec(
                    select(CliAuthorization).where(
                        CliAuthorization.device_code_hash == secret_hash(dc)
                    )
                ).first()
                if dc
                else None
            )
        elif grant == "authorization_code":
            code = str(params.get("code", ""))
            row = (
                db.exec(
                    select(CliAuthorization).where(CliAuthorization.code_hash == secret_hash(code))
                ).first()
                if code
                else None
            )
        else:
            return _oauth_error("unsupported_grant_type", "use device_code or authorization_code")
        if row is None:
            return _oauth_error("invalid_grant", "unknown code")
        if row.state in {"consumed", "expired"}:
            return _oauth_error("invalid_grant", "code already used")
        if row.expires_at <= now:
            row.state = "expired"
            db.add(row)
            return _oauth_error("expired_token", "the sign-in request expired")
        if row.state == "denied":
            return _oauth_error("access_denied", "the sign-in was denied in the browser")
        if row.state == "pending":
            return _oauth_error("authorization_pending", "not yet approved in the browser")
        if grant == "authorization_code":
            verifier = str(params.get("code_verifier", ""))
            if not verifier or not hmac.compare_digest(_s256(verifier), row.code_challenge or ""):
                return _oauth_error("invalid_grant", "PKCE verification failed")
            if params.get("redirect_uri") != row.redirect_uri:
                return _oauth_error("invalid_grant", "redirect_uri does not match")
        row.state = "consumed"
        db.add(row)
        user = db.get(User, row.user_id) if row.user_id else None
        if user is None or user.disabled:
            return _oauth_error("access_denied", "user is unknown or disabled")
        if row.session_hash is not None and db.get(WebSession, row.session_hash) is None:
            return _oauth_error(
                "access_denied", "the browser session that approved this sign-in has ended"
            )
        auth = AuthContext(tuple(row.amr), row.acr, row.auth_time)
        return _Redeemed(row.id, user.id, auth, row.session_hash)


async def token(request: Request) -> Response:
    svc = services(request)
    params = await _read_params(request)
    result = await run_in_threadpool(_redeem, svc, params)
    if isinstance(result, JSONResponse):
        if b"authorization_pending" not in bytes(result.body):
            await svc.record(
                request,
                "cli.token",
                actor="anonymous",
                outcome="rejected",
                details={
                    "grant_type": str(params.get("grant_type", ""))[:80],
                    "error": bytes(result.body).decode()[:200],
                },
            )
        return result
    access, expires = await run_in_threadpool(
        lambda: svc.tokens.issue(
            result.user_id, auth=result.auth, parent_session=result.session_hash
        )
    )
    await svc.record(
        request,
        "cli.token",
        actor=result.user_id,
        outcome="ok",
        subject=result.auth_id,
        details={"expires_at": expires.isoformat(), "amr": list(result.auth.amr)},
    )
    return JSONResponse(
        {
            "access_token": access,
            "token_type": "Bearer",
            "expires_at": expires.isoformat(),
            "expires_in": int((expires - svc.clock.now()).total_seconds()),
        }
    )


async def logout(request: Request) -> Response:
    """``conduit logout``: revoke the bearer token this is called with, and its certificates."""
    svc = services(request)
    principal = await require(request)
    ref = principal.credential
    if principal.via != "token" or ref is None:
        raise BadRequest("call this with the bearer token to revoke (conduit logout)")
    revoked = await run_in_threadpool(
        lambda: svc.credentials.revoke_token(ref.key, by=principal.user_id, reason="conduit logout")
    )
    return JSONResponse({"revoked": True, "certificates": len(revoked.certificates)})


def principal_json(p: Principal) -> dict[str, Any]:
    return {
        "sub": p.sub,
        "email": p.email,
        "name": p.name,
        "roles": list(p.roles),
        "groups": list(p.groups),
        "amr": list(p.auth.amr),
        "acr": p.auth.acr,
        "auth_time": p.auth.auth_time.isoformat() if p.auth.auth_time else None,
        "expires_at": p.expires_at.isoformat(),
        "via": p.via,
    }


routes = [
    Route("/api/cli/device", device_start, methods=["POST"]),
    Route("/api/cli/token", token, methods=["POST"]),
    Route("/api/cli/logout", logout, methods=["POST"]),
    Route("/cli/activate", activate_page, methods=["GET"]),
    Route("/cli/activate", activate_submit, methods=["POST"]),
    Route("/cli/authorize", authorize_page, methods=["GET"]),
    Route("/cli/authorize", authorize_submit, methods=["POST"]),
]
