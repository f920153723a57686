"""Access and its history: requests, approvals, grants, maintenance sessions, recordings and
the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field

from sessions.models.base import (
    RESTRICT,
    TableModel,
    added_list,
    created_field,
    id_field,
    maybe_when,
    new_id,
    one_of,
    optional_fk,
)
from sessions.models.enums import (
    AccessRequestState,
    ApprovalVerdict,
    AuditOutcome,
    GrantState,
    OperationClass,
    RecordingFormat,
    RecordingIntegrity,
    SessionKind,
    SessionState,
)
from sessions.types import JSONDocument, UTCDateTime, json_field


class AccessRequest(TableModel, table=True):
    """A user's request for access to one asset, for a window and a purpose."""

    __tablename__ = "access_requests"
    __table_args__ = (
        one_of("operation_class", OperationClass.ALL),
        one_of("state", AccessRequestState.ALL),
        sa.CheckConstraint("ends_at > starts_at", name="window"),
        sa.CheckConstraint("length(trim(reason)) > 0", name="reason"),
    )

    id: str = id_field()
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
    created_at: datetime = created_field()
    decided_at: datetime | None = maybe_when()
    # How the credential that filed the request was authenticated (policy asks again at the
    # window start with these, not with whatever the requester signed in with since).
    auth_amr: list[str] = added_list()
    auth_acr: str | None = None
    # The obligations of the policy decision that allowed filing (``Obligations.as_dict()``)
    # and the bundle version that produced them: what approvers see before deciding. The grant
    # takes the approving decision's obligations, and each connection is decided again. None
    # for requests filed before migration 0010 (not recorded).
    obligations: dict[str, Any] | None = Field(default=None, sa_type=JSONDocument)
    policy_version: str | None = None


class Approval(TableModel, table=True):
    """One approver's verdict on a request; an approver decides a request at most once."""

    __tablename__ = "approvals"
    __table_args__ = (
        sa.UniqueConstraint("request_id", "approver_id"),
        one_of("verdict", ApprovalVerdict.ALL),
    )

    id: str = id_field()
    # No separate index: request_id leads uq_approvals_request_id_approver_id.
    request_id: str = Field(foreign_key="access_requests.id", ondelete=RESTRICT, index=False)
    approver_id: str = Field(foreign_key="users.id", ondelete=RESTRICT, index=True)
    verdict: str
    reason: str | None = None
    created_at: datetime = created_field()


class Grant(TableModel, table=True):
    """The authorization produced by a request: who, what, when, under which obligations."""

    __tablename__ = "grants"
    __table_args__ = (
        one_of("operation_class", OperationClass.ALL),
        one_of("state", GrantState.ALL),
        sa.CheckConstraint("ends_at > starts_at", name="window"),
    )

    id: str = id_field()
    request_id: str = Field(foreign_key="access_requests.id", ondelete=RESTRICT, unique=True)
    user_id: str = Field(foreign_key="users.id", ondelete=RESTRICT, index=True)
    asset_id: str = Field(foreign_key="assets.id", ondelete=RESTRICT, index=True)
    operation_class: str
    starts_at: datetime = Field(sa_type=UTCDateTime)
    ends_at: datetime = Field(sa_type=UTCDateTime, index=True)
    state: str = Field(default=GrantState.PENDING, index=True)
    obligations: dict[str, Any] = json_field(dict)
    created_at: datetime = created_field()
    revoked_at: datetime | None = maybe_when()
    revoked_by: str | None = None
    revoke_reason: str | None = None


class MaintenanceSession(TableModel, table=True):
    """One connection of a user to an asset (ssh, sftp, tcp forward or web terminal)."""

    __tablename__ = "maintenance_sessions"
    __table_args__ = (
        one_of("kind", SessionKind.ALL),
        one_of("state", SessionState.ALL),
        sa.CheckConstraint("bytes_up >= 0 AND bytes_down >= 0", name="byte_counts"),
    )

    id: str = id_field()
    grant_id: str | None = optional_fk("grants.id")
    user_id: str = Field(foreign_key="users.id", ondelete=RESTRICT, index=True)
    asset_id: str = Field(foreign_key="assets.id", ondelete=RESTRICT, index=True)
    kind: str
    login: str | None = None
    state: str = Field(default=SessionState.STARTING, index=True)
    source_ip: str | None = None
    started_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = maybe_when()
    end_reason: str | None = None
    bytes_up: int = Field(default=0, sa_type=sa.BigInteger)
    bytes_down: int = Field(default=0, sa_type=sa.BigInteger)


class Recording(TableModel, table=True):
    """A recording file of a session, with its hash-chain head and manifest."""

    __tablename__ = "recordings"
    __table_args__ = (
        one_of("format", RecordingFormat.ALL),
        one_of("integrity", RecordingIntegrity.ALL),
        sa.CheckConstraint("size_bytes >= 0", name="size_bytes"),
    )

    id: str = id_field()
    session_id: str = Field(foreign_key="maintenance_sessions.id", ondelete=RESTRICT, index=True)
    format: str
    path: str
    manifest_path: str | None = None
    chain_head: str | None = None
    size_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = created_field()
    finalized_at: datetime | None = maybe_when()
    integrity: str = RecordingIntegrity.UNKNOWN


class AuditEvent(TableModel, table=True):
    """One link of the append-only audit chain; written only by :class:`sessions.audit.AuditLog`.

    ``seq`` is assigned by the log (1, 2, 3 … without gaps), not by the database.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        one_of("outcome", AuditOutcome.ALL),
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
