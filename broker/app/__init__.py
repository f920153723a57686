"""Composition root: builds the services from settings and wires routes, errors and headers.

The parts: :mod:`.assembly` builds the services, :mod:`.lifespan` starts and stops what runs,
:mod:`.headers` adds the security headers, :mod:`.alerts` sends alerts.
"""

from __future__ import annotations

import httpx2
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from broker.api import (
    access_api,
    agent_api,
    api,
    cli_auth,
    plant_api,
    plant_objects,
    recordings_api,
    session_api,
)
from broker.app.assembly import BROKER_DIR, build_policy_engine, build_services
from broker.app.headers import SecurityHeaders, security_headers
from broker.app.lifespan import BrokerLifespan
from broker.runtime.errors import BrokerError
from broker.runtime.settings import Settings
from broker.web import (
    access_pages,
    agent_pages,
    clientless_pages,
    identity_page,
    pages,
    plant_pages,
    policy_admin,
    request_page,
    session_pages,
    signin,
    users_admin,
    windows_page,
)
from broker.web.error_pages import on_broker_error, on_http_exception, on_unexpected
from sessions.clock import Clock

__all__ = [
    "BrokerLifespan",
    "SecurityHeaders",
    "build_policy_engine",
    "build_services",
    "create_app",
    "security_headers",
]


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    engine: Engine | None = None,
    oidc_transport: httpx2.AsyncBaseTransport | None = None,
    run_migrations: bool = True,
) -> Starlette:
    """The broker's ASGI app. Migrates the database at start-up unless told not to.

    ``oidc_transport`` lets tests put a tampering layer between the broker and the real IdP.
    """
    svc = build_services(settings, clock=clock, engine=engine, oidc_transport=oidc_transport)
    headers, per_path = security_headers(settings)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette answers a 500 outside every middleware: SecurityHeaders never sees it.
        response = await on_unexpected(request, exc)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    app = Starlette(
        debug=False,
        routes=_routes(),
        exception_handlers={
            BrokerError: on_broker_error,
            HTTPException: on_http_exception,
            Exception: unexpected,
        },
        lifespan=BrokerLifespan(svc, run_migrations=run_migrations),
        middleware=[Middleware(SecurityHeaders, headers=headers, per_path=per_path)],
    )
    app.state.services = svc
    return app


def _routes() -> list[BaseRoute]:
    return [
        *pages.routes,
        *signin.routes,
        *cli_auth.routes,
        *api.routes,
        *access_api.routes,
        *access_pages.routes,
        *windows_page.routes,
        *request_page.routes,
        *recordings_api.routes,
        *identity_page.routes,
        *agent_api.routes,
        *session_api.routes,
        *clientless_pages.routes,
        *session_pages.routes,
        *agent_pages.routes,
        *policy_admin.routes,
        *users_admin.routes,
        *plant_api.routes,
        *plant_objects.routes,
        *plant_pages.routes,
        Mount("/static", app=StaticFiles(directory=str(BROKER_DIR / "static")), name="static"),
    ]
