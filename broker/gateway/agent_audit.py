"""The agent gateway's audit events, written through the one audit writer
(:class:`sessions.audit.AuditLog`): ``post`` from protocol callbacks that cannot await (the
log owns those appends and its owner drains them at shutdown), ``record`` from coroutines.
Every event names this broker node.
"""

from __future__ import annotations

from typing import Any

from broker.gateway.live_agent import LiveAgent
from sessions.audit import AuditLog


class AgentAudit:
    """Audit events about agents, each with ``node`` in its details."""

    def __init__(self, audit: AuditLog, node: str) -> None:
        self._audit = audit
        self.node = node  # set again once the gateway knows its port

    def post(self, kind: str, live: LiveAgent, *, outcome: str, **details: Any) -> None:
        """An event about ``live`` from a callback (not awaited; drained at shutdown)."""
        self._audit.post(kind, **self._about(live, outcome, details))

    async def record(self, kind: str, live: LiveAgent, *, outcome: str, **details: Any) -> None:
        """An event about ``live``, written before this returns."""
        await self._audit.record(kind, **self._about(live, outcome, details))

    async def drain(self) -> None:
        """Wait for every posted event (the audit log's :meth:`~sessions.audit.AuditLog.drain`)."""
        await self._audit.drain()

    def handshake_refused(self, peer: str, exc: Exception) -> None:
        """``agent.connect.refused`` for a tunnel whose SSH handshake failed (a callback)."""
        self._audit.post(
            "agent.connect.refused",
            actor="anonymous",
            outcome="deny",
            subject=f"peer:{peer}",
            source_ip=peer.rsplit(":", 1)[0],
            details={"reason": type(exc).__name__, "detail": str(exc)[:200], "node": self.node},
        )

    def _about(self, live: LiveAgent, outcome: str, details: dict[str, Any]) -> dict[str, Any]:
        return {
            "actor": f"agent:{live.agent_id}",
            "outcome": outcome,
            "subject": f"agent:{live.agent_id}",
            "details": {**details, "node": self.node},
        }
