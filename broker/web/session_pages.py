"""``/sessions``: this broker's live sessions, with a kill switch for admins.

The list shows the live sessions the user may see (``broker/http/visibility.py``: admins and
security all, approvers those on assets their groups own, vendors their own); admins can end
one (CSRF form, confirmed through ``<details>`` since the CSP forbids inline scripts), audited
as ``session.killed`` exactly like ``POST /api/sessions/{id}/kill``.

Recordings are :mod:`broker.web.recording_pages` and :mod:`broker.web.operations_page`;
:data:`routes` lists theirs too, so the composition root registers all session pages at once.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.http.live_session_end import end_live_session
from broker.http.visibility import live_rows
from broker.http.web import check_csrf, render, require
from broker.services import services
from broker.web import operations_page, recording_pages
from sessions.identity import ADMIN, APPROVER, SECURITY, VENDOR


def _done(path: str, message: str) -> Response:
    return RedirectResponse(f"{path}?{urlencode({'message': message})}", status_code=303)


async def sessions_page(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    svc = services(request)
    rows = await run_in_threadpool(live_rows, svc.engine, principal, svc.live.list())
    ctx = {"sessions": rows, "message": request.query_params.get("message")}
    return render(request, "sessions.html", ctx)


async def kill_session(request: Request) -> Response:
    principal = await require(request, ADMIN)
    await check_csrf(request, principal)
    session_id = request.path_params["id"]
    if await end_live_session(request, principal, session_id) is None:
        return _done("/sessions", f"Session {session_id} is not live on this broker.")
    return _done("/sessions", f"Session {session_id} ended.")


routes = [
    Route("/sessions", sessions_page, methods=["GET"]),
    Route("/sessions/{id}/kill", kill_session, methods=["POST"]),
    *recording_pages.routes,
    *operations_page.routes,
]
