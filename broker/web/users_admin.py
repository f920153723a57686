"""Admins revoke every credential of a user: API, page and (through the API) ``conduit users``.

``GET /api/users`` lists users with their live credentials (CLI tokens, SSH certificates,
browser sessions; never a secret). ``POST /api/users/{id}/revoke`` ``{"reason": ...}`` and the
form on ``/admin/users`` revoke all of them at once (:meth:`CredentialService.revoke_user`):
tokens and certificates are marked revoked, browser sessions end, and live SSH sessions on
them are cut by the front door's credential watch. A reason is required; the change is
audited as ``credentials.revoked`` (scope ``user``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from broker.auth.auth import Principal
from broker.http.request_input import json_object
from broker.http.web import check_csrf, render, require
from broker.runtime.errors import BadRequest, BrokerError
from broker.services import Services, services
from sessions.authorizer import iso
from sessions.credentials import Revoked
from sessions.db import session_scope
from sessions.errors import NotFoundError, SessionsError
from sessions.identity import ADMIN
from sessions.models import ApiToken, SshCertificate, User, WebSession
from sessions.users import StatusChange, UserStatus

PAGE = "/admin/users"


def user_list(svc: Services) -> list[dict[str, Any]]:
    now = svc.clock.now()
    with session_scope(svc.engine) as db:

        def live(model: Any, *where: Any) -> dict[str, int]:
            query = select(model.user_id, func.count()).where(*where).group_by(model.user_id)
            return {user: count for user, count in db.exec(query)}

        tokens = live(ApiToken, col(ApiToken.revoked_at).is_(None), col(ApiToken.expires_at) > now)
        certs = live(
            SshCertificate,
            col(SshCertificate.revoked_at).is_(None),
            col(SshCertificate.expires_at) > now,
        )
        sessions = live(WebSession, col(WebSession.expires_at) > now)
        return [
            {
                "id": u.id,
                "sub": u.sub,
                "name": u.name,
                "email": u.email,
                "roles": list(u.roles),
                "disabled": u.disabled,
                "last_login_at": iso(u.last_login_at) if u.last_login_at else None,
                "tokens": tokens.get(u.id, 0),
                "certificates": certs.get(u.id, 0),
                "sessions": sessions.get(u.id, 0),
            }
            for u in db.exec(select(User).order_by(col(User.name)))
        ]


async def _revoke(request: Request, principal: Principal, user_id: str, reason: str) -> Revoked:
    svc = services(request)
    reason = reason.strip()
    if not reason:
        raise BadRequest("a reason is required to revoke a user's credentials")

    def _run() -> Revoked | None:
        with session_scope(svc.engine) as db:
            if db.get(User, user_id) is None:
                return None
        return svc.credentials.revoke_user(
            user_id, by=principal.user_id, reason=f"revoked by an administrator: {reason[:200]}"
        )

    done = await run_in_threadpool(_run)
    if done is None:
        raise BrokerError(f"no user {user_id}", code="not_found", status=404)
    return done


async def list_api(request: Request) -> Response:
    await require(request, ADMIN)
    return JSONResponse(await run_in_threadpool(user_list, services(request)))


async def revoke_api(request: Request) -> Response:
    principal = await require(request, ADMIN)
    body = await json_object(request)
    done = await _revoke(request, principal, request.path_params["id"], str(body.get("reason", "")))
    return JSONResponse({"id": request.path_params["id"], "revoked": done.as_dict()})


async def users_page(request: Request) -> Response:
    await require(request, ADMIN)
    users = await run_in_threadpool(user_list, services(request))
    return render(
        request, "users.html", {"users": users, "message": request.query_params.get("done")}
    )


async def revoke_form(request: Request) -> Response:
    principal = await require(request, ADMIN)
    form = await check_csrf(request, principal)
    user_id = request.path_params["id"]
    done = await _revoke(request, principal, user_id, str(form.get("reason", "")))
    message = (
        f"revoked {len(done.tokens)} token(s), {len(done.certificates)} SSH certificate(s), "
        f"ended {done.sessions} browser session(s)"
    )
    return RedirectResponse(f"{PAGE}?{urlencode({'done': message})}", status_code=303)


async def _set_status(
    request: Request, principal: Principal, user_id: str, reason: str, disable: bool
) -> StatusChange:
    """Disable or enable ``user_id``; audited either way, a refusal raised (nothing changed)."""
    svc = services(request)
    status = UserStatus(svc.engine, svc.credentials, svc.access)
    kind = "user.disabled" if disable else "user.enabled"
    subject = f"user:{user_id}"

    def _run() -> StatusChange:
        if disable:
            return status.disable(user_id, by=principal.user_id, reason=reason)
        return status.enable(user_id, by=principal.user_id, reason=reason)

    try:
        done = await run_in_threadpool(_run)
    except SessionsError as exc:
        await svc.record(
            request, kind, actor=principal.user_id, outcome="rejected", subject=subject,
            details={"code": exc.code, "error": exc.message, "reason": reason.strip()[:200]},
        )  # fmt: skip
        http = 404 if isinstance(exc, NotFoundError) else 400
        raise BrokerError(exc.message, code=exc.code, status=http) from exc
    revoked = done.revoked
    await svc.record(
        request,
        kind,
        actor=principal.user_id,
        outcome="ok",
        subject=subject,
        details={
            "reason": reason.strip()[:200],
            "changed": done.changed,
            "grants_revoked": list(done.grants),
            "requests_denied": list(done.requests),
            "cli_credentials": len(revoked.tokens),
            "certificates": len(revoked.certificates),
            "sessions": revoked.sessions,
        },
    )
    return done


async def disable_api(request: Request) -> Response:
    return await _status_api(request, disable=True)


async def enable_api(request: Request) -> Response:
    return await _status_api(request, disable=False)


async def _status_api(request: Request, *, disable: bool) -> Response:
    principal = await require(request, ADMIN)
    body = await json_object(request)
    reason = str(body.get("reason", ""))
    done = await _set_status(request, principal, request.path_params["id"], reason, disable)
    return JSONResponse(done.as_dict())


async def disable_form(request: Request) -> Response:
    return await _status_form(request, disable=True)


async def enable_form(request: Request) -> Response:
    return await _status_form(request, disable=False)


async def _status_form(request: Request, *, disable: bool) -> Response:
    principal = await require(request, ADMIN)
    form = await check_csrf(request, principal)
    reason = str(form.get("reason", ""))
    done = await _set_status(request, principal, request.path_params["id"], reason, disable)
    if disable:
        message = (
            f"disabled; revoked {len(done.grants)} grant(s), denied {len(done.requests)} "
            f"pending request(s), {len(done.revoked.tokens)} "
            f"token(s), {len(done.revoked.certificates)} SSH certificate(s), ended "
            f"{done.revoked.sessions} browser session(s)"
        )
    else:
        message = "enabled; the user may sign in again (no grant was restored)"
    return RedirectResponse(f"{PAGE}?{urlencode({'done': message})}", status_code=303)


routes = [
    Route("/api/users", list_api, methods=["GET"]),
    Route("/api/users/{id}/revoke", revoke_api, methods=["POST"]),
    Route(PAGE, users_page, methods=["GET"]),
    Route(f"{PAGE}/{{id}}/revoke", revoke_form, methods=["POST"]),
    Route("/api/users/{id}/disable", disable_api, methods=["POST"]),
    Route("/api/users/{id}/enable", enable_api, methods=["POST"]),
    Route(f"{PAGE}/{{id}}/disable", disable_form, methods=["POST"]),
    Route(f"{PAGE}/{{id}}/enable", enable_form, methods=["POST"]),
]
