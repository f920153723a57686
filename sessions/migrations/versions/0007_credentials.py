"""Credentials carry how they were authenticated; SSH certificates are recorded by serial.

* ``web_sessions``, ``api_tokens``, ``cli_authorizations``: ``amr``, ``acr``, ``auth_time`` of
  the sign-in behind them (existing rows: no methods, so no MFA credit until the next sign-in).
* ``api_tokens``: the roles held at issue, the approving web session, who revoked it and why.
* ``cli_authorizations``: the requester's address (shown on the consent page, rate limits).
* ``access_requests``: ``auth_amr``/``auth_acr`` of the credential that filed the request.
* ``ssh_certificates``: every certificate the user CA signed (serial, token or web session,
  user, amr, expiry, revocation).

Revision ID: 0007_credentials
Revises: 0006_asset_endpoints
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_credentials"
down_revision: str | None = "0006_asset_endpoints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _list(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.JSON(), nullable=False, server_default="[]")


def _auth_columns() -> list[sa.Column[object]]:
    return [
        _list("amr"),
        sa.Column("acr", sa.String(), nullable=True),
        sa.Column("auth_time", sa.DateTime(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("web_sessions") as batch:
        for column in _auth_columns():
            batch.add_column(column)
    with op.batch_alter_table("api_tokens") as batch:
        for column in _auth_columns():
            batch.add_column(column)
        batch.add_column(_list("roles"))
        batch.add_column(sa.Column("parent_session", sa.String(), nullable=True))
        batch.add_column(sa.Column("revoked_by", sa.String(), nullable=True))
        batch.add_column(sa.Column("revoke_reason", sa.String(), nullable=True))
        batch.create_index(op.f("ix_api_tokens_parent_session"), ["parent_session"])
    with op.batch_alter_table("cli_authorizations") as batch:
        batch.add_column(sa.Column("source_ip", sa.String(), nullable=True))
        for column in _auth_columns():
            batch.add_column(column)
        batch.add_column(sa.Column("session_hash", sa.String(), nullable=True))
        batch.create_index(op.f("ix_cli_authorizations_source_ip"), ["source_ip"])
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(_list("auth_amr"))
        batch.add_column(sa.Column("auth_acr", sa.String(), nullable=True))
    op.create_table(
        "ssh_certificates",
        sa.Column("serial", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("token_id", sa.String(), nullable=True),
        sa.Column("session_hash", sa.String(), nullable=True),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("key_sha256", sa.String(), nullable=False),
        sa.Column("amr", sa.JSON(), nullable=False),
        sa.Column("acr", sa.String(), nullable=True),
        sa.Column("auth_time", sa.DateTime(), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(), nullable=True),
        sa.Column("revoke_reason", sa.String(), nullable=True),
        sa.CheckConstraint("serial > 0", name=op.f("ck_ssh_certificates_serial")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_ssh_certificates_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_ssh_certificates_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_ssh_certificates")),
    )
    for name in ("user_id", "token_id", "session_hash", "expires_at"):
        op.create_index(f"ix_ssh_certificates_{name}", "ssh_certificates", [name])


def downgrade() -> None:
    op.drop_table("ssh_certificates")
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_column("auth_acr")
        batch.drop_column("auth_amr")
    with op.batch_alter_table("cli_authorizations") as batch:
        batch.drop_index(op.f("ix_cli_authorizations_source_ip"))
        for name in ("session_hash", "auth_time", "acr", "amr", "source_ip"):
            batch.drop_column(name)
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index(op.f("ix_api_tokens_parent_session"))
        for name in (
            "revoke_reason", "revoked_by", "parent_session", "roles", "auth_time", "acr", "amr"
        ):  # fmt: skip
            batch.drop_column(name)
    with op.batch_alter_table("web_sessions") as batch:
        for name in ("auth_time", "acr", "amr"):
            batch.drop_column(name)
