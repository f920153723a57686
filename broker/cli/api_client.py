"""Calls to the broker's JSON API with the stored CLI token (see ``conduit login``)."""

from __future__ import annotations

from typing import Any

import httpx2

from broker.cli import credentials
from broker.errors import BrokerError


def call(
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> Any:
    """The decoded JSON answer; raises BrokerError with the broker's message and reasons."""
    stored = credentials.load()
    if stored is None or stored.expired():
        raise BrokerError(
            "not signed in (or the token expired): run `conduit login`", code="not_authenticated"
        )
    try:
        with httpx2.Client(timeout=15.0) as client:
            resp = client.request(
                method,
                stored.broker + path,
                json=body,
                params=params,
                headers={"Authorization": f"Bearer {stored.access_token}"},
            )
    except httpx2.HTTPError as exc:
        raise BrokerError(
            f"broker {stored.broker} unreachable: {type(exc).__name__}", code="broker_unreachable"
        ) from exc
    try:
        data = resp.json()
    except ValueError:
        data = {"message": resp.text[:200]}
    if resp.status_code >= 400:
        message = (
            data.get("message", f"HTTP {resp.status_code}") if isinstance(data, dict) else str(data)
        )
        reasons = data.get("reasons") if isinstance(data, dict) else None
        if reasons:
            message += "".join(f"\n  - {r}" for r in reasons)
        raise BrokerError(
            message,
            code=str(data.get("error", "api_error")) if isinstance(data, dict) else "api_error",
        )
    return data
