"""Agent enrolment tokens, agent inventory and agent health columns.

Revision ID: 0004_agents
Revises: 0003_window_only
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_agents"
down_revision: str | None = "0003_window_only"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("key_pin", sa.String(), nullable=True))
        batch.add_column(sa.Column("hostname", sa.String(), nullable=True))
        batch.add_column(sa.Column("connected_via", sa.String(), nullable=True))
        batch.create_unique_constraint("uq_agents_key_pin", ["key_pin"])
    op.create_table(
        "agent_join_tokens",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("site_id", sa.String(), nullable=False),
        sa.Column("zone_id", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.Column("agent_id", sa.String(), nullable=True),
        sa.CheckConstraint("expires_at > created_at", name="ck_agent_join_tokens_validity"),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name="fk_agent_join_tokens_site_id_sites",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["zone_id"],
            ["zones.id"],
            name="fk_agent_join_tokens_zone_id_zones",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name="fk_agent_join_tokens_agent_id_agents",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agent_join_tokens"),
    )
    for column in ("site_id", "zone_id", "agent_id"):
        op.create_index(f"ix_agent_join_tokens_{column}", "agent_join_tokens", [column])
    op.create_table(
        "agent_endpoints",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("agent_id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("declared", sa.Boolean(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_reported_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name="ck_agent_endpoints_port"),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name="fk_agent_endpoints_agent_id_agents",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agent_endpoints"),
        sa.UniqueConstraint(
            "agent_id", "host", "port", name="uq_agent_endpoints_agent_id_host_port"
        ),
    )
    op.create_index("ix_agent_endpoints_agent_id", "agent_endpoints", ["agent_id"])


def downgrade() -> None:
    op.drop_table("agent_endpoints")
    op.drop_table("agent_join_tokens")
    with op.batch_alter_table("agents") as batch:
        batch.drop_constraint("uq_agents_key_pin", type_="unique")
        batch.drop_column("connected_via")
        batch.drop_column("hostname")
        batch.drop_column("key_pin")
