"""Access requests may be limited to the site's maintenance windows.

Revision ID: 0003_window_only
Revises: 0002_windows_flags
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_window_only"
down_revision: str | None = "0002_windows_flags"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(
            sa.Column(
                "maintenance_window_only", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_column("maintenance_window_only")
