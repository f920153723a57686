"""Credentials: how each one was authenticated, SSH certificates by serial, and revocation.

Three kinds of credential reach the broker: a browser session (cookie), a CLI token (bearer)
and an SSH certificate (front door). Each carries the ``amr``/``acr``/``auth_time`` of the IdP
sign-in it came from (:class:`AuthContext`), and policy input takes them from the credential in
use, never from the user's latest sign-in elsewhere. They form a tree: a web session approves
CLI tokens; a token (or a web session) mints SSH certificates. Revoking one revokes what it
minted, in one transaction, audited once as ``credentials.revoked``.

A credential is dead when it is revoked or expired, when what minted it is dead (token
revoked, web session signed out), or when its user is disabled or no longer holds a role it
was issued under. Every check reads the database, so a revocation made through any broker is
seen by all of them at the next request.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select

from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.db import session_scope
from sessions.errors import SessionsError
from sessions.models import ApiToken, SshCertificate, User, WebSession

MAX_SERIAL = 2**63 - 1  # SSH serials are uint64; PostgreSQL's BIGINT is signed


@dataclass(frozen=True)
class AuthContext:
    """How the IdP authenticated the sign-in behind a credential (ID token claims)."""

    amr: tuple[str, ...] = ()
    acr: str | None = None
    auth_time: datetime | None = None

    @classmethod
    def of(cls, row: WebSession | ApiToken | SshCertificate) -> AuthContext:
        return cls(tuple(row.amr), row.acr, row.auth_time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "amr": list(self.amr),
            "acr": self.acr,
            "auth_time": self.auth_time.isoformat() if self.auth_time else None,
        }


NO_AUTH = AuthContext()  # no authentication methods known: no MFA credit


@dataclass(frozen=True)
class CredentialRef:
    """One credential: ``session`` (web session id hash), ``token`` (id) or ``cert`` (serial)."""

    kind: str
    key: str

    @property
    def label(self) -> str:
        """For audit and messages: a web session's hash is shortened."""
        return f"{self.kind}:{self.key[:12] if self.kind == 'session' else self.key}"


class CredentialRefused(SessionsError):
    """The credential is revoked, expired or belongs to a user who may no longer use it."""

    code = "credential_refused"


@dataclass(frozen=True)
class CertCredential:
    serial: int
    user_id: str
    auth: AuthContext
    expires_at: datetime


@dataclass
class Revoked:
    """What one revocation ended."""

    tokens: list[str] = field(default_factory=list)
    certificates: list[int] = field(default_factory=list)
    sessions: int = 0

    def __bool__(self) -> bool:
        return bool(self.tokens or self.certificates or self.sessions)

    def as_dict(self) -> dict[str, Any]:
        """For the API and the audit log (which redacts keys naming a token: hence the key)."""
        return {
            "cli_credentials": self.tokens,
            "certificates": self.certificates,
            "sessions": self.sessions,
        }


def new_serial() -> int:
    return secrets.randbelow(MAX_SERIAL) + 1


def _lost_roles(held: Iterable[str], user: User) -> list[str]:
    return sorted(set(held) - set(user.roles))


class CredentialService:
    """Certificate registry, credential checks and revocation (thread-safe; blocking DB work)."""

    def __init__(self, engine: Engine, audit: AuditLog, clock: Clock) -> None:
        self._engine, self._audit, self._clock = engine, audit, clock

    # ---- SSH certificates ----------------------------------------------------------------

    def record_certificate(
        self,
        *,
        user_id: str,
        minted_by: CredentialRef,
        key_id: str,
        key_sha256: str,
        auth: AuthContext,
        roles: Sequence[str],
        expires_at: datetime,
    ) -> int:
        """Register a certificate about to be signed; returns its (new, unique) serial."""
        now = self._clock.now()
        with session_scope(self._engine, write=True) as db:
            serial = new_serial()
            while db.get(SshCertificate, serial) is not None:  # 2^-63 per try; still check
                serial = new_serial()
            db.add(
                SshCertificate(
                    serial=serial,
                    user_id=user_id,
                    token_id=minted_by.key if minted_by.kind == "token" else None,
                    session_hash=minted_by.key if minted_by.kind == "session" else None,
                    key_id=key_id,
                    key_sha256=key_sha256,
                    amr=list(auth.amr),
                    acr=auth.acr,
                    auth_time=auth.auth_time,
                    roles=list(roles),
                    issued_at=now,
                    expires_at=expires_at,
                )
            )
        return serial

    def certificate(self, serial: int, user_id: str) -> CertCredential:
        """The live certificate ``serial`` of ``user_id``; raises :class:`CredentialRefused`."""
        with session_scope(self._engine) as db:
            cert = db.get(SshCertificate, serial)
            if cert is None or cert.user_id != user_id:
                raise CredentialRefused(
                    f"certificate serial {serial} was not issued by this broker for this user;"
                    " run `conduit ssh-cert` again"
                )
            problem = self._cert_problem(db, cert)
            if problem is not None:
                raise CredentialRefused(problem)
            return CertCredential(serial, user_id, AuthContext.of(cert), cert.expires_at)

    def session_context(self, session_hash: str) -> AuthContext:
        """The auth context of a live web session (clientless SSH approvals)."""
        with session_scope(self._engine) as db:
            problem = self._session_problem(db, session_hash)
            if problem is not None:
                raise CredentialRefused(problem)
            row = db.get(WebSession, session_hash)
            assert row is not None
            return AuthContext.of(row)

    def revoked(self, refs: Mapping[str, CredentialRef]) -> dict[str, str]:
        """For each key whose credential was revoked since (or whose user was disabled or lost
        a role), why. Expiry does not count: a live session ends with its grant, not with the
        certificate that opened it (live-session watch)."""
        out: dict[str, str] = {}
        with session_scope(self._engine) as db:
            for key, ref in refs.items():
                if ref.kind == "cert":
                    cert = db.get(SshCertificate, int(ref.key))
                    problem = (
                        "certificate unknown"
                        if cert is None
                        else self._cert_problem(db, cert, expiry=False)
                    )
                elif ref.kind == "session":
                    problem = self._session_problem(db, ref.key, expiry=False)
                else:
                    problem = self._token_problem(db, db.get(ApiToken, ref.key), expiry=False)
                if problem is not None:
                    out[key] = problem
        return out

    def _cert_problem(
        self, db: Session, cert: SshCertificate, *, expiry: bool = True
    ) -> str | None:
        now = self._clock.now()
        if cert.revoked_at is not None:
            return f"certificate {cert.serial} was revoked: {cert.revoke_reason or 'no reason'}"
        if expiry and cert.expires_at <= now:
            return f"certificate {cert.serial} expired; run `conduit ssh-cert` again"
        user = db.get(User, cert.user_id)
        if user is None or user.disabled:
            return "the user is disabled"
        lost = _lost_roles(cert.roles, user)
        if lost:
            return f"the user no longer holds the role {', '.join(lost)}"
        if cert.token_id is not None:
            return self._token_problem(db, db.get(ApiToken, cert.token_id), expiry=expiry)
        if cert.session_hash is not None:
            return self._session_problem(db, cert.session_hash, expiry=expiry)
        return None

    def _token_problem(
        self, db: Session, token: ApiToken | None, *, expiry: bool = True
    ) -> str | None:
        if token is None:
            return "the CLI token is unknown"
        if token.revoked_at is not None:
            return f"the CLI token was revoked: {token.revoke_reason or 'no reason'}"
        if expiry and token.expires_at <= self._clock.now():
            return "the CLI token expired"
        user = db.get(User, token.user_id)
        if user is None or user.disabled:
            return "the user is disabled"
        lost = _lost_roles(token.roles, user)
        return f"the user no longer holds the role {', '.join(lost)}" if lost else None

    def _session_problem(
        self, db: Session, session_hash: str, *, expiry: bool = True
    ) -> str | None:
        row = db.get(WebSession, session_hash)
        if row is None:
            return "the browser session was signed out"
        if expiry and row.expires_at <= self._clock.now():
            return "the browser session expired"
        user = db.get(User, row.user_id)
        return "the user is disabled" if user is None or user.disabled else None

    # ---- revocation ----------------------------------------------------------------------

    def revoke_token(self, token_id: str, *, by: str, reason: str) -> Revoked:
        """Revoke one CLI token and the certificates it minted."""
        return self._revoke(
            lambda db: [db.get(ApiToken, token_id)], lambda db: [], by=by, reason=reason,
            scope="token",
        )  # fmt: skip

    def revoke_minted_by_session(
        self, session_hash: str, *, by: str, reason: str, user_id: str
    ) -> Revoked:
        """Revoke the tokens a web session approved and the certificates it or they minted
        (the session itself is ended by its owner, ``WebSessions.destroy``)."""

        def tokens(db: Session) -> list[ApiToken | None]:
            query = select(ApiToken).where(ApiToken.parent_session == session_hash)
            return [*db.exec(query)]

        def certs(db: Session) -> list[SshCertificate]:
            return list(
                db.exec(select(SshCertificate).where(SshCertificate.session_hash == session_hash))
            )

        return self._revoke(tokens, certs, by=by, reason=reason, scope="session", user=user_id)

    def revoke_user(self, user_id: str, *, by: str, reason: str) -> Revoked:
        """Revoke every token and certificate of ``user_id`` and end their web sessions."""

        def tokens(db: Session) -> list[ApiToken | None]:
            return [*db.exec(select(ApiToken).where(ApiToken.user_id == user_id))]

        def certs(db: Session) -> list[SshCertificate]:
            return list(db.exec(select(SshCertificate).where(SshCertificate.user_id == user_id)))

        return self._revoke(
            tokens, certs, by=by, reason=reason, scope="user", user=user_id, sessions=True,
            always=True,
        )  # fmt: skip

    def revoke_lost_roles(self, user_id: str, roles: Sequence[str]) -> Revoked:
        """Revoke the tokens and certificates issued under a role ``user_id`` no longer has."""
        have = set(roles)

        def tokens(db: Session) -> list[ApiToken | None]:
            rows = db.exec(select(ApiToken).where(ApiToken.user_id == user_id))
            return [t for t in rows if set(t.roles) - have]

        def certs(db: Session) -> list[SshCertificate]:
            rows = db.exec(select(SshCertificate).where(SshCertificate.user_id == user_id))
            return [c for c in rows if set(c.roles) - have]

        reason = f"role lost (now: {', '.join(sorted(have)) or 'no role'})"
        return self._revoke(tokens, certs, by="system", reason=reason, scope="roles", user=user_id)

    def _revoke(
        self,
        tokens: Callable[[Session], Iterable[ApiToken | None]],
        certs: Callable[[Session], Iterable[SshCertificate]],
        *,
        by: str,
        reason: str,
        scope: str,
        user: str | None = None,
        sessions: bool = False,
        always: bool = False,
    ) -> Revoked:
        now = self._clock.now()
        done = Revoked()
        with session_scope(self._engine, write=True) as db:
            # Expired credentials are dead already: only live ones are marked (and listed).
            token_rows = [
                t
                for t in tokens(db)
                if t is not None and t.revoked_at is None and t.expires_at > now
            ]
            cert_rows = [c for c in certs(db) if c.revoked_at is None and c.expires_at > now]
            minted = [t.id for t in token_rows]
            if minted:
                cert_rows += [
                    c
                    for c in db.exec(
                        select(SshCertificate).where(col(SshCertificate.token_id).in_(minted))
                    )
                    if c.revoked_at is None and c.expires_at > now and c not in cert_rows
                ]
            rows: list[ApiToken | SshCertificate] = [*token_rows, *cert_rows]
            for row in rows:
                row.revoked_at, row.revoked_by, row.revoke_reason = now, by, reason[:300]
                db.add(row)
                user = user or row.user_id
            done.tokens = sorted(minted)
            done.certificates = sorted(c.serial for c in cert_rows)
            if sessions and user is not None:
                result = db.exec(delete(WebSession).where(col(WebSession.user_id) == user))
                done.sessions = int(result.rowcount or 0)
        if done or always:
            self._audit.append(
                "credentials.revoked",
                actor=by,
                outcome="ok",
                subject=f"user:{user}" if user else None,
                details={"scope": scope, "reason": reason[:300], **done.as_dict()},
            )
        return done
