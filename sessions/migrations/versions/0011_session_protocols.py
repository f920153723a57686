"""A forward session's endpoint protocol (``session_protocols``), shown as its kind.

New table only: sessions from before it have no row and keep showing their stored kind.

Revision ID: 0011_session_protocols
Revises: 0010_request_obligations
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_session_protocols"
down_revision: str | None = "0010_request_obligations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_protocols",
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["maintenance_sessions.id"],
            name=op.f("fk_session_protocols_session_id_maintenance_sessions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_session_protocols")),
    )
    op.create_index(
        op.f("ix_session_protocols_protocol"), "session_protocols", ["protocol"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_session_protocols_protocol"), table_name="session_protocols")
    op.drop_table("session_protocols")
