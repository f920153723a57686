"""The sessions tables (SQLModel, ``table=True``) and their enumerations.

Contracts shared by every table:

* IDs are UUID4 strings unless a table documents another key.
* Every timestamp is a :class:`~sessions.types.UTCDateTime` (aware UTC in Python; naive input is
  rejected at flush time).  ``created_at`` defaults to the wall clock only as a fallback:
  domain code passes ``clock.now()`` explicitly.
* Enumerated columns hold the string constants of the matching ``*State``/``*Kind`` class below
  and are enforced by CHECK constraints; each class has an ``ALL`` tuple.
* Foreign keys to history (requests, approvals, grants, sessions, recordings) are ``RESTRICT``:
  deleting a user, asset or grant that has history fails instead of erasing it.  Only
  credentials (web sessions, API tokens, SSH certificates, CLI authorizations) cascade with
  their user.
  The audit log has no foreign keys at all: it must outlive everything it mentions.
* JSON columns are replaced, not mutated in place (in-place changes are not tracked).
* Table models are not validated by pydantic on construction (SQLModel behaviour); the database
  constraints and the few ``@validates`` hooks here are the enforcement.
* All tables live in :data:`metadata`, not ``SQLModel.metadata``; Alembic migrations in
  ``sessions/migrations`` create them (see :func:`sessions.db.migrate`).
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy.orm import registry, validates
from sqlmodel import Field, SQLModel

from sessions.errors import ValidationError
from sessions.types import JSONDocument, UTCDateTime, json_field

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Why a private registry: deterministic constraint names (so migrations can name them) without
# mutating the process-global SQLModel.metadata other code may use.
metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
_registry = registry(metadata=metadata)

OnDelete = Literal["RESTRICT", "CASCADE", "SET NULL"]
RESTRICT: OnDelete = "RESTRICT"
CASCADE: OnDelete = "CASCADE"
SET_NULL: OnDelete = "SET NULL"


class TableModel(SQLModel, registry=_registry):
    """Base class of every sessions table (binds them to :data:`metadata`)."""


def new_id() -> str:
    """Return a fresh UUID4 string (the default primary key)."""
    return str(uuid4())


def utc_now() -> datetime:
    """Wall-clock fallback for ``created_at``; domain code should pass ``clock.now()``."""
    return datetime.now(UTC)


def check_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA timezone; raise :class:`ValidationError` if not."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValidationError(
            f"site timezone: {name!r} is not an IANA timezone name", code="invalid_timezone"
        ) from exc
    return name


def _one_of(column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    # Values are the constants below, never user input, so inlining them is safe.
    allowed = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=column)


def _id() -> Any:
    return Field(default_factory=new_id, primary_key=True)


def _created() -> Any:
    return Field(default_factory=utc_now, sa_type=UTCDateTime)


def _maybe_when() -> Any:
    return Field(default=None, sa_type=UTCDateTime)


def _optional_fk(target: str, *, ondelete: OnDelete = RESTRICT) -> Any:
    return Field(default=None, foreign_key=target, ondelete=ondelete, index=True)


def _added_list() -> Any:
    """A non-null JSON list column added to an existing table (existing rows get ``[]``)."""
    return Field(
        default_factory=list,
        sa_type=JSONDocument,
        nullable=False,
        sa_column_kwargs={"server_default": "[]"},
    )


# --------------------------------------------------------------------------- enumerations


class Criticality:
    """How bad it is if an asset misbehaves."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"
    ALL: ClassVar[tuple[str, ...]] = (LOW, MEDIUM, HIGH, CRITICAL)


class AgentState:
    """Agent enrolment: ``pending`` until approved, ``revoked`` is final."""

    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    ALL: ClassVar[tuple[str, ...]] = (PENDING, ACTIVE, REVOKED)


class OperationClass:
    """What a vendor may do to an asset; ``ALL`` is ordered from least to most dangerous."""

    READ_ONLY = "read_only"
    TUNE = "tune"
    PROGRAM = "program"
    FIRMWARE = "firmware"
    ALL: ClassVar[tuple[str, ...]] = (READ_ONLY, TUNE, PROGRAM, FIRMWARE)


class AccessRequestState:
    """Lifecycle of an access request."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    ALL: ClassVar[tuple[str, ...]] = (PENDING, APPROVED, DENIED, CANCELLED, EXPIRED)


class ApprovalVerdict:
    """One approver's decision."""

    APPROVE = "approve"
    DENY = "deny"
    ALL: ClassVar[tuple[str, ...]] = (APPROVE, DENY)


class GrantState:
    """Lifecycle of a grant (the authorization a session runs under)."""

    PENDING = "pending"
    APPROVED = "approved"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    DENIED = "denied"
    CANCELLED = "cancelled"
    ALL: ClassVar[tuple[str, ...]] = (
        PENDING,
        APPROVED,
        ACTIVE,
        EXPIRED,
        REVOKED,
        DENIED,
        CANCELLED,
    )


class SessionKind:
    """How a maintenance session reaches the asset."""

    SSH = "ssh"
    SFTP = "sftp"
    TCP = "tcp"
    WEB_TERMINAL = "web_terminal"
    ALL: ClassVar[tuple[str, ...]] = (SSH, SFTP, TCP, WEB_TERMINAL)


class SessionState:
    """Lifecycle of a maintenance session; ``closed`` and ``failed`` are final."""

    STARTING = "starting"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"
    ALL: ClassVar[tuple[str, ...]] = (STARTING, ACTIVE, CLOSING, CLOSED, FAILED)


class RecordingFormat:
    """File format of a recording."""

    ASCIICAST = "asciicast"
    PCAP = "pcap"
    OPS_JSONL = "ops_jsonl"
    ALL: ClassVar[tuple[str, ...]] = (ASCIICAST, PCAP, OPS_JSONL)


class RecordingIntegrity:
    """Result of the last verification of a recording."""

    UNKNOWN = "unknown"
    OK = "ok"
    BROKEN = "broken"
    ALL: ClassVar[tuple[str, ...]] = (UNKNOWN, OK, BROKEN)


class AuditOutcome:
    """Outcome recorded with an audit event."""

    OK = "ok"
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"
    REJECTED = "rejected"
    REFUSED = "refused"  # the enforcement point stopped something on the wire (e.g. a bad frame)
    ALL: ClassVar[tuple[str, ...]] = (OK, ALLOW, DENY, ERROR, REJECTED, REFUSED)


class ApiTokenKind:
    """What an API token is for."""

    CLI = "cli"
    ALL: ClassVar[tuple[str, ...]] = (CLI,)


class CliAuthorizationKind:
    """How the CLI obtains its token (RFC 8628 device flow or loopback redirect)."""

    DEVICE = "device"
    LOOPBACK = "loopback"
    ALL: ClassVar[tuple[str, ...]] = (DEVICE, LOOPBACK)


class CliAuthorizationState:
    """Lifecycle of a CLI authorization; ``consumed`` means the token was issued once."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CONSUMED = "consumed"
    EXPIRED = "expired"
    ALL: ClassVar[tuple[str, ...]] = (PENDING, APPROVED, DENIED, CONSUMED, EXPIRED)


# --------------------------------------------------------------------------- organisation


class VendorOrg(TableModel, table=True):
    """A vendor company; ``slug`` equals the IdP's ``vendor_org`` claim."""

    __tablename__ = "vendor_orgs"

    id: str = _id()
    slug: str = Field(unique=True)
    name: str
    # Further values of the IdP's org claim that map to this organisation (besides ``slug``).
    idp_values: list[str] = _added_list()
    contacts: list[str] = _added_list()
    created_at: datetime = _created()


class User(TableModel, table=True):
    """A person known from the IdP, keyed by (issuer, sub); claims are refreshed at login."""

    __tablename__ = "users"
    __table_args__ = (sa.UniqueConstraint("issuer", "sub"),)

    id: str = _id()
    issuer: str
    sub: str
    email: str = ""  # "" when the IdP does not release it
    name: str = ""
    groups: list[str] = json_field(list)
    roles: list[str] = json_field(list)
    vendor_org_id: str | None = _optional_fk("vendor_orgs.id")
    amr: list[str] = json_field(list)
    disabled: bool = False
    created_at: datetime = _created()
    last_login_at: datetime | None = _maybe_when()


class Site(TableModel, table=True):
    """A plant.  ``timezone`` is an IANA name, checked on assignment."""

    __tablename__ = "sites"

    id: str = _id()
    name: str = Field(unique=True)
    timezone: str
    description: str = ""

    @validates("timezone")
    def _validate_timezone(self, key: str, value: str) -> str:
        return check_timezone(value)


class MaintenanceWindow(TableModel, table=True):
    """A recurring maintenance window of a site, in the site's timezone.

    ``days`` are the days the window *starts* on (``mon``..``sun``); ``start``/``end`` are
    ``HH:MM``; an ``end`` at or before ``start`` means the window runs past midnight.
    """

    __tablename__ = "maintenance_windows"

    id: str = _id()
    site_id: str = Field(foreign_key="sites.id", ondelete=CASCADE, index=True)
    days: list[str] = json_field(list)
    start: str
    end: str
    description: str = ""
    created_at: datetime = _created()


class PlantFlag(TableModel, table=True):
    """A plant-wide switch, e.g. ``vendor_lockout``; ``value`` is a small JSON object."""

    __tablename__ = "plant_flags"

    key: str = Field(primary_key=True)
    value: dict[str, Any] = json_field(dict)
    updated_at: datetime = _created()
    updated_by: str | None = None


class Zone(TableModel, table=True):
    """An IEC 62443 zone inside a site, at a Purdue level 0..5."""

    __tablename__ = "zones"
    __table_args__ = (
        sa.UniqueConstraint("site_id", "name"),
        sa.CheckConstraint("purdue_level >= 0 AND purdue_level <= 5", name="purdue_level"),
    )

    id: str = _id()
    # No separate index: site_id leads uq_zones_site_id_name.
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=False)
    name: str
    purdue_level: int
    description: str = ""
    notes: str = Field(default="", sa_column_kwargs={"server_default": ""})


class Agent(TableModel, table=True):
    """An agent process in an OT zone that dials out to the broker."""

    __tablename__ = "agents"
    __table_args__ = (_one_of("state", AgentState.ALL),)

    id: str = _id()
    name: str
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=True)
    zone_id: str | None = _optional_fk("zones.id")
    state: str = AgentState.PENDING
    public_key: str | None = None
    # SHA-256 pin of ``public_key`` (agents.wire.key_pin): how the gateway finds the agent.
    key_pin: str | None = Field(default=None, unique=True)
    cert_serial: str | None = None
    version: str | None = None
    hostname: str | None = None
    # The broker node holding its tunnel now (None when disconnected everywhere known).
    connected_via: str | None = None
    last_seen_at: datetime | None = _maybe_when()
    revoked_at: datetime | None = _maybe_when()
    created_at: datetime = _created()


class AgentJoinToken(TableModel, table=True):
    """A one-time, expiring enrolment token for a site/zone; only the secret's hash is stored."""

    __tablename__ = "agent_join_tokens"
    __table_args__ = (sa.CheckConstraint("expires_at > created_at", name="validity"),)

    id: str = Field(primary_key=True)  # the public token id (16 hex digits)
    secret_hash: str
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=True)
    zone_id: str | None = _optional_fk("zones.id")
    name: str = ""  # the agent's name if the admin chose one
    created_by: str = ""
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = _maybe_when()
    agent_id: str | None = _optional_fk("agents.id", ondelete=SET_NULL)


class AgentEndpoint(TableModel, table=True):
    """A host:port an agent declares in its own config (its inventory report)."""

    __tablename__ = "agent_endpoints"
    __table_args__ = (
        sa.UniqueConstraint("agent_id", "host", "port"),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name="port"),
    )

    id: str = _id()
    agent_id: str = Field(foreign_key="agents.id", ondelete=CASCADE, index=True)
    host: str
    port: int
    protocol: str = "tcp"
    name: str = ""
    declared: bool = True  # False once the agent stops declaring it
    first_seen_at: datetime = _created()
    last_reported_at: datetime = _created()


class Asset(TableModel, table=True):
    """A machine vendors maintain (PLC, HMI, server), reached through ``agent_id`` if set.

    What a vendor may reach on it is its :class:`AssetEndpoint` rows (inventory, never request
    input); ``protocols`` in the policy input is derived from them.
    """

    __tablename__ = "assets"
    __table_args__ = (_one_of("criticality", Criticality.ALL),)

    id: str = _id()
    name: str = Field(unique=True)
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=True)
    zone_id: str = Field(foreign_key="zones.id", ondelete=RESTRICT, index=True)
    criticality: str
    owner_group: str
    labels: dict[str, str] = json_field(dict)
    # Why SET NULL: deleting an agent must leave the asset unreachable, not delete it.
    agent_id: str | None = _optional_fk("agents.id", ondelete=SET_NULL)
    created_at: datetime = _created()
    description: str = Field(default="", sa_column_kwargs={"server_default": ""})
    vendor_notes: str = Field(default="", sa_column_kwargs={"server_default": ""})
    # Set when the plant file removed an asset that has history: it takes no new requests.
    archived_at: datetime | None = _maybe_when()


class EndpointProtocol:
    """What an asset endpoint speaks; inspection is chosen by this, never by port number."""

    SSH = "ssh"
    MODBUS = "modbus"
    S7 = "s7"
    OPCUA = "opcua"
    ENIP = "enip"
    DNP3 = "dnp3"
    VNC = "vnc"
    RDP = "rdp"
    HTTPS = "https"
    TCP = "tcp"
    ALL: ClassVar[tuple[str, ...]] = (SSH, MODBUS, S7, OPCUA, ENIP, DNP3, VNC, RDP, HTTPS, TCP)


class AssetEndpoint(TableModel, table=True):
    """One declared host:port of an asset, with its protocol and protocol settings.

    ``settings`` is validated by :func:`sessions.endpoints.validate_settings` (SSH logins per
    operation class, Modbus unit ids and write ranges per operation class and table).
    It is reached through ``agent_id`` (the agent that declares it), else through the asset's
    agent (:func:`route_agent`).
    """

    __tablename__ = "asset_endpoints"
    __table_args__ = (
        sa.UniqueConstraint("asset_id", "name"),
        sa.UniqueConstraint("asset_id", "host", "port"),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name="port"),
        _one_of("protocol", EndpointProtocol.ALL),
    )

    id: str = _id()
    # No separate index: asset_id leads uq_asset_endpoints_asset_id_name.
    asset_id: str = Field(foreign_key="assets.id", ondelete=CASCADE, index=False)
    name: str
    host: str
    port: int
    protocol: str
    settings: dict[str, Any] = json_field(dict)
    created_at: datetime = _created()
    # Why SET NULL: deleting an agent must leave the endpoint unreachable, not delete it.
    agent_id: str | None = _optional_fk("agents.id", ondelete=SET_NULL)


def route_agent(asset: Asset, endpoint: AssetEndpoint) -> str | None:
    """The agent that reaches ``endpoint``: its own, else its asset's (None: unreachable)."""
    return endpoint.agent_id or asset.agent_id


class VendorContract(TableModel, table=True):
    """A vendor's contract covering a site and/or one asset for a validity window."""

    __tablename__ = "vendor_contracts"
    __table_args__ = (
        sa.CheckConstraint("site_id IS NOT NULL OR asset_id IS NOT NULL", name="scope"),
        sa.CheckConstraint("valid_until > valid_from", name="validity"),
    )

    id: str = _id()
    vendor_org_id: str = Field(foreign_key="vendor_orgs.id", ondelete=RESTRICT, index=True)
    site_id: str | None = _optional_fk("sites.id")
    asset_id: str | None = _optional_fk("assets.id")
    reference: str
    valid_from: datetime = Field(sa_type=UTCDateTime)
    valid_until: datetime = Field(sa_type=UTCDateTime)
    # Operation classes the contract allows; empty means all of them.
    operation_classes: list[str] = _added_list()
    created_at: datetime = _created()


# --------------------------------------------------------------------------- access


class AccessRequest(TableModel, table=True):
    """A user's request for access to one asset, for a window and a purpose."""

    __tablename__ = "access_requests"
    __table_args__ = (
        _one_of("operation_class", OperationClass.ALL),
        _one_of("state", AccessRequestState.ALL),
        sa.CheckConstraint("ends_at > starts_at", name="window"),
        sa.CheckConstraint("length(trim(reason)) > 0", name="reason"),
    )

    id: str = _id()
    requester_id: str = Field(foreign_key="users.id", ondelete=RESTRICT, index=True)
    asset_id: str = Field(foreign_key="assets.id", ondelete=RESTRICT, index=True)
    operation_class: str
    protocols: list[str] = json_field(list)
    # The declared endpoint ports and SSH login the request names (the grant allows exactly these).
    ports: list[int] = json_field(list)
    login: str | None = None
    starts_at: datetime = Field(sa_type=UTCDateTime)
    ends_at: datetime = Field(sa_type=UTCDateTime)
    reason: str
    ticket: str | None = None
    maintenance_window_only: bool = Field(
        default=False, sa_column_kwargs={"server_default": sa.false()}
    )
    state: str = Field(default=AccessRequestState.PENDING, index=True)
    decision_reasons: list[str] = json_field(list)
    created_at: datetime = _created()
    decided_at: datetime | None = _maybe_when()
    # How the credential that filed the request was authenticated (policy asks again at the
    # window start with these, not with whatever the requester signed in with since).
    auth_amr: list[str] = _added_list()
    auth_acr: str | None = None


class Approval(TableModel, table=True):
    """One approver's verdict on a request; an approver decides a request at most once."""

    __tablename__ = "approvals"
    __table_args__ = (
        sa.UniqueConstraint("request_id", "approver_id"),
        _one_of("verdict", ApprovalVerdict.ALL),
    )

    id: str = _id()
    # No separate index: request_id leads uq_approvals_request_id_approver_id.
    request_id: str = Field(foreign_key="access_requests.id", ondelete=RESTRICT, index=False)
    approver_id: str = Field(foreign_key="users.id", ondelete=RESTRICT, index=True)
    verdict: str
    reason: str | None = None
    created_at: datetime = _created()


class Grant(TableModel, table=True):
    """The authorization produced by a request: who, what, when, under which obligations."""

    __tablename__ = "grants"
    __table_args__ = (
        _one_of("operation_class", OperationClass.ALL),
        _one_of("state", GrantState.ALL),
        sa.CheckConstraint("ends_at > starts_at", name="window"),
    )

    id: str = _id()
    request_id: str = Field(foreign_key="access_requests.id", ondelete=RESTRICT, unique=True)
    user_id: str = Field(foreign_key="users.id", ondelete=RESTRICT, index=True)
    asset_id: str = Field(foreign_key="assets.id", ondelete=RESTRICT, index=True)
    operation_class: str
    starts_at: datetime = Field(sa_type=UTCDateTime)
    ends_at: datetime = Field(sa_type=UTCDateTime, index=True)
    state: str = Field(default=GrantState.PENDING, index=True)
    obligations: dict[str, Any] = json_field(dict)
    created_at: datetime = _created()
    revoked_at: datetime | None = _maybe_when()
    revoked_by: str | None = None
    revoke_reason: str | None = None


class MaintenanceSession(TableModel, table=True):
    """One connection of a user to an asset (ssh, sftp, tcp forward or web terminal)."""

    __tablename__ = "maintenance_sessions"
    __table_args__ = (
        _one_of("kind", SessionKind.ALL),
        _one_of("state", SessionState.ALL),
        sa.CheckConstraint("bytes_up >= 0 AND bytes_down >= 0", name="byte_counts"),
    )

    id: str = _id()
    grant_id: str | None = _optional_fk("grants.id")
    user_id: str = Field(foreign_key="users.id", ondelete=RESTRICT, index=True)
    asset_id: str = Field(foreign_key="assets.id", ondelete=RESTRICT, index=True)
    kind: str
    login: str | None = None
    state: str = Field(default=SessionState.STARTING, index=True)
    source_ip: str | None = None
    started_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = _maybe_when()
    end_reason: str | None = None
    bytes_up: int = Field(default=0, sa_type=sa.BigInteger)
    bytes_down: int = Field(default=0, sa_type=sa.BigInteger)


class Recording(TableModel, table=True):
    """A recording file of a session, with its hash-chain head and manifest."""

    __tablename__ = "recordings"
    __table_args__ = (
        _one_of("format", RecordingFormat.ALL),
        _one_of("integrity", RecordingIntegrity.ALL),
        sa.CheckConstraint("size_bytes >= 0", name="size_bytes"),
    )

    id: str = _id()
    session_id: str = Field(foreign_key="maintenance_sessions.id", ondelete=RESTRICT, index=True)
    format: str
    path: str
    manifest_path: str | None = None
    chain_head: str | None = None
    size_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = _created()
    finalized_at: datetime | None = _maybe_when()
    integrity: str = RecordingIntegrity.UNKNOWN


class AuditEvent(TableModel, table=True):
    """One link of the append-only audit chain; written only by :class:`sessions.audit.AuditLog`.

    ``seq`` is assigned by the log (1, 2, 3 … without gaps), not by the database.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        _one_of("outcome", AuditOutcome.ALL),
        sa.CheckConstraint("seq >= 1", name="seq"),
        sa.CheckConstraint("length(prev_hash) = 64", name="prev_hash"),
        sa.CheckConstraint("length(hash) = 64", name="hash"),
    )

    seq: int = Field(
        primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    id: str = Field(default_factory=new_id, unique=True)
    ts: datetime = Field(sa_type=UTCDateTime, index=True)
    kind: str = Field(index=True)
    actor: str = Field(index=True)
    subject: str | None = Field(default=None, index=True)
    outcome: str
    source_ip: str | None = None
    details: dict[str, Any] = json_field(dict)
    prev_hash: str
    hash: str = Field(unique=True)


# --------------------------------------------------------------------------- identity / auth


class LoginFlow(TableModel, table=True):
    """An OIDC login in progress, keyed by the SHA-256 of its OAuth ``state``."""

    __tablename__ = "login_flows"

    state_hash: str = Field(primary_key=True)
    nonce: str = Field(repr=False)
    code_verifier: str = Field(repr=False)
    browser_binding_hash: str
    return_to: str
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class WebSession(TableModel, table=True):
    """A browser session, keyed by the SHA-256 of its cookie value."""

    __tablename__ = "web_sessions"

    id_hash: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", ondelete=CASCADE, index=True)
    csrf_token: str = Field(repr=False)
    # Kept only as the RP-initiated logout hint; never listed or logged.
    id_token: str | None = Field(default=None, repr=False)
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    last_seen_at: datetime = Field(sa_type=UTCDateTime)
    # How the IdP authenticated this sign-in (ID token amr, acr, auth_time).
    amr: list[str] = _added_list()
    acr: str | None = None
    auth_time: datetime | None = _maybe_when()


class ApiToken(TableModel, table=True):
    """A bearer token for the CLI; only its hash is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = (_one_of("kind", ApiTokenKind.ALL),)

    id: str = _id()
    token_hash: str = Field(unique=True)
    user_id: str = Field(foreign_key="users.id", ondelete=CASCADE, index=True)
    kind: str = ApiTokenKind.CLI
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = _maybe_when()
    last_used_at: datetime | None = _maybe_when()
    # The sign-in the token came from: its amr/acr/auth_time, the roles held when it was
    # issued (losing one kills the token) and the web session that approved it (signing that
    # session out revokes the token).
    amr: list[str] = _added_list()
    acr: str | None = None
    auth_time: datetime | None = _maybe_when()
    roles: list[str] = _added_list()
    parent_session: str | None = Field(default=None, index=True)
    revoked_by: str | None = None
    revoke_reason: str | None = None


class CliAuthorization(TableModel, table=True):
    """A pending CLI login (device code or loopback redirect with PKCE)."""

    __tablename__ = "cli_authorizations"
    __table_args__ = (
        _one_of("kind", CliAuthorizationKind.ALL),
        _one_of("state", CliAuthorizationState.ALL),
    )

    id: str = _id()
    kind: str
    device_code_hash: str | None = Field(default=None, unique=True)
    user_code: str | None = Field(default=None, unique=True, repr=False)
    code_hash: str | None = Field(default=None, unique=True)
    code_challenge: str | None = None
    redirect_uri: str | None = None
    state: str = CliAuthorizationState.PENDING
    user_id: str | None = _optional_fk("users.id", ondelete=CASCADE)
    client_name: str
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    # Who asked (shown to the approver) and how the approving web session was authenticated.
    source_ip: str | None = Field(default=None, index=True)
    amr: list[str] = _added_list()
    acr: str | None = None
    auth_time: datetime | None = _maybe_when()
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
    token_id: str | None = _optional_fk("api_tokens.id", ondelete=CASCADE)
    session_hash: str | None = Field(default=None, index=True)
    key_id: str
    key_sha256: str
    amr: list[str] = json_field(list)
    acr: str | None = None
    auth_time: datetime | None = _maybe_when()
    roles: list[str] = json_field(list)
    issued_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    revoked_at: datetime | None = _maybe_when()
    revoked_by: str | None = None
    revoke_reason: str | None = None
