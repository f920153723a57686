"""Who is asking: browser sessions (cookie) and CLI bearer tokens, both stored hashed.

The cookie and the bearer token are 256-bit random values; the database keeps only their
SHA-256, so a copy of the database does not let anyone sign in. Expired entries are refused
and removed on sight. A principal's roles are read from the user record on every request,
so a role lost at the IdP takes effect at the next sign-in, and a disabled user at once.

Each credential keeps the ``amr``/``acr``/``auth_time`` of the sign-in it came from
(:class:`sessions.credentials.AuthContext`): the principal's ``auth`` is that, never the
user's latest sign-in. A token also keeps the roles held when it was issued and the web
session that approved it: losing one of those roles, or signing that session out, kills it
(:mod:`sessions.credentials` does the revoking and auditing).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete
from sqlmodel import col, select

from sessions.clock import Clock
from sessions.credentials import NO_AUTH, AuthContext, CredentialRef, CredentialService
from sessions.db import session_scope
from sessions.models import ApiToken, User, WebSession

SESSION_COOKIE = "conduit_session"
LOGIN_COOKIE = "conduit_login"
TOKEN_PREFIX = "cdt_"  # noqa: S105 - a prefix, makes leaked tokens greppable by scanners


def auth_context(amr: tuple[str, ...], acr: str | None, claims: Mapping[str, Any]) -> AuthContext:
    """The auth context of a verified sign-in (``auth_time`` from the ID token, if sent)."""
    raw = claims.get("auth_time")
    when = (
        datetime.fromtimestamp(raw, UTC)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and 0 < raw < 2**34
        else None
    )
    return AuthContext(tuple(amr), acr, when)


def secret_hash(value: str) -> str:
    """SHA-256 hex of a high-entropy secret (cookie, token, code): what the DB stores."""
    return hashlib.sha256(value.encode()).hexdigest()


class TokenRefused(Exception):
    """A known bearer token that may no longer be used (the reason is safe to show)."""

    def __init__(self, reason: str, *, user_id: str, token_id: str) -> None:
        super().__init__(reason)
        self.reason, self.user_id, self.token_id = reason, user_id, token_id


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
    auth: AuthContext = NO_AUTH  # how the credential in use was authenticated
    credential: CredentialRef | None = None  # which credential (session hash or token id)

    def has(self, *roles: str) -> bool:
        """True if the principal holds any of ``roles``."""
        return any(r in self.roles for r in roles)


# The principal of the request being handled (set by ``broker.http.web.current_principal``), for
# code that is called with only a user id but must know which credential acted.
CURRENT_PRINCIPAL: ContextVar[Principal | None] = ContextVar("conduit_principal", default=None)


def _principal(
    user: User,
    expires_at: datetime,
    via: str,
    csrf: str | None,
    auth: AuthContext,
    credential: CredentialRef,
) -> Principal:
    return Principal(
        user_id=user.id,
        sub=user.sub,
        email=user.email,
        name=user.name,
        roles=tuple(user.roles),
        groups=tuple(user.groups),
        amr=auth.amr,
        vendor_org_id=user.vendor_org_id,
        expires_at=expires_at,
        via=via,
        csrf_token=csrf,
        auth=auth,
        credential=credential,
    )


class WebSessions:
    """Server-side browser sessions keyed by the hash of the cookie value."""

    def __init__(self, engine: Engine, clock: Clock, ttl_s: int) -> None:
        self._engine, self._clock, self._ttl = engine, clock, timedelta(seconds=ttl_s)

    def create(
        self, user_id: str, id_token: str | None, auth: AuthContext = NO_AUTH
    ) -> tuple[str, datetime]:
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
            amr=list(auth.amr),
            acr=auth.acr,
            auth_time=auth.auth_time,
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
                ref = CredentialRef("session", row.id_hash)
                return _principal(
                    user, row.expires_at, "session", row.csrf_token, AuthContext.of(row), ref
                )
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

    def __init__(
        self, engine: Engine, clock: Clock, ttl_s: int, credentials: CredentialService
    ) -> None:
        self._engine, self._clock, self._ttl = engine, clock, timedelta(seconds=ttl_s)
        self._credentials = credentials

    def issue(
        self,
        user_id: str,
        *,
        auth: AuthContext = NO_AUTH,
        parent_session: str | None = None,
    ) -> tuple[str, datetime]:
        """Mint a token for ``user_id``; returns the token (shown once) and its expiry.

        ``auth`` is how the approving sign-in was authenticated (none known: no MFA credit);
        ``parent_session`` the web session that approved it (signing it out revokes the token).
        The token holds the user's current roles: losing any of them revokes it.
        """
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock.now()
        with session_scope(self._engine, write=True) as db:
            user = db.get(User, user_id)
            row = ApiToken(
                token_hash=secret_hash(token),
                user_id=user_id,
                kind="cli",
                created_at=now,
                expires_at=now + self._ttl,
                amr=list(auth.amr),
                acr=auth.acr,
                auth_time=auth.auth_time,
                roles=list(user.roles) if user is not None else [],
                parent_session=parent_session,
            )
            db.add(row)
            expires = row.expires_at
        return token, expires

    def lookup(self, token: str) -> Principal | None:
        """The principal for a bearer token; None if unknown. A known token that is revoked,
        expired, of a disabled user or issued under a role the user no longer holds (then it
        is revoked, audited) raises :class:`TokenRefused` saying which."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        now = self._clock.now()
        with session_scope(self._engine, write=True) as db:
            row = db.exec(select(ApiToken).where(ApiToken.token_hash == secret_hash(token))).first()
            if row is None:
                return None
            user = db.get(User, row.user_id)
            if row.revoked_at is not None:
                why = f"the CLI token was revoked: {row.revoke_reason or 'no reason given'}"
            elif row.expires_at <= now:
                why = "the CLI token expired"
            elif user is None or user.disabled:
                why = "the user is disabled"
            elif set(row.roles) - set(user.roles):
                why = ""  # revoked below, after this transaction
            else:
                row.last_used_at = now
                db.add(row)
                ref = CredentialRef("token", row.id)
                return _principal(user, row.expires_at, "token", None, AuthContext.of(row), ref)
            user_id, token_id, roles = row.user_id, row.id, list(user.roles) if user else []
        if not why:
            self._credentials.revoke_lost_roles(user_id, roles)
            why = "the CLI token was revoked: the user no longer holds the role it was issued under"
        raise TokenRefused(why, user_id=user_id, token_id=token_id)

    def token_id(self, token: str) -> str | None:
        with session_scope(self._engine) as db:
            row = db.exec(select(ApiToken).where(ApiToken.token_hash == secret_hash(token))).first()
            return row.id if row is not None else None
