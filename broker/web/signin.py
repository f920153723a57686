"""Browser sign-in and sign-out through the OpenID provider (routes ``/login``,
``/auth/callback``, ``/logout``).

Each sign-in attempt is a one-time *login flow* stored server-side under the hash of its
``state``: it holds the nonce, the PKCE verifier and the hash of a binding cookie given to
the browser that started it. The callback consumes the flow atomically, so a replayed,
unknown, expired or foreign ``state`` is refused. A user an admin disabled
(:mod:`sessions.users`) is refused after the IdP's answer (403, no session, code
``user_disabled``). Every outcome is audited.
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any, NoReturn

from sqlalchemy import delete
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.auth.auth import LOGIN_COOKIE, SESSION_COOKIE, auth_context, secret_hash
from broker.auth.oidc import TokenSet, new_code_verifier, new_state
from broker.http.web import check_csrf, current_principal, render, require
from broker.runtime.errors import AuthError, BrokerError, IdpUnavailable
from broker.services import Services, services
from sessions.credentials import Revoked
from sessions.db import session_scope
from sessions.identity import map_roles, upsert_user
from sessions.models import LoginFlow


def safe_return_to(value: str | None) -> str:
    """Only same-site absolute paths are followed after sign-in (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _store_flow(
    svc: Services, state: str, nonce: str, verifier: str, binding: str, ret: str
) -> None:
    now = svc.clock.now()
    flow = LoginFlow(
        state_hash=secret_hash(state),
        nonce=nonce,
        code_verifier=verifier,
        browser_binding_hash=secret_hash(binding),
        return_to=ret,
        created_at=now,
        expires_at=now + timedelta(seconds=svc.settings.login_flow_ttl_s),
    )
    with session_scope(svc.engine) as db:
        db.exec(delete(LoginFlow).where(col(LoginFlow.expires_at) <= now))
        db.add(flow)


def _consume_flow(svc: Services, state: str) -> LoginFlow | None:
    """Delete and return the flow for ``state``; None if unknown or already used."""
    with session_scope(svc.engine, write=True) as db:
        flow = db.get(LoginFlow, secret_hash(state))
        if flow is None:
            return None
        result = db.exec(delete(LoginFlow).where(col(LoginFlow.state_hash) == flow.state_hash))
        if result.rowcount != 1:  # lost a race with a concurrent replay
            return None
        db.expunge(flow)
        return flow


async def login(request: Request) -> Response:
    svc = services(request)
    ret = safe_return_to(request.query_params.get("next"))
    state, nonce, verifier, binding = new_state(), new_state(), new_code_verifier(), new_state()
    try:
        url = await svc.oidc.authorization_url(state=state, nonce=nonce, code_verifier=verifier)
    except IdpUnavailable as exc:
        await svc.record(
            request,
            "auth.login",
            actor="anonymous",
            outcome="error",
            details={"code": exc.code, "error": exc.message},
        )
        raise
    await run_in_threadpool(_store_flow, svc, state, nonce, verifier, binding, ret)
    resp = RedirectResponse(url, status_code=302)
    resp.set_cookie(
        LOGIN_COOKIE,
        binding,
        max_age=svc.settings.login_flow_ttl_s,
        path="/auth",
        httponly=True,
        secure=svc.settings.secure_cookies,
        samesite="lax",
    )
    return resp


async def _reject(request: Request, exc: BrokerError, details: dict[str, Any]) -> None:
    await services(request).record(
        request,
        "auth.login",
        actor="anonymous",
        outcome="rejected",
        details={"code": exc.code, "error": exc.message, **details},
    )


async def _refuse(
    request: Request, err: AuthError, details: dict[str, Any] | None = None
) -> NoReturn:
    """Audit the refusal and raise it."""
    await _reject(request, err, details or {})
    raise err


async def _checked_flow(request: Request, svc: Services) -> tuple[LoginFlow, str]:
    """The callback's login flow (consumed) and authorization code; refusals audited, raised."""
    params = request.query_params
    if "error" in params:
        idp_error = params.get("error", "")[:100]
        await _refuse(
            request,
            AuthError(f"the identity provider refused the sign-in ({idp_error})", code="idp_error"),
            {"idp_error": idp_error},
        )
    state, code = params.get("state", ""), params.get("code", "")
    if not state or not code:
        await _refuse(
            request, AuthError("sign-in callback lacks state or code", code="callback_malformed")
        )
    flow = await run_in_threadpool(_consume_flow, svc, state)
    if flow is None:
        await _refuse(
            request,
            AuthError(
                "this sign-in link is unknown or was already used; start again",
                code="unknown_state",
            ),
        )
    if flow.expires_at <= svc.clock.now():
        await _refuse(
            request, AuthError("this sign-in attempt expired; start again", code="expired_state")
        )
    binding = request.cookies.get(LOGIN_COOKIE, "")
    if not hmac.compare_digest(secret_hash(binding), flow.browser_binding_hash):
        await _refuse(
            request,
            AuthError(
                "this sign-in was started in another browser; start again", code="state_not_bound"
            ),
        )
    return flow, code


async def _signed_claims(
    request: Request, svc: Services, flow: LoginFlow, code: str
) -> tuple[TokenSet, dict[str, Any]]:
    """Redeem the code at the IdP: its tokens and the claims (the signed ID token wins over
    userinfo). An IdP failure is audited and raised."""
    try:
        tokens = await svc.oidc.exchange_code(
            code=code, code_verifier=flow.code_verifier, nonce=flow.nonce
        )
        claims: dict[str, Any] = dict(tokens.claims)
        if svc.settings.oidc.fetch_userinfo and tokens.access_token:
            info = await svc.oidc.userinfo(tokens.access_token, str(claims["sub"]))
            claims = {**info, **claims}  # the signed ID token wins on conflicts
    except BrokerError as exc:
        await _reject(request, exc, {})
        raise
    return tokens, claims


def _signed_in(svc: Services, return_to: str, cookie: str) -> Response:
    """Back to where the sign-in started, with the session cookie and without the login one."""
    resp = RedirectResponse(return_to, status_code=303)
    resp.delete_cookie(LOGIN_COOKIE, path="/auth")
    resp.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=svc.settings.session_ttl_s,
        path="/",
        httponly=True,
        secure=svc.settings.secure_cookies,
        samesite="lax",
    )
    return resp


async def callback(request: Request) -> Response:
    """``/auth/callback``: check the flow, redeem the code, upsert the user, start a session
    (none for a disabled user: audited and refused with 403)."""
    svc = services(request)
    flow, code = await _checked_flow(request, svc)
    tokens, claims = await _signed_claims(request, svc, flow, code)
    identity = svc.oidc.identity(claims)
    roles = map_roles(identity.groups, svc.settings.roles.as_mapping())
    auth = auth_context(identity.amr, identity.acr, claims)

    def _sign_in() -> tuple[str, str | None]:
        with session_scope(svc.engine, write=True) as db:
            user = upsert_user(db, identity, roles, svc.clock)
            user_id, disabled = user.id, user.disabled
        if disabled:  # offboarded by an admin (sessions.users): no session at all
            return user_id, None
        # Tokens and certificates issued under a role the IdP no longer grants die now.
        svc.credentials.revoke_lost_roles(user_id, roles)
        value, _ = svc.web_sessions.create(user_id, tokens.id_token, auth)
        return user_id, value

    user_id, cookie = await run_in_threadpool(_sign_in)
    if cookie is None:
        await svc.record(
            request,
            "auth.login",
            actor=user_id,
            outcome="rejected",
            subject=identity.sub,
            details={"code": "user_disabled", "error": "the account is disabled"},
        )
        raise AuthError(
            "your account is disabled; ask an administrator of this broker",
            code="user_disabled",
            status=403,
        )
    await svc.record(
        request,
        "auth.login",
        actor=user_id,
        outcome="ok",
        subject=identity.sub,
        details={
            "roles": roles,
            "groups": list(identity.groups),
            "amr": list(identity.amr),
            "acr": identity.acr,
            "no_roles": not roles,
        },
    )
    return _signed_in(svc, flow.return_to, cookie)


async def logout(request: Request) -> Response:
    """Sign out: the session ends, and so do the CLI tokens it approved and the SSH
    certificates it or they minted; with ``everywhere`` every credential of the user."""
    svc = services(request)
    principal = await require(request)
    form = await check_csrf(request, principal)
    everywhere = form.get("everywhere") in ("1", "on", "true")
    session = principal.credential
    revoked = Revoked()
    if everywhere:
        revoked = await run_in_threadpool(
            lambda: svc.credentials.revoke_user(
                principal.user_id, by=principal.user_id, reason="signed out everywhere"
            )
        )
    elif session is not None and session.kind == "session":
        revoked = await run_in_threadpool(
            lambda: svc.credentials.revoke_minted_by_session(
                session.key, by=principal.user_id, reason="signed out", user_id=principal.user_id
            )
        )
    hint = await run_in_threadpool(
        svc.web_sessions.destroy, request.cookies.get(SESSION_COOKIE, "")
    )
    await svc.record(
        request,
        "auth.logout",
        actor=principal.user_id,
        outcome="ok",
        details={"everywhere": everywhere, **revoked.as_dict()},
    )
    home = svc.settings.public_url.rstrip("/") + "/"
    target = await svc.oidc.end_session_url(id_token_hint=hint, post_logout=home) or "/"
    resp = RedirectResponse(target, status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


async def login_page(request: Request) -> Response:
    """A landing page for signed-out users (the layout's sign-in button goes to /login)."""
    if await current_principal(request) is not None:
        return RedirectResponse("/", status_code=303)
    return render(
        request, "signed_out.html", {"next": safe_return_to(request.query_params.get("next"))}
    )


routes = [
    Route("/login", login, methods=["GET"]),
    Route("/signin", login_page, methods=["GET"]),
    Route("/auth/callback", callback, methods=["GET"]),
    Route("/logout", logout, methods=["POST"]),
]
