"""The CLI's token endpoint and sign-out: ``POST /api/cli/token``, ``POST /api/cli/logout``.

``/api/cli/token`` redeems an approved device code (:mod:`broker.api.cli_device`) or a loopback
code with its PKCE verifier and redirect URI (:mod:`broker.api.cli_loopback`) for a short-lived
bearer token, once: the authorization is then consumed. Errors are OAuth-style JSON
(``authorization_pending`` while the person has not decided, ``expired_token``,
``access_denied``, ``invalid_grant``, ``unsupported_grant_type``); every refusal but "pending"
is audited ``cli.token``, as is every token issued. The token inherits the approving session's
``amr``/``acr``/``auth_time`` and dies when that session is signed out
(:mod:`sessions.credentials`); a disabled user or an ended session gets none.
``/api/cli/logout`` revokes the calling token and the SSH certificates it minted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from sqlmodel import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.api.cli_oauth import oauth_error, read_params
from broker.auth.auth import secret_hash
from broker.http.web import require
from broker.runtime.errors import BadRequest
from broker.services import Services, services
from sessions.credentials import AuthContext
from sessions.db import session_scope
from sessions.models import CliAuthorization, User, WebSession

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


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
            return oauth_error("unsupported_grant_type", "use device_code or authorization_code")
        if row is None:
            return oauth_error("invalid_grant", "unknown code")
        if row.state in {"consumed", "expired"}:
            return oauth_error("invalid_grant", "code already used")
        if row.expires_at <= now:
            row.state = "expired"
            db.add(row)
            return oauth_error("expired_token", "the sign-in request expired")
        if row.state == "denied":
            return oauth_error("access_denied", "the sign-in was denied in the browser")
        if row.state == "pending":
            return oauth_error("authorization_pending", "not yet approved in the browser")
        if grant == "authorization_code":
            verifier = str(params.get("code_verifier", ""))
            if not verifier or not hmac.compare_digest(_s256(verifier), row.code_challenge or ""):
                return oauth_error("invalid_grant", "PKCE verification failed")
            if params.get("redirect_uri") != row.redirect_uri:
                return oauth_error("invalid_grant", "redirect_uri does not match")
        row.state = "consumed"
        db.add(row)
        user = db.get(User, row.user_id) if row.user_id else None
        if user is None or user.disabled:
            return oauth_error("access_denied", "user is unknown or disabled")
        if row.session_hash is not None and db.get(WebSession, row.session_hash) is None:
            return oauth_error(
                "access_denied", "the browser session that approved this sign-in has ended"
            )
        auth = AuthContext(tuple(row.amr), row.acr, row.auth_time)
        return _Redeemed(row.id, user.id, auth, row.session_hash)


async def token(request: Request) -> Response:
    svc = services(request)
    params = await read_params(request)
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


routes = [
    Route("/api/cli/token", token, methods=["POST"]),
    Route("/api/cli/logout", logout, methods=["POST"]),
]
