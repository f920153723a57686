"""Enrolment: an admin's single-use, expiring join token (bound to a site, optionally a zone),
redeemed exactly once by :meth:`AgentEnrolment.join`, which creates an ``active`` agent and has
its certificate issued. Refusals are audited with a ``reason`` code (:class:`JoinRefused`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from agents.wire import JoinToken, WireError, key_pin
from sessions.agents.base import AgentCore, JoinRefused, site_named, zone_named
from sessions.db import session_scope
from sessions.errors import ValidationError
from sessions.models import (
    Agent,
    AgentJoinToken,
    AgentState,
    Site,
    Zone,
)

MIN_TOKEN_TTL = timedelta(minutes=1)
MAX_TOKEN_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class JoinResult:
    agent_id: str
    name: str
    certificate: str
    site: str
    zone: str | None


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AgentEnrolment(AgentCore):
    """Join tokens and the join itself."""

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
            site_row = site_named(db, site)
            zone_row = zone_named(db, site_row, zone) if zone else None
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
