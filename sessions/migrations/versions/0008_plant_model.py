"""The plant as code: fields the plant file manages.

* ``zones.notes``; ``assets.description``, ``vendor_notes`` and ``archived_at`` (an asset the
  plant file removed while it had history is archived: no new requests).
* ``vendor_orgs.idp_values`` (further IdP org claim values that map to the organisation) and
  ``contacts``.
* ``vendor_contracts.operation_classes`` (allowed classes; empty means all).

Existing rows get empty values, which keep today's behaviour.

Revision ID: 0008_plant_model
Revises: 0007_credentials
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_plant_model"
down_revision: str | None = "0007_credentials"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _list(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.JSON(), nullable=False, server_default="[]")


def _text(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.String(), nullable=False, server_default="")


def upgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.add_column(_text("notes"))
    with op.batch_alter_table("assets") as batch:
        batch.add_column(_text("description"))
        batch.add_column(_text("vendor_notes"))
        batch.add_column(sa.Column("archived_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("vendor_orgs") as batch:
        batch.add_column(_list("idp_values"))
        batch.add_column(_list("contacts"))
    with op.batch_alter_table("vendor_contracts") as batch:
        batch.add_column(_list("operation_classes"))


def downgrade() -> None:
    with op.batch_alter_table("vendor_contracts") as batch:
        batch.drop_column("operation_classes")
    with op.batch_alter_table("vendor_orgs") as batch:
        batch.drop_column("contacts")
        batch.drop_column("idp_values")
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("archived_at")
        batch.drop_column("vendor_notes")
        batch.drop_column("description")
    with op.batch_alter_table("zones") as batch:
        batch.drop_column("notes")
