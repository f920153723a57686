"""Request helpers shared by the route modules: who is asking, role checks, rendering, CSRF.

Cross-site requests: HTML forms carry the session's CSRF token in a ``csrf`` field
(:func:`check_csrf`). A call to the JSON API (``/api/...``) that changes state (any method
but GET/HEAD/OPTIONS) and is authenticated by the session cookie must send
``Content-Type: application/json``, the session's token in ``X-CSRF-Token`` and an ``Origin``
equal to the broker's ``public_url``; anything else is refused with 403 and an
``auth.csrf_refused`` audit event. Bearer-token calls carry no ambient credential and need none
of it. Same-origin scripts read the token from ``GET /api/whoami`` or the page's
``<meta name="csrf-token">``.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from broker.auth.auth import CURRENT_PRINCIPAL, SESSION_COOKIE, Principal, TokenRefused
from broker.runtime.errors import BadRequest, Forbidden, NotAuthenticated
from broker.services import services

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"

NAV = (
    # (role, label, path): the layout shows the links of the roles the user holds.
    ("vendor", "My access", "/vendor"),
    ("approver", "Approvals", "/approvals"),
    ("approver", "Grants", "/admin/grants"),
    ("admin", "Grants", "/admin/grants"),
    ("admin", "Plant", "/admin/plant"),
    ("admin", "Windows", "/admin/windows"),
    ("approver", "Windows", "/admin/windows"),
    ("admin", "Assets", "/admin/assets"),
    ("admin", "Agents", "/admin/agents"),
    ("admin", "Users", "/admin/users"),
    ("admin", "Identity", "/admin/identity"),
    ("admin", "Policy", "/admin/policy"),
    ("admin", "What-if", "/admin/whatif"),
    ("security", "Audit log", "/security/audit"),
    ("admin", "Audit log", "/security/audit"),
    ("admin", "Sessions", "/sessions"),
    ("security", "Sessions", "/sessions"),
    ("approver", "Sessions", "/sessions"),
    ("vendor", "Sessions", "/sessions"),
    ("admin", "Recordings", "/recordings"),
    ("security", "Recordings", "/recordings"),
    ("approver", "Recordings", "/recordings"),
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
        try:
            principal = await run_in_threadpool(svc.tokens.lookup, auth[7:].strip())
        except TokenRefused as exc:
            await svc.record(
                request,
                "auth.bearer_refused",
                actor=exc.user_id,
                outcome="rejected",
                subject=f"cli:{exc.token_id}",
                details={"reason": exc.reason, "method": request.method, "path": request.url.path},
            )
            raise NotAuthenticated(
                f"{exc.reason}; run `conduit login` again", code="token_refused"
            ) from None
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal = await run_in_threadpool(svc.web_sessions.lookup, cookie)
            if principal is not None and _cookie_guarded(request):
                await _check_api_csrf(request, principal)
    request.scope["principal"] = principal
    CURRENT_PRINCIPAL.set(principal)
    return principal


def _cookie_guarded(request: Request) -> bool:
    return request.method not in SAFE_METHODS and request.url.path.startswith("/api/")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` in lower case, default ports dropped (as browsers send it)."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme.lower()}://{host}{port}"


def _api_csrf_problem(request: Request, principal: Principal, expected_origin: str) -> str | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return f"Content-Type is {content_type or 'missing'}, not application/json"
    origin = request.headers.get("origin")
    if not origin:
        return "the Origin header is missing"
    if origin_of(origin) != expected_origin:
        return f"Origin {origin[:100]} is not this broker ({expected_origin})"
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
        return f"the {CSRF_HEADER} header is missing or not this session's"
    return None


async def _check_api_csrf(request: Request, principal: Principal) -> None:
    """Refuse (403, audited) a cookie-authenticated state change without the CSRF proof."""
    svc = services(request)
    expected = origin_of(svc.settings.public_url)
    problem = _api_csrf_problem(request, principal, expected)
    if problem is None:
        return
    await svc.record(
        request,
        "auth.csrf_refused",
        actor=principal.user_id,
        outcome="rejected",
        subject=request.url.path,
        details={
            "method": request.method,
            "reason": problem,
            "origin": request.headers.get("origin", "")[:200],
            "content_type": request.headers.get("content-type", "")[:100],
        },
    )
    raise Forbidden(
        f"refused: {problem}. A call that changes state with the session cookie needs "
        f"Content-Type: application/json, the session's {CSRF_HEADER} header and Origin "
        f"{expected}; scripts and tools use a bearer token (conduit login)",
        code="csrf_refused",
    )


def refusal(request: Request, needs: tuple[str, ...], has: tuple[str, ...]) -> str:
    """Why a role check failed, worded for where it is read: a page, or an API/CLI call
    ("this action needs the admin role; you have: vendor"; the CLI says "this command")."""
    surface = "action" if request.url.path.startswith("/api/") else "page"
    needed = " or ".join(needs)
    return f"this {surface} needs the {needed} role; you have: {', '.join(has) or 'no role'}"


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
        raise Forbidden(refusal(request, roles, principal.roles))
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
