"""sessions.credentials on SQLite and PostgreSQL: certificate records, checks, revocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from sessions.audit import AuditLog
from sessions.credentials import (
    AuthContext,
    CredentialRef,
    CredentialRefused,
    CredentialService,
)
from sessions.db import session_scope
from sessions.models import ApiToken, SshCertificate, User, WebSession
from sessions.testing import ManualClock

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MFA = AuthContext(("pwd", "otp", "mfa"), "urn:conduit:mfa", T0)


@pytest.fixture
def world(engine: sa.Engine) -> tuple[CredentialService, ManualClock, AuditLog, str]:
    clock = ManualClock(T0)
    audit = AuditLog(engine, clock)
    with session_scope(engine) as db:
        user = User(issuer="i", sub="alice", roles=["vendor"], created_at=T0)
        db.add(user)
        db.flush()
        db.add(
            WebSession(
                id_hash="s" * 64,
                user_id=user.id,
                csrf_token="c",
                created_at=T0,
                expires_at=T0 + timedelta(hours=8),
                last_seen_at=T0,
            )
        )
        db.add(
            ApiToken(
                id="tok-1",
                token_hash="h" * 64,
                user_id=user.id,
                created_at=T0,
                expires_at=T0 + timedelta(hours=1),
                roles=["vendor"],
                parent_session="s" * 64,
            )
        )
        user_id = user.id
    return CredentialService(engine, audit, clock), clock, audit, user_id


def _mint(svc: CredentialService, user_id: str, by: CredentialRef) -> int:
    return svc.record_certificate(
        user_id=user_id,
        minted_by=by,
        key_id="alice",
        key_sha256="SHA256:k",
        auth=MFA,
        roles=["vendor"],
        expires_at=T0 + timedelta(hours=1),
    )


def test_certificates_carry_their_credentials_context_until_revoked(
    world: tuple[CredentialService, ManualClock, AuditLog, str],
) -> None:
    svc, clock, audit, user_id = world
    token = CredentialRef("token", "tok-1")
    serial = _mint(svc, user_id, token)
    other = _mint(svc, user_id, CredentialRef("session", "s" * 64))
    assert serial != other and serial > 0
    cert = svc.certificate(serial, user_id)
    assert cert.auth == MFA
    with pytest.raises(CredentialRefused, match="not issued by this broker"):
        svc.certificate(serial, "someone-else")
    done = svc.revoke_token("tok-1", by=user_id, reason="conduit logout")
    assert done.tokens == ["tok-1"] and done.certificates == [serial]
    with pytest.raises(CredentialRefused, match="was revoked: conduit logout"):
        svc.certificate(serial, user_id)
    assert svc.certificate(other, user_id).serial == other  # minted by the session: alive
    watched = {"a": CredentialRef("cert", str(serial)), "b": CredentialRef("cert", str(other))}
    assert list(svc.revoked(watched)) == ["a"]
    clock.advance(2 * 3600)  # expiry refuses new use, but is not a revocation for the watch
    with pytest.raises(CredentialRefused, match="expired"):
        svc.certificate(other, user_id)
    assert list(svc.revoked(watched)) == ["a"]
    [event] = [e for e in audit.iter_events() if e.kind == "credentials.revoked"]
    assert event.details["scope"] == "token" and event.details["certificates"] == [serial]


def test_session_sign_out_role_loss_and_user_revocation(
    world: tuple[CredentialService, ManualClock, AuditLog, str], engine: sa.Engine
) -> None:
    svc, _, audit, user_id = world
    serial = _mint(svc, user_id, CredentialRef("token", "tok-1"))
    assert svc.revoke_lost_roles(user_id, ["vendor", "admin"]).tokens == []  # nothing lost
    lost = svc.revoke_lost_roles(user_id, [])
    assert lost.tokens == ["tok-1"] and lost.certificates == [serial]
    second = _mint(svc, user_id, CredentialRef("session", "s" * 64))
    assert svc.session_context("s" * 64).amr == ()
    everything = svc.revoke_user(user_id, by="admin", reason="left")
    assert everything.certificates == [second] and everything.sessions == 1
    with pytest.raises(CredentialRefused, match="signed out"):
        svc.session_context("s" * 64)
    with session_scope(engine) as db:
        rows = db.exec(sa.select(SshCertificate.revoke_reason)).all()  # type: ignore[call-overload]
    assert sorted(r[0] for r in rows) == ["left", "role lost (now: no role)"]
    scopes = [e.details["scope"] for e in audit.iter_events() if e.kind == "credentials.revoked"]
    assert scopes == ["roles", "user"]
