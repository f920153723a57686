"""An agent at connect time: who it is (by key pin), what it declares (inventory), when it
was last seen, and its disconnection. Used by the broker's agent gateway.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import update
from sqlmodel import col, select

from agents.wire import Endpoint
from sessions.agents.base import AgentCore, AgentRefused
from sessions.db import session_scope
from sessions.errors import NotFoundError
from sessions.models import (
    Agent,
    AgentEndpoint,
    AgentState,
)


class AgentConnections(AgentCore):
    """Identity, inventory and health of connecting agents."""

    def authenticate(self, pin: str, *, node: str, peer: str | None = None) -> Agent:
        """The active agent holding the key ``pin``; raises :class:`AgentRefused` (audited)."""
        with session_scope(self._engine, write=True) as db:
            agent = db.exec(select(Agent).where(Agent.key_pin == pin)).first()
            if agent is not None and agent.state == AgentState.ACTIVE:
                agent.connected_via = node
                agent.last_seen_at = self._clock.now()
                db.flush()
                db.expunge(agent)
                ok = agent
            else:
                ok = None
                reason = "unknown_key" if agent is None else agent.state
                agent_id = agent.id if agent else None
        if ok is not None:
            self._audit.append(
                "agent.connected",
                actor=f"agent:{ok.id}",
                outcome="ok",
                subject=f"agent:{ok.id}",
                source_ip=peer,
                details={"node": node},
            )
            return ok
        self._audit.append(
            "agent.connect.refused",
            actor=f"agent:{agent_id}" if agent_id else "anonymous",
            outcome="deny",
            subject=f"agent:{agent_id}" if agent_id else f"key:{pin}",
            source_ip=peer,
            details={"reason": reason, "node": node},
        )
        raise AgentRefused(f"agent refused: {reason}", reason)

    def revoked_keys(self) -> list[tuple[str, str]]:
        """(pin, public key) of every revoked agent (for the gateway's handshake check)."""
        with session_scope(self._engine) as db:
            rows = db.exec(
                select(Agent.key_pin, Agent.public_key).where(Agent.state == AgentState.REVOKED)
            ).all()
        return [(pin, key) for pin, key in rows if pin and key]

    def report_inventory(
        self, agent_id: str, endpoints: Iterable[Endpoint], *, hostname: str, version: str
    ) -> bool:
        """Store what the agent declares; returns True (and audits) when the set changed."""
        now = self._clock.now()
        wanted = {(e.host, e.port): e for e in endpoints}
        with session_scope(self._engine, write=True) as db:
            agent = db.get(Agent, agent_id)
            if agent is None:
                raise NotFoundError(f"agent {agent_id} not found")
            agent.hostname, agent.version, agent.last_seen_at = hostname, version, now
            rows = {
                (r.host, r.port): r
                for r in db.exec(select(AgentEndpoint).where(AgentEndpoint.agent_id == agent_id))
            }
            added = sorted(f"{h}:{p}" for h, p in wanted.keys() - rows.keys())
            gone = sorted(
                f"{h}:{p}" for (h, p), r in rows.items() if r.declared and (h, p) not in wanted
            )
            for key, ep in wanted.items():
                row = rows.get(key)
                if row is None:
                    db.add(
                        AgentEndpoint(
                            agent_id=agent_id,
                            host=ep.host,
                            port=ep.port,
                            protocol=ep.protocol,
                            name=ep.name,
                            first_seen_at=now,
                            last_reported_at=now,
                        )
                    )
                    continue
                if not row.declared:
                    added.append(f"{ep.host}:{ep.port}")
                row.protocol, row.name, row.declared = ep.protocol, ep.name, True
                row.last_reported_at = now
            for key, row in rows.items():
                if key not in wanted:
                    row.declared = False
        if added or gone:
            self._audit.append(
                "agent.inventory",
                actor=f"agent:{agent_id}",
                outcome="ok",
                subject=f"agent:{agent_id}",
                details={"added": sorted(set(added)), "removed": gone, "total": len(wanted)},
            )
        return bool(added or gone)

    def touch(self, seen: dict[str, datetime]) -> None:
        """Record last-seen times of many live agents in one transaction (heartbeat flush)."""
        if not seen:
            return
        table = Agent.__table__  # type: ignore[attr-defined]
        statement = (
            sa.update(table)
            .where(table.c.id == sa.bindparam("agent_id"))
            .values(last_seen_at=sa.bindparam("seen"))
        )
        rows = [{"agent_id": agent_id, "seen": when} for agent_id, when in seen.items()]
        with session_scope(self._engine, write=True) as db:
            db.connection().execute(statement, rows)  # one executemany, one transaction

    def disconnected(self, agent_id: str, *, node: str, reason: str) -> None:
        with session_scope(self._engine, write=True) as db:
            db.execute(
                update(Agent)
                .where(col(Agent.id) == agent_id)
                .where(col(Agent.connected_via) == node)
                .values(connected_via=None)
            )
        self._audit.append(
            "agent.disconnected",
            actor=f"agent:{agent_id}",
            outcome="ok",
            subject=f"agent:{agent_id}",
            details={"node": node, "reason": reason[:200]},
        )
