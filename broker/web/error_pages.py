"""How the broker answers a request that failed: one error shape for every failure.

Browsers get the layout's error page (``error.html``, with the signed-in user's navigation);
``/api/`` paths and clients that accept JSON get ``{"error": code, "message": text}``. This holds
for the broker's own errors (:class:`~broker.runtime.errors.BrokerError`: 400, 401, 403, CSRF
refusals,
503), for routing errors (404 unknown path, 405 wrong method) and for unexpected exceptions
(500, with a reference that is logged; the message never shows the exception).

A browser that is not signed in and GETs a page that needs a sign-in is redirected to
``/signin?next=...`` instead.
"""

from __future__ import annotations

import logging
import secrets
from http import HTTPStatus
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from broker.http.web import current_principal, render
from broker.runtime.errors import BrokerError, NotAuthenticated

log = logging.getLogger("conduit.broker")

# Starlette's routing errors, as the broker names them.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
HTTP_MESSAGES = {
    404: "there is no page at this address",
    405: "this address does not accept that kind of request",
}
HEADINGS = {
    400: "Request refused",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    503: "Identity provider unavailable",
}


def wants_json(request: Request) -> bool:
    """API paths and JSON clients get JSON errors; everyone else the HTML error page."""
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


async def on_broker_error(request: Request, exc: Exception) -> Response:
    """Answer a :class:`BrokerError` (the error tree's status and code) in the caller's format."""
    assert isinstance(exc, BrokerError)
    return await _answer(request, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Answer Starlette's routing errors (404, 405, ...) like the broker's own errors."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code = HTTP_CODES.get(status, f"http_{status}")
    message = HTTP_MESSAGES.get(status) or _phrase(status)
    response = await _answer(request, BrokerError(message, code=code, status=status))
    for name, value in (exc.headers or {}).items():  # e.g. Allow on a 405
        response.headers[name] = value
    return response


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with a reference the user sees; the exception itself is never shown."""
    ref = secrets.token_hex(6)
    log.exception("unhandled error %s on %s %s", ref, request.method, request.url.path)
    err = BrokerError(f"internal error; reference {ref}", code="internal_error")
    return await _answer(request, err)


async def _answer(request: Request, exc: BrokerError) -> Response:
    json = wants_json(request)
    if isinstance(exc, NotAuthenticated) and not json and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?{urlencode({'next': target})}", status_code=303)
    if json:
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)
    if "principal" not in request.scope:  # a routing error: no page looked the user up yet
        try:
            await current_principal(request)
        except Exception:  # a refused credential or a failing store: show it without a user
            request.scope["principal"] = None
    heading = HEADINGS.get(exc.status) or (
        "Something went wrong" if exc.status >= 500 else "Request refused"
    )
    return render(request, "error.html", {"error": exc, "heading": heading}, status=exc.status)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"HTTP status {status}"
