"""Each access request keeps the obligations of the decision that allowed filing it
(``access_requests.obligations``, JSON) and the policy bundle version that produced them
(``access_requests.policy_version``), so approvers see what the grant would allow.

Requests filed before this revision get NULL in both: the approver's pages show their
obligations as not recorded, and no MFA warning is guessed for them.

Revision ID: 0010_request_obligations
Revises: 0009_endpoint_agents
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_request_obligations"
down_revision: str | None = "0009_endpoint_agents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(sa.Column("obligations", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("policy_version", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_column("policy_version")
        batch.drop_column("obligations")
