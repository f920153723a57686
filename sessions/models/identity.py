"""Sign-in state and credentials: login flows, web sessions, API tokens, CLI authorizations and
SSH certificates."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from sessions.models.base import (
    CASCADE,
    TableModel,
    added_list,
    created_field,
    id_field,
    maybe_when,
    one_of,
    optional_fk,
)
from sessions.models.enums import ApiTokenKind, CliAuthorizationKind, CliAuthorizationState
from sessions.types import UTCDateTime, json_field


class LoginFlow(TableModel, table=True):
    """An OIDC login in progress, keyed by the SHA-256 of its OAuth ``state``."""

    __tablename__ = "login_flows"

    state_hash: str = Field(primary_key=True)
    nonce: str = Field(repr=False)
    code_verifier: str = Field(repr=False)
    browser_binding_hash: str
    return_to: str
    created_at: datetime = created_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class WebSession(TableModel, table=True):
    """A browser session, keyed by the SHA-256 of its cookie value."""

    __tablename__ = "web_sessions"

    id_hash: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", ondelete=CASCADE, index=True)
    csrf_token: str = Field(repr=False)
    # Kept only as the RP-initiated logout hint; never listed or logged.
    id_token: str | None = Field(default=None, repr=False)
    created_at: datetime = created_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    last_seen_at: datetime = Field(sa_type=UTCDateTime)
    # How the IdP authenticated this sign-in (ID token amr, acr, auth_time).
    amr: list[str] = added_list()
    acr: str | None = None
    auth_time: datetime | None = maybe_when()


class ApiToken(TableModel, table=True):
    """A bearer token for the CLI; only its hash is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = (one_of("kind", ApiTokenKind.ALL),)

    id: str = id_field()
    token_hash: str = Field(unique=True)
    user_id: str = Field(foreign_key="users.id", ondelete=CASCADE, index=True)
    kind: str = ApiTokenKind.CLI
    created_at: datetime = created_field()
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = maybe_when()
    last_used_at: datetime | None = maybe_when()
    # The sign-in the token came from: its amr/acr/auth_time, the roles held when it was
    # issued (losing one kills the token) and the web session that approved it (signing that
    # session out revokes the token).
    amr: list[str] = added_list()
    acr: str | None = None
    auth_time: datetime | None = maybe_when()
    roles: list[str] = added_list()
    parent_session: str | None = Field(default=None, index=True)
    revoked_by: str | None = None
    revoke_reason: str | None = None


class CliAuthorization(TableModel, table=True):
    """A pending CLI login (device code or loopback redirect with PKCE)."""

    __tablename__ = "cli_authorizations"
    __table_args__ = (
        one_of("kind", CliAuthorizationKind.ALL),
        one_of("state", CliAuthorizationState.ALL),
    )

    id: str = id_field()
    kind: str
    device_code_hash: str | None = Field(default=None, unique=True)
    user_code: str | None = Field(default=None, unique=True, repr=False)
    code_hash: str | None = Field(default=None, unique=True)
    code_challenge: str | None = None
    redirect_uri: str | None = None
    state: str = CliAuthorizationState.PENDING
    user_id: str | None = optional_fk("users.id", ondelete=CASCADE)
    client_name: str
    created_at: datetime = created_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    # Who asked (shown to the approver) and how the approving web session was authenticated.
    source_ip: str | None = Field(default=None, index=True)
    amr: list[str] = added_list()
    acr: str | None = None
    auth_time: datetime | None = maybe_when()
    session_hash: str | None = None


class SshCertificate(TableModel, table=True):
    """An SSH user certificate the broker issued (``conduit ssh-cert``), by its serial.

    The certificate names its serial as principal ``c:<serial>``; the front door looks the row
    up on every channel: revoked, expired, its token or web session gone, its user disabled or
    without a role it was issued under means refused. ``amr``/``acr``/``auth_time`` are those
    of the credential that minted it and go into every policy decision made for it.
    """

    __tablename__ = "ssh_certificates"
    __table_args__ = (sa.CheckConstraint("serial > 0", name="serial"),)

    serial: int = Field(
        primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    user_id: str = Field(foreign_key="users.id", ondelete=CASCADE, index=True)
    token_id: str | None = optional_fk("api_tokens.id", ondelete=CASCADE)
    session_hash: str | None = Field(default=None, index=True)
    key_id: str
    key_sha256: str
    amr: list[str] = json_field(list)
    acr: str | None = None
    auth_time: datetime | None = maybe_when()
    roles: list[str] = json_field(list)
    issued_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    revoked_at: datetime | None = maybe_when()
    revoked_by: str | None = None
    revoke_reason: str | None = None
