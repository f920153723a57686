"""Each asset endpoint names the agent that reaches it (``asset_endpoints.agent_id``).

Existing endpoints get their asset's agent, so routing is unchanged by the upgrade. The
asset's own ``agent_id`` stays as the fallback for endpoints that name none.

Revision ID: 0009_endpoint_agents
Revises: 0008_plant_model
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_endpoint_agents"
down_revision: str | None = "0008_plant_model"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("asset_endpoints") as batch:
        batch.add_column(sa.Column("agent_id", sa.String(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_asset_endpoints_agent_id_agents"),
            "agents",
            ["agent_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_asset_endpoints_agent_id"), ["agent_id"])
    op.execute(
        "UPDATE asset_endpoints SET agent_id = "
        "(SELECT assets.agent_id FROM assets WHERE assets.id = asset_endpoints.asset_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("asset_endpoints") as batch:
        batch.drop_index(op.f("ix_asset_endpoints_agent_id"))
        batch.drop_constraint(op.f("fk_asset_endpoints_agent_id_agents"), type_="foreignkey")
        batch.drop_column("agent_id")
