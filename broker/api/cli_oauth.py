"""Pieces shared by the CLI sign-in flows (:mod:`broker.api.cli_auth`): request parameters,
OAuth-style errors, the requester's client name, and binding an approval to its browser session.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from broker.auth.auth import Principal
from broker.http.request_input import json_object
from sessions.models import CliAuthorization


def oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def client_name(raw: object) -> str:
    """The requester's own name for itself, printable and short: audit only, never trusted."""
    name = str(raw or "conduit CLI")
    return "".join(c for c in name if c.isprintable())[:80] or "conduit CLI"


async def read_params(request: Request) -> dict[str, Any]:
    """A JSON object body or form fields; 400 for JSON that is not an object."""
    if request.headers.get("content-type", "").startswith("application/json"):
        return await json_object(request)
    return dict(await request.form())


def bind_session(row: CliAuthorization, principal: Principal, session_hash: str) -> None:
    """The token to come inherits the approving session's authentication and dies with it."""
    row.amr = list(principal.auth.amr)
    row.acr = principal.auth.acr
    row.auth_time = principal.auth.auth_time
    row.session_hash = session_hash
