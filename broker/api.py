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
    principal = await require(request)
    return JSONResponse(principal_json(principal))


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
