"""Who is asking: browser sessions (cookie) and CLI bearer tokens, both stored hashed.

The cookie and the bearer token are 256-bit random values; the database keeps only their
SHA-256, so a copy of the database does not let anyone sign in. Expired entries are refused
and removed on sight. A principal's roles are read from the user record on every request,
so a role lost at the IdP takes effect at the next sign-in, and a disabled user at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlmodel import col, select

from sessions.clock import Clock
from sessions.db import session_scope
from sessions.models import ApiToken, User, WebSession

SESSION_COOKIE = "conduit_session"
LOGIN_COOKIE = "conduit_login"
TOKEN_PREFIX = "cdt_"  # noqa: S105 - a prefix, makes leaked tokens greppable by scanners


def secret_hash(value: str) -> str:
    """SHA-256 hex of a high-entropy secret (cookie, token, code): what the DB stores."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """An authenticated user as seen by one request."""

    user_id: str
    sub: str
    email: str
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    amr: tuple[str, ...]
    vendor_org_id: str | None
    expires_at: datetime
    via: str  # "session" or "token"
    csrf_token: str | None = None

    def has(self, *roles: str) -> bool:
        """True if the principal holds any of ``roles``."""
        return any(r in self.roles for r in roles)


def _principal(user: User, expires_at: datetime, via: str, csrf: str | None) -> Principal:
    return Principal(
        user_id=user.id,
        sub=user.sub,
        email=user.email,
        name=user.name,
        roles=tuple(user.roles),
        groups=tuple(user.groups),
        amr=tuple(user.amr),
        vendor_org_id=user.vendor_org_id,
        expires_at=expires_at,
        via=via,
        csrf_token=csrf,
    )


class WebSessions:
    """Server-side browser sessions keyed by the hash of the cookie value."""

    def __init__(self, engine: Engine, clock: Clock, ttl_s: int) -> None:
        self._engine, self._clock, self._ttl = engine, clock, timedelta(seconds=ttl_s)

    def create(self, user_id: str, id_token: str | None) -> tuple[str, datetime]:
        """Start a session; returns the cookie value (shown once) and its expiry."""
        value = secrets.token_urlsafe(32)
        now = self._clock.now()
        row = WebSession(
            id_hash=secret_hash(value),
            user_id=user_id,
            csrf_token=secrets.token_urlsafe(32),
            id_token=id_token,
            created_at=now,
            expires_at=now + self._ttl,
            last_seen_at=now,
        )
        with session_scope(self._engine) as db:
            db.add(row)
        return value, row.expires_at

    def lookup(self, value: str) -> Principal | None:
        """The principal for a cookie value, or None if unknown, expired or disabled."""
        now = self._clock.now()
        with session_scope(self._engine) as db:  # read-only: page views must not serialise
            row = db.get(WebSession, secret_hash(value))
            if row is None:
                return None
            user = db.get(User, row.user_id) if row.expires_at > now else None
            if user is not None and not user.disabled:
                return _principal(user, row.expires_at, "session", row.csrf_token)
            expired = row.expires_at <= now
        if expired:
            self.destroy(value)
        return None

    def destroy(self, value: str) -> str | None:
        """End a session; returns its ID token (logout hint) or None if there was none."""
        with session_scope(self._engine, write=True) as db:
            row = db.get(WebSession, secret_hash(value))
            if row is None:
                return None
            hint = row.id_token
            db.delete(row)
            return hint

    def purge_expired(self) -> int:
        with session_scope(self._engine) as db:
            stmt = delete(WebSession).where(col(WebSession.expires_at) <= self._clock.now())
            return int(db.exec(stmt).rowcount or 0)


class ApiTokens:
    """Short-lived bearer tokens for the CLI (``Authorization: Bearer cdt_...``)."""

    def __init__(self, engine: Engine, clock: Clock, ttl_s: int) -> None:
        self._engine, self._clock, self._ttl = engine, clock, timedelta(seconds=ttl_s)

    def issue(self, user_id: str) -> tuple[str, datetime]:
        """Mint a token for ``user_id``; returns the token (shown once) and its expiry."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock.now()
        row = ApiToken(
            token_hash=secret_hash(token),
            user_id=user_id,
            kind="cli",
            created_at=now,
            expires_at=now + self._ttl,
        )
        with session_scope(self._engine, write=True) as db:
            db.add(row)
        return token, row.expires_at

    def lookup(self, token: str) -> Principal | None:
        """The principal for a bearer token, or None if unknown, expired, revoked or disabled."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        now = self._clock.now()
        with session_scope(self._engine, write=True) as db:
            row = db.exec(select(ApiToken).where(ApiToken.token_hash == secret_hash(token))).first()
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return None
            user = db.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            row.last_used_at = now
            db.add(row)
            return _principal(user, row.expires_at, "token", None)

    def revoke(self, token: str) -> bool:
        with session_scope(self._engine, write=True) as db:
            row = db.exec(select(ApiToken).where(ApiToken.token_hash == secret_hash(token))).first()
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = self._clock.now()
            db.add(row)
            return True
