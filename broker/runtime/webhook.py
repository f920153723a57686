"""Outbound webhook: every access state change, POSTed as signed JSON to a configured URL.

Body: ``{"event": kind, "subject": id, "details": {...}, "sent_at": ISO}`` in canonical JSON
(:func:`policies.canonical.canonical_bytes`; ``sent_at`` from the injected clock). Headers:
``X-Conduit-Timestamp`` (Unix seconds) and ``X-Conduit-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``timestamp + "." + body`` keyed with ``webhook_secret``; receivers should check
it and reject timestamps older than a few minutes. Delivery is best effort: three tries with
backoff, then a ``webhook.failed`` audit event; it never blocks or fails the change itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from typing import Any

import httpx2

from policies.canonical import canonical_bytes, format_timestamp
from sessions.audit import AuditLog
from sessions.clock import Clock

log = logging.getLogger("conduit.webhook")
TRIES = 3


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return (
        "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


class WebhookNotifier:
    """Owns a delivery task: call :meth:`start` inside the event loop, :meth:`aclose` at exit."""

    def __init__(self, url: str, secret: bytes, audit: AuditLog, clock: Clock) -> None:
        self._url, self._secret, self._audit, self._clock = url, secret, audit, clock
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._deliver_forever())

    def notify(self, kind: str, subject: str, details: dict[str, Any]) -> None:
        """Queue one event; safe from any thread. Dropped (and logged) if the queue is full."""
        event = {
            "event": kind,
            "subject": subject,
            "details": details,
            "sent_at": format_timestamp(self._clock.now()),
        }
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.error("webhook queue full; dropped %s", event["event"])

    async def _deliver_forever(self) -> None:
        async with httpx2.AsyncClient(timeout=5.0, trust_env=False) as client:
            while True:
                event = await self._queue.get()
                await self._deliver(client, event)

    async def _deliver(self, client: httpx2.AsyncClient, event: dict[str, Any]) -> None:
        try:
            body = canonical_bytes(event)
        except (TypeError, ValueError) as exc:  # details the audit log took are always JSON
            await self._failed(event, f"not JSON: {type(exc).__name__}")
            return
        error = ""
        for attempt in range(TRIES):
            timestamp = str(int(self._clock.now().timestamp()))
            headers = {
                "Content-Type": "application/json",
                "X-Conduit-Timestamp": timestamp,
                "X-Conduit-Signature": sign(self._secret, timestamp, body),
            }
            try:
                resp = await client.post(self._url, content=body, headers=headers)
                if resp.status_code < 300:
                    return
                error = f"HTTP {resp.status_code}"
            except httpx2.HTTPError as exc:
                error = type(exc).__name__
            await asyncio.sleep(0.2 * 2**attempt)
        await self._failed(event, error)

    async def _failed(self, event: dict[str, Any], error: str) -> None:
        await self._audit.record(
            "webhook.failed",
            actor="system",
            outcome="error",
            subject=str(event["subject"]),
            details={"event": event["event"], "error": error},
        )

    async def aclose(self) -> None:
        """Stop the delivery task and wait for it; events queued later are dropped."""
        self._loop = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
