"""Agents: enrolment tokens, join, identity at connect time, inventory, health and revoke.

Agent lifecycle (constants in :class:`sessions.models.AgentState`): an admin creates a join
token (single use, expiring, bound to a site and optionally a zone); :meth:`AgentService.join`
redeems it exactly once and creates an ``active`` agent whose certificate the injected
``signer`` issues; ``active`` → ``revoked`` is final (a revoked key never connects again).

Inventory: the agent reports the endpoints its own config declares; they are stored as
:class:`AgentEndpoint` rows, matched to assets by (agent, host, port). Endpoints no asset
matches are listed for an admin to adopt; assets whose endpoint the agent no longer declares are
listed as unreachable. Every decision here is an audit event; refusals carry a ``reason`` code.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, and_, or_, update
from sqlmodel import Session, col, select

from agents.wire import Endpoint, JoinToken, WireError, key_pin
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.db import session_scope
from sessions.errors import ConflictError, NotFoundError, SessionsError, ValidationError
from sessions.models import (
    Agent,
    AgentEndpoint,
    AgentJoinToken,
    AgentState,
    Asset,
    AssetEndpoint,
    Criticality,
    EndpointProtocol,
    Site,
    Zone,
)

MIN_TOKEN_TTL = timedelta(minutes=1)
MAX_TOKEN_TTL = timedelta(hours=24)

# (public key in OpenSSH format, agent id) -> (certificate in OpenSSH format, serial)
Signer = Callable[[str, str], tuple[str, int]]


class JoinRefused(SessionsError):
    """A join token was unknown, forged, expired or already used (``reason`` says which)."""

    code = "join_refused"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AgentRefused(SessionsError):
    """An agent may not connect (unknown key, revoked); ``reason`` says which."""

    code = "agent_refused"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class JoinResult:
    agent_id: str
    name: str
    certificate: str
    site: str
    zone: str | None


@dataclass(frozen=True)
class AgentView:
    """One agent for the admin list: stored health plus its inventory, matched to assets."""

    agent: Agent
    site: str
    zone: str | None
    endpoints: list[AgentEndpoint]
    assets: dict[str, list[str]] = field(default_factory=dict)  # endpoint id -> asset names
    undeclared_assets: list[str] = field(default_factory=list)  # assets it cannot reach


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AgentService:
    """Enrolment and inventory of agents. Thread-safe; each call is one transaction."""

    def __init__(
        self, engine: Engine, audit: AuditLog, clock: Clock, signer: Signer, broker_pin: str
    ) -> None:
        self._engine, self._audit, self._clock = engine, audit, clock
        self._signer, self._pin = signer, broker_pin

    # ---- tokens -------------------------------------------------------------------------

    def create_token(
        self, *, actor: str, site: str, zone: str | None, ttl: timedelta, name: str = ""
    ) -> tuple[JoinToken, AgentJoinToken]:
        """A new join token for ``site`` (and ``zone``, which must belong to it).

        Raises :class:`ValidationError` for a bad TTL or name, :class:`NotFoundError` for an
        unknown site or zone. The secret is returned once and stored only as a hash.
        """
        if not MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL:
            raise ValidationError(
                "join token: ttl must be between 1 minute and 24 hours", code="invalid_ttl"
            )
        if name and not (len(name) <= 64 and name.replace("-", "").replace("_", "").isalnum()):
            raise ValidationError("join token: name must be letters, digits, - and _ only")
        token = JoinToken.new(self._pin)
        now = self._clock.now()
        with session_scope(self._engine, write=True) as db:
            site_row = _site(db, site)
            zone_row = _zone(db, site_row, zone) if zone else None
            row = AgentJoinToken(
                id=token.token_id,
                secret_hash=_hash_secret(token.secret),
                site_id=site_row.id,
                zone_id=zone_row.id if zone_row else None,
                name=name,
                created_by=actor,
                created_at=now,
                expires_at=now + ttl,
            )
            db.add(row)
            db.flush()
            db.expunge(row)
        self._audit.append(
            "agent.token.created",
            actor=actor,
            outcome="ok",
            subject=f"token:{token.token_id}",
            details={"site": site, "zone": zone, "expires_at": row.expires_at.isoformat()},
        )
        return token, row

    # ---- join ---------------------------------------------------------------------------

    def join(
        self,
        *,
        token_id: str,
        secret: str,
        public_key: str,
        hostname: str,
        version: str,
        source_ip: str | None = None,
    ) -> JoinResult:
        """Redeem a join token exactly once; returns the new agent and its certificate.

        Raises :class:`JoinRefused` (audited ``agent.join.refused`` with the reason) when the
        token is unknown, the secret does not match (forged), it expired or was used before.
        Concurrent redemptions of one token: exactly one wins.
        """
        now = self._clock.now()
        try:
            pin = key_pin(public_key)
        except WireError:
            self._refuse(token_id, "bad_key", "the agent public key is malformed", source_ip)
        with session_scope(self._engine, write=True) as db:
            row = db.get(AgentJoinToken, token_id)
            problem = self._check_token(row, secret, now)
            if problem is None and db.exec(select(Agent).where(Agent.key_pin == pin)).first():
                problem = ("key_reused", "this agent key is already enrolled")
            if problem is not None or row is None:
                reason, message = problem or ("unknown_token", "unknown join token")
            else:
                claimed = db.execute(
                    update(AgentJoinToken)
                    .where(col(AgentJoinToken.id) == token_id)
                    .where(col(AgentJoinToken.used_at).is_(None))
                    .values(used_at=now)
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    reason, message = "reused", "join token was already used"
                else:
                    result = self._enrol(db, row, public_key, pin, hostname, version, now)
                    reason = ""
        if reason:
            self._refuse(token_id, reason, message, source_ip)
        self._audit.append(
            "agent.joined",
            actor=f"agent:{result.agent_id}",
            outcome="ok",
            subject=f"agent:{result.agent_id}",
            source_ip=source_ip,
            details={
                "token": token_id,
                "name": result.name,
                "site": result.site,
                "zone": result.zone,
                "key_pin": pin,
                "hostname": hostname[:128],
            },
        )
        return result

    def _enrol(
        self,
        db: Session,
        token: AgentJoinToken,
        public_key: str,
        pin: str,
        hostname: str,
        version: str,
        now: datetime,
    ) -> JoinResult:
        """Create the agent for a claimed token and sign its host certificate."""
        site = db.get(Site, token.site_id)
        zone = db.get(Zone, token.zone_id) if token.zone_id else None
        agent = Agent(
            name=token.name or f"agent-{token.id[:8]}",
            site_id=token.site_id,
            zone_id=token.zone_id,
            state=AgentState.ACTIVE,
            public_key=public_key.strip(),
            key_pin=pin,
            version=version[:64],
            hostname=hostname[:128],
            created_at=now,
        )
        db.add(agent)
        db.flush()
        cert, serial = self._signer(public_key, agent.id)
        agent.cert_serial = str(serial)
        db.execute(
            update(AgentJoinToken)
            .where(col(AgentJoinToken.id) == token.id)
            .values(agent_id=agent.id)
        )
        return JoinResult(
            agent.id, agent.name, cert, site.name if site else "?", zone.name if zone else None
        )

    @staticmethod
    def _check_token(
        row: AgentJoinToken | None, secret: str, now: datetime
    ) -> tuple[str, str] | None:
        if row is None:
            return ("unknown_token", "unknown join token")
        if not hmac.compare_digest(row.secret_hash, _hash_secret(secret)):
            return ("forged", "join token secret does not match")
        if row.used_at is not None:
            return ("reused", "join token was already used")
        if now >= row.expires_at:
            return ("expired", "join token has expired")
        return None

    def _refuse(self, token_id: str, reason: str, message: str, source_ip: str | None) -> None:
        self._audit.append(
            "agent.join.refused",
            actor="anonymous",
            outcome="deny",
            subject=f"token:{token_id}",
            source_ip=source_ip,
            details={"reason": reason},
        )
        raise JoinRefused(f"join refused: {message}", reason)

    # ---- connect ------------------------------------------------------------------------

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

    # ---- admin --------------------------------------------------------------------------

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


def _site(db: Session, name: str) -> Site:
    site = db.exec(select(Site).where(Site.name == name)).first()
    if site is None:
        raise NotFoundError(f"site {name!r} not found")
    return site


def _zone(db: Session, site: Site, name: str) -> Zone:
    zone = db.exec(select(Zone).where(Zone.name == name, Zone.site_id == site.id)).first()
    if zone is None:
        raise NotFoundError(f"zone {name!r} not found in site {site.name!r}")
    return zone


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
        return _zone(db, site, zone).id
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
