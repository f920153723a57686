"""JSON API for the CLI and integrations (bearer token or session cookie)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.auth.auth import Principal
from broker.http.web import require
from broker.services import services


def principal_json(p: Principal) -> dict[str, Any]:
    """Who is asking, as ``/api/whoami`` answers (no credential, no CSRF token)."""
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


async def whoami(request: Request) -> Response:
    """Who is asking; with the session cookie also the session's CSRF token, which
    same-origin scripts send as ``X-CSRF-Token`` (other origins cannot read this answer)."""
    principal = await require(request)
    body = principal_json(principal)
    if principal.via == "session":
        body["csrf_token"] = principal.csrf_token
    return JSONResponse(body)


async def health(request: Request) -> Response:
    """Readiness: 200 ``{"status": "ok", "checks": {...}}`` or 503 ``"unavailable"`` naming the
    failing check. ``recording_storage`` fails while strict sessions would be refused (see
    :mod:`broker.runtime.recording_storage`); ``audit_checkpoints`` is reported, never fatal. The
    answer is public: it names problems in a few words, without paths or ids."""
    svc = services(request)

    def _ping() -> None:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    await run_in_threadpool(_ping)
    checks: dict[str, str] = {"database": "ok"}
    storage = svc.storage.problem
    checks["recording_storage"] = "ok" if storage is None else f"failing: {storage}"
    cp = svc.checkpoints
    if cp is not None:  # details (paths, seqs) are in the log and the audit log, not here
        checks["audit_checkpoints"] = (
            "failing: the audit log does not match its checkpoints"
            if cp.mismatch
            else "failing: checkpoints cannot be shipped"
            if cp.problem
            else "ok"
        )
    ready = storage is None
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


routes = [
    Route("/api/whoami", whoami),
    Route("/healthz", health),
]
