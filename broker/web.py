"""Request helpers shared by the route modules: who is asking, role checks, rendering, CSRF."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from broker.auth import SESSION_COOKIE, Principal
from broker.errors import BadRequest, Forbidden, NotAuthenticated
from broker.services import services

NAV = (
    # (role, label, path): the layout shows the links of the roles the user holds.
    ("vendor", "My access", "/vendor"),
    ("approver", "Approvals", "/approvals"),
    ("approver", "Grants", "/admin/grants"),
    ("admin", "Grants", "/admin/grants"),
    ("admin", "Assets", "/admin/assets"),
    ("admin", "Agents", "/admin/agents"),
    ("admin", "Policy", "/admin/policy"),
    ("admin", "What-if", "/admin/whatif"),
    ("security", "Audit log", "/security/audit"),
    ("admin", "Audit log", "/security/audit"),
    ("admin", "Sessions", "/sessions"),
    ("security", "Sessions", "/sessions"),
    ("admin", "Recordings", "/recordings"),
    ("security", "Recordings", "/recordings"),
    ("vendor", "Recordings", "/recordings"),
)


async def current_principal(request: Request) -> Principal | None:
    """The signed-in principal from the bearer token or the session cookie, else None."""
    if "principal" in request.scope:
        cached: Principal | None = request.scope["principal"]
        return cached
    svc = services(request)
    principal: Principal | None = None
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        principal = await run_in_threadpool(svc.tokens.lookup, auth[7:].strip())
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal = await run_in_threadpool(svc.web_sessions.lookup, cookie)
    request.scope["principal"] = principal
    return principal


async def require(request: Request, *roles: str) -> Principal:
    """The principal, who must hold one of ``roles`` (any signed-in user if none given).

    Raises NotAuthenticated (401) or Forbidden (403); a refusal is audited.
    """
    principal = await current_principal(request)
    if principal is None:
        raise NotAuthenticated("sign in to continue")
    if roles and not principal.has(*roles):
        await services(request).record(
            request,
            "access.denied",
            actor=principal.user_id,
            outcome="deny",
            subject=request.url.path,
            details={"needs_any_of": list(roles), "has": list(principal.roles)},
        )
        raise Forbidden(f"this page needs the role {' or '.join(roles)}")
    return principal


async def check_csrf(request: Request, principal: Principal) -> dict[str, Any]:
    """Parse a form POST and check its ``csrf`` field against the session's token."""
    form = dict(await request.form())
    if principal.via == "token":
        return form  # bearer requests carry no ambient credentials
    sent = str(form.get("csrf", ""))
    if not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
        raise BadRequest("the form expired or was not sent by this site; reload and retry")
    return form


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> Response:
    """Render a page in the layout; the layout reads ``principal`` and ``nav``."""
    principal: Principal | None = request.scope.get("principal")
    nav: list[tuple[str, str]] = []
    if principal is not None:
        for role, label, path in NAV:
            if role in principal.roles and (label, path) not in nav:
                nav.append((label, path))
    ctx = {"principal": principal, "nav": nav, **(context or {})}
    return services(request).templates.TemplateResponse(request, template, ctx, status_code=status)
