"""Alerts: operations a reviewer must know about, audited and told to the access listeners
(the webhook among them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from broker.core.relay import ALERT_OUTCOMES
from sessions.audit import AuditLog
from sessions.models import AuditOutcome

log = logging.getLogger("conduit.broker")
Listener = Callable[[str, str, dict[str, Any]], None]


class Alerts:
    """Sends alerts through the one audit writer, then to ``listeners``.

    :meth:`send` works from the event loop (the append is posted to the log, which owns it
    until :meth:`AuditLog.drain`) and from a worker thread (appended there).  :meth:`record`
    is the awaitable form.  Neither raises: a failed alert is logged by kind.
    """

    def __init__(self, audit: AuditLog, listeners: list[Listener]) -> None:
        self._audit, self._listeners = audit, listeners

    def send(
        self, kind: str, subject: str, details: dict[str, Any], outcome: str | None = None
    ) -> None:
        outcome = outcome or ALERT_OUTCOMES.get(kind, AuditOutcome.OK)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: append here
            try:
                self._audit.append(
                    kind, actor="system", outcome=outcome, subject=subject, details=details
                )
            except Exception:
                log.exception("alert %s could not be audited", kind)
                return
        else:
            self._audit.post(
                kind, actor="system", outcome=outcome, subject=subject, details=details
            )
        self._tell(kind, subject, details)

    async def record(
        self, kind: str, subject: str, details: dict[str, Any], outcome: str | None = None
    ) -> None:
        try:
            await self._audit.record(
                kind,
                actor="system",
                outcome=outcome or ALERT_OUTCOMES.get(kind, AuditOutcome.OK),
                subject=subject,
                details=details,
            )
        except Exception:
            log.exception("alert %s could not be audited", kind)
            return
        self._tell(kind, subject, details)

    def _tell(self, kind: str, subject: str, details: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, subject, details)
            except Exception:  # one listener must not keep the alert from the others
                log.exception("alert %s could not be delivered", kind)
