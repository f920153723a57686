"""Maintenance windows per site and plant-wide flags (vendor lockout).

Revision ID: 0002_windows_flags
Revises: 0001_initial
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_windows_flags"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "maintenance_windows",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("site_id", sa.String(), nullable=False),
        sa.Column("days", sa.JSON(), nullable=False),
        sa.Column("start", sa.String(), nullable=False),
        sa.Column("end", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_windows")),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_maintenance_windows_site_id_sites"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_maintenance_windows_site_id"), "maintenance_windows", ["site_id"], unique=False
    )
    op.create_table(
        "plant_flags",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("updated_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_plant_flags")),
    )


def downgrade() -> None:
    op.drop_table("plant_flags")
    op.drop_index(op.f("ix_maintenance_windows_site_id"), table_name="maintenance_windows")
    op.drop_table("maintenance_windows")
