"""JSON API for the CLI and integrations (bearer token or session cookie)."""

from __future__ import annotations

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.cli_auth import principal_json
from broker.services import services
from broker.web import require


async def whoami(request: Request) -> Response:
    """Who is asking; with the session cookie also the session's CSRF token, which
    same-origin scripts send as ``X-CSRF-Token`` (other origins cannot read this answer)."""
    principal = await require(request)
    body = principal_json(principal)
    if principal.via == "session":
        body["csrf_token"] = principal.csrf_token
    return JSONResponse(body)


async def health(request: Request) -> Response:
    svc = services(request)

    def _ping() -> None:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    await run_in_threadpool(_ping)
    return JSONResponse({"status": "ok"})


routes = [
    Route("/api/whoami", whoami),
    Route("/healthz", health),
]
