"""Initial schema: organisation, access, sessions, recordings, audit chain, identity.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01

Types and enumerations are written out here (not imported from sessions.models) so this
revision keeps creating the same schema after the models move on.  Timestamps are naive-UTC
``DateTime`` (what ``sessions.types.UTCDateTime`` stores); JSON is plain ``JSON``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _str(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(), nullable=nullable)


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def _json(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.JSON(), nullable=False)


def _pk(table: str, column: str = "id") -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(column, name=op.f(f"pk_{table}"))


def _fk(
    table: str, column: str, target: str, ondelete: str = "RESTRICT"
) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def _unique(table: str, *columns: str) -> sa.UniqueConstraint:
    return sa.UniqueConstraint(*columns, name=op.f(f"uq_{table}_{'_'.join(columns)}"))


def _check(table: str, name: str, sql: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(sql, name=op.f(f"ck_{table}_{name}"))


def _one_of(table: str, column: str, values: Sequence[str]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{value}'" for value in values)
    return _check(table, column, f"{column} IN ({allowed})")


def _indexes(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


OPERATION_CLASSES = ("read_only", "tune", "program", "firmware")


def upgrade() -> None:
    """Create every table of the sessions schema."""
    op.create_table(
        "vendor_orgs",
        _str("id"),
        _str("slug"),
        _str("name"),
        _ts("created_at"),
        _pk("vendor_orgs"),
        _unique("vendor_orgs", "slug"),
    )
    op.create_table(
        "users",
        _str("id"),
        _str("issuer"),
        _str("sub"),
        _str("email"),
        _str("name"),
        _json("groups"),
        _json("roles"),
        _str("vendor_org_id", nullable=True),
        _json("amr"),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _ts("last_login_at", nullable=True),
        _pk("users"),
        _fk("users", "vendor_org_id", "vendor_orgs"),
        _unique("users", "issuer", "sub"),
    )
    _indexes("users", "vendor_org_id")
    op.create_table(
        "sites",
        _str("id"),
        _str("name"),
        _str("timezone"),
        _str("description"),
        _pk("sites"),
        _unique("sites", "name"),
    )
    op.create_table(
        "zones",
        _str("id"),
        _str("site_id"),
        _str("name"),
        sa.Column("purdue_level", sa.Integer(), nullable=False),
        _str("description"),
        _pk("zones"),
        _fk("zones", "site_id", "sites"),
        _unique("zones", "site_id", "name"),
        _check("zones", "purdue_level", "purdue_level >= 0 AND purdue_level <= 5"),
    )
    op.create_table(
        "agents",
        _str("id"),
        _str("name"),
        _str("site_id"),
        _str("zone_id", nullable=True),
        _str("state"),
        _str("public_key", nullable=True),
        _str("cert_serial", nullable=True),
        _str("version", nullable=True),
        _ts("last_seen_at", nullable=True),
        _ts("revoked_at", nullable=True),
        _ts("created_at"),
        _pk("agents"),
        _fk("agents", "site_id", "sites"),
        _fk("agents", "zone_id", "zones"),
        _one_of("agents", "state", ("pending", "active", "revoked")),
    )
    _indexes("agents", "site_id", "zone_id")
    op.create_table(
        "assets",
        _str("id"),
        _str("name"),
        _str("site_id"),
        _str("zone_id"),
        _str("criticality"),
        _str("owner_group"),
        _json("protocols"),
        _str("endpoint_host"),
        sa.Column("endpoint_port", sa.Integer(), nullable=False),
        _json("labels"),
        _str("agent_id", nullable=True),
        _ts("created_at"),
        _pk("assets"),
        _fk("assets", "site_id", "sites"),
        _fk("assets", "zone_id", "zones"),
        _fk("assets", "agent_id", "agents", ondelete="SET NULL"),
        _unique("assets", "name"),
        _one_of("assets", "criticality", ("low", "medium", "high", "critical")),
        _check("assets", "endpoint_port", "endpoint_port >= 1 AND endpoint_port <= 65535"),
    )
    _indexes("assets", "site_id", "zone_id", "agent_id")
    op.create_table(
        "vendor_contracts",
        _str("id"),
        _str("vendor_org_id"),
        _str("site_id", nullable=True),
        _str("asset_id", nullable=True),
        _str("reference"),
        _ts("valid_from"),
        _ts("valid_until"),
        _ts("created_at"),
        _pk("vendor_contracts"),
        _fk("vendor_contracts", "vendor_org_id", "vendor_orgs"),
        _fk("vendor_contracts", "site_id", "sites"),
        _fk("vendor_contracts", "asset_id", "assets"),
        _check("vendor_contracts", "scope", "site_id IS NOT NULL OR asset_id IS NOT NULL"),
        _check("vendor_contracts", "validity", "valid_until > valid_from"),
    )
    _indexes("vendor_contracts", "vendor_org_id", "site_id", "asset_id")
    op.create_table(
        "access_requests",
        _str("id"),
        _str("requester_id"),
        _str("asset_id"),
        _str("operation_class"),
        _json("protocols"),
        _json("ports"),
        _ts("starts_at"),
        _ts("ends_at"),
        _str("reason"),
        _str("ticket", nullable=True),
        _str("state"),
        _json("decision_reasons"),
        _ts("created_at"),
        _ts("decided_at", nullable=True),
        _pk("access_requests"),
        _fk("access_requests", "requester_id", "users"),
        _fk("access_requests", "asset_id", "assets"),
        _one_of("access_requests", "operation_class", OPERATION_CLASSES),
        _one_of(
            "access_requests",
            "state",
            ("pending", "approved", "denied", "cancelled", "expired"),
        ),
        _check("access_requests", "window", "ends_at > starts_at"),
        _check("access_requests", "reason", "length(trim(reason)) > 0"),
    )
    _indexes("access_requests", "requester_id", "asset_id", "state")
    op.create_table(
        "approvals",
        _str("id"),
        _str("request_id"),
        _str("approver_id"),
        _str("verdict"),
        _str("reason", nullable=True),
        _ts("created_at"),
        _pk("approvals"),
        _fk("approvals", "request_id", "access_requests"),
        _fk("approvals", "approver_id", "users"),
        _unique("approvals", "request_id", "approver_id"),
        _one_of("approvals", "verdict", ("approve", "deny")),
    )
    _indexes("approvals", "approver_id")
    op.create_table(
        "grants",
        _str("id"),
        _str("request_id"),
        _str("user_id"),
        _str("asset_id"),
        _str("operation_class"),
        _ts("starts_at"),
        _ts("ends_at"),
        _str("state"),
        _json("obligations"),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        _str("revoked_by", nullable=True),
        _str("revoke_reason", nullable=True),
        _pk("grants"),
        _fk("grants", "request_id", "access_requests"),
        _fk("grants", "user_id", "users"),
        _fk("grants", "asset_id", "assets"),
        _unique("grants", "request_id"),
        _one_of("grants", "operation_class", OPERATION_CLASSES),
        _one_of(
            "grants",
            "state",
            ("pending", "approved", "active", "expired", "revoked", "denied", "cancelled"),
        ),
        _check("grants", "window", "ends_at > starts_at"),
    )
    _indexes("grants", "user_id", "asset_id", "ends_at", "state")
    op.create_table(
        "maintenance_sessions",
        _str("id"),
        _str("grant_id", nullable=True),
        _str("user_id"),
        _str("asset_id"),
        _str("kind"),
        _str("login", nullable=True),
        _str("state"),
        _str("source_ip", nullable=True),
        _ts("started_at"),
        _ts("ended_at", nullable=True),
        _str("end_reason", nullable=True),
        sa.Column("bytes_up", sa.BigInteger(), nullable=False),
        sa.Column("bytes_down", sa.BigInteger(), nullable=False),
        _pk("maintenance_sessions"),
        _fk("maintenance_sessions", "grant_id", "grants"),
        _fk("maintenance_sessions", "user_id", "users"),
        _fk("maintenance_sessions", "asset_id", "assets"),
        _one_of("maintenance_sessions", "kind", ("ssh", "sftp", "tcp", "web_terminal")),
        _one_of(
            "maintenance_sessions",
            "state",
            ("starting", "active", "closing", "closed", "failed"),
        ),
        _check("maintenance_sessions", "byte_counts", "bytes_up >= 0 AND bytes_down >= 0"),
    )
    _indexes("maintenance_sessions", "grant_id", "user_id", "asset_id", "state", "started_at")
    op.create_table(
        "recordings",
        _str("id"),
        _str("session_id"),
        _str("format"),
        _str("path"),
        _str("manifest_path", nullable=True),
        _str("chain_head", nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        _ts("finalized_at", nullable=True),
        _str("integrity"),
        _pk("recordings"),
        _fk("recordings", "session_id", "maintenance_sessions"),
        _one_of("recordings", "format", ("asciicast", "pcap", "ops_jsonl")),
        _one_of("recordings", "integrity", ("unknown", "ok", "broken")),
        _check("recordings", "size_bytes", "size_bytes >= 0"),
    )
    _indexes("recordings", "session_id")
    # No foreign keys on purpose: the audit chain outlives every row it mentions.
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        _str("id"),
        _ts("ts"),
        _str("kind"),
        _str("actor"),
        _str("subject", nullable=True),
        _str("outcome"),
        _str("source_ip", nullable=True),
        _json("details"),
        _str("prev_hash"),
        _str("hash"),
        _pk("audit_events", "seq"),
        _unique("audit_events", "id"),
        _unique("audit_events", "hash"),
        _one_of("audit_events", "outcome", ("ok", "allow", "deny", "error", "rejected")),
        _check("audit_events", "seq", "seq >= 1"),
        _check("audit_events", "prev_hash", "length(prev_hash) = 64"),
        _check("audit_events", "hash", "length(hash) = 64"),
    )
    _indexes("audit_events", "ts", "kind", "actor", "subject")
    op.create_table(
        "login_flows",
        _str("state_hash"),
        _str("nonce"),
        _str("code_verifier"),
        _str("browser_binding_hash"),
        _str("return_to"),
        _ts("created_at"),
        _ts("expires_at"),
        _pk("login_flows", "state_hash"),
    )
    _indexes("login_flows", "expires_at")
    op.create_table(
        "web_sessions",
        _str("id_hash"),
        _str("user_id"),
        _str("csrf_token"),
        _str("id_token", nullable=True),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("last_seen_at"),
        _pk("web_sessions", "id_hash"),
        _fk("web_sessions", "user_id", "users", ondelete="CASCADE"),
    )
    _indexes("web_sessions", "user_id", "expires_at")
    op.create_table(
        "api_tokens",
        _str("id"),
        _str("token_hash"),
        _str("user_id"),
        _str("kind"),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("revoked_at", nullable=True),
        _ts("last_used_at", nullable=True),
        _pk("api_tokens"),
        _fk("api_tokens", "user_id", "users", ondelete="CASCADE"),
        _unique("api_tokens", "token_hash"),
        _one_of("api_tokens", "kind", ("cli",)),
    )
    _indexes("api_tokens", "user_id")
    op.create_table(
        "cli_authorizations",
        _str("id"),
        _str("kind"),
        _str("device_code_hash", nullable=True),
        _str("user_code", nullable=True),
        _str("code_hash", nullable=True),
        _str("code_challenge", nullable=True),
        _str("redirect_uri", nullable=True),
        _str("state"),
        _str("user_id", nullable=True),
        _str("client_name"),
        _ts("created_at"),
        _ts("expires_at"),
        _pk("cli_authorizations"),
        _fk("cli_authorizations", "user_id", "users", ondelete="CASCADE"),
        _unique("cli_authorizations", "device_code_hash"),
        _unique("cli_authorizations", "user_code"),
        _unique("cli_authorizations", "code_hash"),
        _one_of("cli_authorizations", "kind", ("device", "loopback")),
        _one_of(
            "cli_authorizations",
            "state",
            ("pending", "approved", "denied", "consumed", "expired"),
        ),
    )
    _indexes("cli_authorizations", "user_id", "expires_at")


TABLES_IN_CREATION_ORDER = (
    "vendor_orgs",
    "users",
    "sites",
    "zones",
    "agents",
    "assets",
    "vendor_contracts",
    "access_requests",
    "approvals",
    "grants",
    "maintenance_sessions",
    "recordings",
    "audit_events",
    "login_flows",
    "web_sessions",
    "api_tokens",
    "cli_authorizations",
)


def downgrade() -> None:
    """Drop every table (and with them the audit chain): for development databases only."""
    for table in reversed(TABLES_IN_CREATION_ORDER):
        op.drop_table(table)
