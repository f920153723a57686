"""What the agent service's parts share: the database, audit log, clock, certificate signer
and gateway key pin; the refusals; site and zone lookup by name."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session, select

from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.errors import NotFoundError, SessionsError
from sessions.models import Site, Zone

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


class AgentCore:
    """The dependencies every part of :class:`sessions.agents.service.AgentService` uses."""

    def __init__(
        self, engine: Engine, audit: AuditLog, clock: Clock, signer: Signer, broker_pin: str
    ) -> None:
        self._engine, self._audit, self._clock = engine, audit, clock
        self._signer, self._pin = signer, broker_pin


def site_named(db: Session, name: str) -> Site:
    site = db.exec(select(Site).where(Site.name == name)).first()
    if site is None:
        raise NotFoundError(f"site {name!r} not found")
    return site


def zone_named(db: Session, site: Site, name: str) -> Zone:
    zone = db.exec(select(Zone).where(Zone.name == name, Zone.site_id == site.id)).first()
    if zone is None:
        raise NotFoundError(f"zone {name!r} not found in site {site.name!r}")
    return zone
