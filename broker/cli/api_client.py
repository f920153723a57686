"""Calls to the broker's JSON API with the stored CLI token (see ``conduit login``).

Every failure becomes a :class:`BrokerError` with one line for the user: the broker's own
message (with its reasons), "not signed in", or :func:`unreachable` when no answer came.
A refusal for a missing role ("this action needs the admin role; you have: vendor") is shown
as "this command needs ...": on the command line, the command is the action.
"""

from __future__ import annotations

import errno
from typing import Any

import httpx2

from broker.cli import credentials
from broker.runtime.errors import BrokerError

TIMEOUT_S = 15.0


def unreachable(broker: str, exc: httpx2.HTTPError) -> BrokerError:
    """``cannot reach the broker at URL: connection refused; is `conduit serve` running?``"""
    if isinstance(exc, httpx2.TimeoutException):
        why = "no answer in time"
    elif isinstance(exc, httpx2.ConnectError):
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        refused = isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        text = str(exc).lower()
        why = "connection refused" if refused or "refused" in text else f"cannot connect ({exc})"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return BrokerError(
        f"cannot reach the broker at {broker}: {why}; is `conduit serve` (or `conduit demo`) "
        "running there? (`conduit login --broker URL` switches brokers)",
        code="broker_unreachable",
    )


def signed_in() -> credentials.StoredToken:
    """The stored token; :class:`BrokerError` ``not_authenticated`` if none or expired."""
    stored = credentials.load()
    if stored is None:
        raise BrokerError(
            "not signed in: run `conduit login --broker URL` first", code="not_authenticated"
        )
    if stored.expired():
        raise BrokerError(
            f"the sign-in to {stored.broker} expired: run `conduit login`",
            code="not_authenticated",
        )
    return stored


def _refusal(data: Any, status: int) -> BrokerError:
    if not isinstance(data, dict):
        return BrokerError(f"the broker answered HTTP {status}: {str(data)[:200]}")
    message = str(data.get("message") or data.get("error_description") or f"HTTP {status}")
    code = str(data.get("error", "api_error"))
    if code == "forbidden":
        message = message.replace("this action needs", "this command needs", 1)
    if status == 401:
        message = f"{message}: run `conduit login` again"
    reasons = data.get("reasons")
    if reasons:
        message += ": " + "; ".join(str(r) for r in reasons)
    return BrokerError(message, code=code)


def call(
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    not_found: str | None = None,
) -> Any:
    """The decoded JSON answer; raises BrokerError with the broker's message and reasons
    (``not_found``, if given, replaces the broker's message for a 404)."""
    stored = signed_in()
    try:
        with httpx2.Client(timeout=TIMEOUT_S) as client:
            resp = client.request(
                method,
                stored.broker + path,
                json=body,
                params=params,
                headers={"Authorization": f"Bearer {stored.access_token}"},
            )
    except httpx2.HTTPError as exc:
        raise unreachable(stored.broker, exc) from exc
    try:
        data = resp.json()
    except ValueError:
        data = {"message": resp.text[:200]}
    if resp.status_code == 404 and not_found is not None:
        raise BrokerError(not_found, code="not_found")
    if resp.status_code >= 400:
        raise _refusal(data, resp.status_code)
    return data
