"""Audit outcome ``refused``: the enforcement point stopped something on the wire.

Revision ID: 0005_audit_refused
Revises: 0004_agents
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_audit_refused"
down_revision: str | None = "0004_agents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = ("ok", "allow", "deny", "error", "rejected")
_NEW = (*_OLD, "refused")


def _outcomes(values: Sequence[str]) -> str:
    return "outcome IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint(op.f("ck_audit_events_outcome"), type_="check")
        batch.create_check_constraint(op.f("ck_audit_events_outcome"), _outcomes(_NEW))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint(op.f("ck_audit_events_outcome"), type_="check")
        batch.create_check_constraint(op.f("ck_audit_events_outcome"), _outcomes(_OLD))
