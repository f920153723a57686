"""Anonymous CLI device-flow starts (``POST /api/cli/device``): a per-address limit and one
audit event per address and interval instead of one per start.

Anyone can start a device sign-in, so the starts are where a flood would land. An address may
hold at most ``device_pending_per_ip`` unexpired, not yet approved device codes at a time
(codes live ``device_code_ttl_s``); more are refused with 429 and a ``Retry-After``. The count
is read from the database, so it holds across brokers. Expired sign-in requests of both flows
are deleted at each start and each flush. Starts and refusals are tallied per address and written
every ``device_audit_interval_s`` as ``cli.device_started`` (outcome ``ok``, ``count``) and
``cli.device_refused`` (outcome ``rejected``, ``count``, ``reason``), each with up to three of
the (untrusted) client names sent. Owner: the app's lifespan (``start``/``aclose``, which
writes what is still tallied).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, func
from sqlmodel import col, select

from broker.runtime.periodic import Periodic
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.db import session_scope
from sessions.models import CliAuthorization, CliAuthorizationKind, CliAuthorizationState

log = logging.getLogger("conduit.cli_auth")
MAX_NAMES = 3


@dataclass
class _Tally:
    started: int = 0
    refused: int = 0
    first: datetime | None = None
    last: datetime | None = None
    names: list[str] = field(default_factory=list)


class DeviceStarts:
    """Admission and aggregated audit of anonymous device-flow starts (thread-safe)."""

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        clock: Clock,
        *,
        pending_per_ip: int,
        interval_s: float,
    ) -> None:
        self._engine, self._audit, self._clock = engine, audit, clock
        self._limit = pending_per_ip
        self._tallies: dict[str, _Tally] = {}
        self._lock = threading.Lock()
        self._periodic = Periodic(
            self.flush, interval_s, "writing device sign-in audit events", log
        )

    def retry_after(self, ip: str | None) -> int | None:
        """None if ``ip`` may start another device sign-in, else seconds until it may.

        Blocking (database); purges expired sign-in requests first.
        """
        now = self._clock.now()
        with session_scope(self._engine, write=True) as db:
            db.exec(delete(CliAuthorization).where(col(CliAuthorization.expires_at) <= now))
            count, oldest = db.exec(
                select(func.count(), func.min(CliAuthorization.expires_at)).where(
                    CliAuthorization.kind == CliAuthorizationKind.DEVICE,
                    CliAuthorization.state == CliAuthorizationState.PENDING,
                    CliAuthorization.source_ip == ip,
                )
            ).one()
        if count < self._limit or oldest is None:
            return None
        return max(1, math.ceil((_aware(oldest) - now).total_seconds()))

    def note(self, ip: str | None, *, admitted: bool, client_name: str) -> None:
        now = self._clock.now()
        with self._lock:
            tally = self._tallies.setdefault(ip or "unknown", _Tally())
            if admitted:
                tally.started += 1
            else:
                tally.refused += 1
            tally.first = tally.first or now
            tally.last = now
            if client_name not in tally.names and len(tally.names) < MAX_NAMES:
                tally.names.append(client_name)

    async def flush(self) -> None:
        """Write one event per address (and outcome) for what was tallied; purge expired rows."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        for ip, tally in tallies.items():
            await self._record(ip, tally)
        await asyncio.to_thread(self._purge_expired)

    async def _record(self, ip: str, tally: _Tally) -> None:
        common = {
            "first_at": tally.first.isoformat() if tally.first else None,
            "last_at": tally.last.isoformat() if tally.last else None,
            "client_names": tally.names,
        }
        source = None if ip == "unknown" else ip
        if tally.started:
            await self._audit.record(
                "cli.device_started",
                actor="anonymous",
                outcome="ok",
                source_ip=source,
                details={"count": tally.started, **common},
            )
        if tally.refused:
            await self._audit.record(
                "cli.device_refused",
                actor="anonymous",
                outcome="rejected",
                source_ip=source,
                details={
                    "count": tally.refused,
                    "reason": f"more than {self._limit} pending device sign-ins",
                    **common,
                },
            )

    def _purge_expired(self) -> None:
        with session_scope(self._engine, write=True) as db:
            db.exec(
                delete(CliAuthorization).where(
                    col(CliAuthorization.expires_at) <= self._clock.now()
                )
            )

    def start(self) -> None:
        """Start the periodic flush (owned: stopped and awaited by :meth:`aclose`)."""
        self._periodic.start()

    async def aclose(self) -> None:
        """Stop the periodic flush, then write what is still tallied."""
        await self._periodic.aclose()
        await self.flush()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
