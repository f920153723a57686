"""The admin's view of agents: the list (health, inventory matched to assets, assets an agent
no longer reaches), one agent, revoke (final), and adopting a declared endpoint as an asset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from sessions.agents.base import AgentCore, zone_named
from sessions.db import session_scope
from sessions.errors import ConflictError, NotFoundError, ValidationError
from sessions.models import (
    Agent,
    AgentEndpoint,
    AgentState,
    Asset,
    AssetEndpoint,
    Criticality,
    EndpointProtocol,
    Site,
    Zone,
)


@dataclass(frozen=True)
class AgentView:
    """One agent for the admin list: stored health plus its inventory, matched to assets."""

    agent: Agent
    site: str
    zone: str | None
    endpoints: list[AgentEndpoint]
    assets: dict[str, list[str]] = field(default_factory=dict)  # endpoint id -> asset names
    undeclared_assets: list[str] = field(default_factory=list)  # assets it cannot reach


class AgentRegistry(AgentCore):
    """List, look up, revoke and adopt."""

    def revoke(self, agent_id: str, *, actor: str) -> Agent:
        """Revoke an agent for good; raises :class:`NotFoundError` / :class:`ConflictError`."""
        with session_scope(self._engine, write=True) as db:
            agent = db.get(Agent, agent_id)
            if agent is None:
                raise NotFoundError(f"revoke agent: agent {agent_id} not found")
            if agent.state == AgentState.REVOKED:
                raise ConflictError(f"revoke agent: agent {agent_id} is already revoked")
            agent.state, agent.revoked_at = AgentState.REVOKED, self._clock.now()
            agent.connected_via = None
            db.flush()
            db.expunge(agent)
        self._audit.append(
            "agent.revoked",
            actor=actor,
            outcome="ok",
            subject=f"agent:{agent_id}",
            details={"name": agent.name, "key_pin": agent.key_pin},
        )
        return agent

    def adopt(
        self,
        endpoint_id: str,
        *,
        actor: str,
        name: str,
        owner_group: str,
        criticality: str = Criticality.MEDIUM,
        zone: str | None = None,
    ) -> tuple[Asset, AssetEndpoint]:
        """Create the asset for an unmatched endpoint, reached through its agent.

        Returns the asset and its first declared endpoint (the adopted one).
        """
        if criticality not in Criticality.ALL:
            raise ValidationError(f"adopt endpoint: criticality must be one of {Criticality.ALL}")
        if not name.strip() or not owner_group.strip():
            raise ValidationError("adopt endpoint: name and owner group are required")
        with session_scope(self._engine, write=True) as db:
            ep = db.get(AgentEndpoint, endpoint_id)
            agent = db.get(Agent, ep.agent_id) if ep else None
            if ep is None or agent is None:
                raise NotFoundError(f"adopt endpoint: endpoint {endpoint_id} not found")
            if not ep.declared:
                raise ConflictError("adopt endpoint: the agent no longer declares it")
            if _matching_asset(db, agent.id, ep) is not None:
                raise ConflictError("adopt endpoint: an asset already uses this endpoint")
            zone_id = _adoption_zone(db, agent, zone)
            if db.exec(select(Asset).where(Asset.name == name.strip())).first():
                raise ConflictError(f"adopt endpoint: an asset named {name!r} exists")
            asset = Asset(
                name=name.strip(),
                site_id=agent.site_id,
                zone_id=zone_id,
                criticality=criticality,
                owner_group=owner_group.strip(),
                agent_id=agent.id,
                created_at=self._clock.now(),
            )
            db.add(asset)
            db.flush()
            protocol = ep.protocol if ep.protocol in EndpointProtocol.ALL else "tcp"
            endpoint = AssetEndpoint(
                asset_id=asset.id,
                name=ep.name or protocol,
                host=ep.host,
                port=ep.port,
                protocol=protocol,
                agent_id=agent.id,
                created_at=self._clock.now(),
            )
            db.add(endpoint)
            db.flush()
            db.expunge(asset)
            db.expunge(endpoint)
        self._audit.append(
            "agent.endpoint.adopted",
            actor=actor,
            outcome="ok",
            subject=f"asset:{asset.name}",
            details={"agent": agent.id, "endpoint": f"{ep.host}:{ep.port}", "before": None,
                     "after": _adopted(asset, endpoint)},
        )  # fmt: skip
        return asset, endpoint

    def list(self) -> list[AgentView]:
        """Every agent with its inventory matched to assets, newest first."""
        with session_scope(self._engine) as db:
            agents = db.exec(select(Agent).order_by(col(Agent.created_at).desc())).all()
            sites = {s.id: s.name for s in db.exec(select(Site))}
            zones = {z.id: z.name for z in db.exec(select(Zone))}
            views = []
            for agent in agents:
                eps = list(
                    db.exec(
                        select(AgentEndpoint)
                        .where(AgentEndpoint.agent_id == agent.id)
                        .order_by(col(AgentEndpoint.host), col(AgentEndpoint.port))
                    )
                )
                by_ep: dict[tuple[str, int], list[str]] = {}
                missing: set[str] = set()
                declared = {(e.host, e.port) for e in eps if e.declared}
                for a, aep in _routed_through(db, agent.id):
                    by_ep.setdefault((aep.host, aep.port), []).append(a.name)
                    if (aep.host, aep.port) not in declared:
                        missing.add(a.name)
                views.append(
                    AgentView(
                        agent=agent,
                        site=sites.get(agent.site_id, "?"),
                        zone=zones.get(agent.zone_id) if agent.zone_id else None,
                        endpoints=eps,
                        assets={
                            e.id: by_ep[(e.host, e.port)] for e in eps if (e.host, e.port) in by_ep
                        },
                        undeclared_assets=sorted(missing),
                    )
                )
            for obj in [*agents, *(e for v in views for e in v.endpoints)]:
                db.expunge(obj)
        return views

    def get(self, agent_id: str) -> Agent:
        with session_scope(self._engine) as db:
            agent = db.get(Agent, agent_id)
            if agent is None:
                raise NotFoundError(f"agent {agent_id} not found")
            db.expunge(agent)
            return agent


def _routed_through(db: Session, agent_id: str) -> list[tuple[Asset, AssetEndpoint]]:
    """Every asset endpoint reached through ``agent_id`` (its own agent, else its asset's),
    by asset name."""
    rows = db.exec(
        select(Asset, AssetEndpoint)
        .join(AssetEndpoint, col(AssetEndpoint.asset_id) == col(Asset.id))
        .where(
            or_(
                col(AssetEndpoint.agent_id) == agent_id,
                and_(col(AssetEndpoint.agent_id).is_(None), col(Asset.agent_id) == agent_id),
            )
        )
        .order_by(col(Asset.name), col(AssetEndpoint.name))
    ).all()
    return [(a, e) for a, e in rows]


def _matching_asset(db: Session, agent_id: str, ep: AgentEndpoint) -> Asset | None:
    return next(
        (a for a, e in _routed_through(db, agent_id) if (e.host, e.port) == (ep.host, ep.port)),
        None,
    )


def _adoption_zone(db: Session, agent: Agent, zone: str | None) -> str:
    """The zone an adopted asset goes into: the one named (in the agent's site), else the
    agent's own; ValidationError when neither is known."""
    if zone:
        site = db.get(Site, agent.site_id)
        assert site is not None
        return zone_named(db, site, zone).id
    if agent.zone_id:
        return agent.zone_id
    raise ValidationError("adopt endpoint: the agent has no zone; name one")


def _adopted(asset: Asset, endpoint: AssetEndpoint) -> dict[str, Any]:
    """The audit event's ``after`` for an adopted endpoint."""
    return {
        "asset": asset.name,
        "zone_id": asset.zone_id,
        "criticality": asset.criticality,
        "owner_group": asset.owner_group,
        "endpoint": {
            "name": endpoint.name,
            "host": endpoint.host,
            "port": endpoint.port,
            "protocol": endpoint.protocol,
        },
    }
