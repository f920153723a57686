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
* Modules: :mod:`.base` (metadata, ``TableModel``, column helpers), :mod:`.enums`,
  :mod:`.organisation` (the plant and who works on it), :mod:`.access` (requests to recordings
  and the audit log), :mod:`.session_protocol` (a forward session's endpoint protocol),
  :mod:`.identity` (sign-in state, credentials); this package re-exports
  them, so callers import from ``sessions.models``.
* All tables live in :data:`metadata`, not ``SQLModel.metadata``; Alembic migrations in
  ``sessions/migrations`` create them (see :func:`sessions.db.migrate`).
"""

from __future__ import annotations

from sessions.models.access import (
    AccessRequest,
    Approval,
    AuditEvent,
    Grant,
    MaintenanceSession,
    Recording,
)
from sessions.models.base import (
    CASCADE,
    NAMING_CONVENTION,
    RESTRICT,
    SET_NULL,
    OnDelete,
    TableModel,
    added_list,
    check_timezone,
    created_field,
    id_field,
    maybe_when,
    metadata,
    new_id,
    one_of,
    optional_fk,
    table_registry,
    utc_now,
)
from sessions.models.enums import (
    AccessRequestState,
    AgentState,
    ApiTokenKind,
    ApprovalVerdict,
    AuditOutcome,
    CliAuthorizationKind,
    CliAuthorizationState,
    Criticality,
    GrantState,
    OperationClass,
    RecordingFormat,
    RecordingIntegrity,
    SessionKind,
    SessionState,
)
from sessions.models.identity import (
    ApiToken,
    CliAuthorization,
    LoginFlow,
    SshCertificate,
    WebSession,
)
from sessions.models.organisation import (
    Agent,
    AgentEndpoint,
    AgentJoinToken,
    Asset,
    AssetEndpoint,
    EndpointProtocol,
    MaintenanceWindow,
    PlantFlag,
    Site,
    User,
    VendorContract,
    VendorOrg,
    Zone,
    route_agent,
)
from sessions.models.session_protocol import SessionProtocol

__all__ = [
    "CASCADE",
    "NAMING_CONVENTION",
    "RESTRICT",
    "SET_NULL",
    "AccessRequest",
    "AccessRequestState",
    "Agent",
    "AgentEndpoint",
    "AgentJoinToken",
    "AgentState",
    "ApiToken",
    "ApiTokenKind",
    "Approval",
    "ApprovalVerdict",
    "Asset",
    "AssetEndpoint",
    "AuditEvent",
    "AuditOutcome",
    "CliAuthorization",
    "CliAuthorizationKind",
    "CliAuthorizationState",
    "Criticality",
    "EndpointProtocol",
    "Grant",
    "GrantState",
    "LoginFlow",
    "MaintenanceSession",
    "MaintenanceWindow",
    "OnDelete",
    "OperationClass",
    "PlantFlag",
    "Recording",
    "RecordingFormat",
    "RecordingIntegrity",
    "SessionKind",
    "SessionProtocol",
    "SessionState",
    "Site",
    "SshCertificate",
    "TableModel",
    "User",
    "VendorContract",
    "VendorOrg",
    "WebSession",
    "Zone",
    "added_list",
    "check_timezone",
    "created_field",
    "id_field",
    "maybe_when",
    "metadata",
    "new_id",
    "one_of",
    "optional_fk",
    "route_agent",
    "table_registry",
    "utc_now",
]
