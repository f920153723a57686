"""Assets declare their endpoints (host, port, protocol, settings); requests name a login.

Each existing asset's single ``endpoint_host:endpoint_port`` becomes its first endpoint, named
after its protocol (the asset's first listed protocol, ``ssh`` on port 22, else ``tcp``); a
``tune_write_ranges`` label (meant for holding registers) becomes that Modbus endpoint's tune
write ranges on the holding-register table. No SSH logins are declared for migrated assets:
an admin must declare them before SSH requests can be made (fail closed). A request that named
no ports (which meant "the asset's protocol ports") now names the migrated endpoint's port, so
grants for non-SSH endpoints keep working across the upgrade.

Revision ID: 0006_asset_endpoints
Revises: 0005_audit_refused
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006_asset_endpoints"
down_revision: str | None = "0005_audit_refused"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PROTOCOLS = ("ssh", "modbus", "s7", "opcua", "enip", "dnp3", "vnc", "rdp", "https", "tcp")


def _ranges(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit() and (last or first).isdigit():
            lo, hi = int(first), int(last or first)
            if 0 <= lo <= hi <= 65535:
                out.append({"table": "holding_registers", "first": lo, "last": hi})
    return out


def _protocol(protocols: list[str], port: int) -> str:
    if port == 22 and ("ssh" in protocols or not protocols):
        return "ssh"
    for name in protocols:
        if name in _PROTOCOLS:
            return name
    return "tcp"


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, endpoint_host, endpoint_port, protocols, labels FROM assets")
    ).all()
    # Why first: SQLite's batch mode recreates "assets"; dropping the old table would cascade
    # into endpoint rows inserted before it.
    with op.batch_alter_table("assets") as batch:
        batch.drop_constraint(op.f("ck_assets_endpoint_port"), type_="check")
        batch.drop_column("endpoint_host")
        batch.drop_column("endpoint_port")
        batch.drop_column("protocols")
    op.create_table(
        "asset_endpoints",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("asset_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name=op.f("ck_asset_endpoints_port")),
        sa.CheckConstraint(
            "protocol IN (" + ", ".join(f"'{p}'" for p in _PROTOCOLS) + ")",
            name=op.f("ck_asset_endpoints_protocol"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_endpoints_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_endpoints")),
        sa.UniqueConstraint("asset_id", "name", name=op.f("uq_asset_endpoints_asset_id_name")),
        sa.UniqueConstraint(
            "asset_id", "host", "port", name=op.f("uq_asset_endpoints_asset_id_host_port")
        ),
    )
    endpoints = sa.table(
        "asset_endpoints",
        sa.column("id", sa.String()),
        sa.column("asset_id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("host", sa.String()),
        sa.column("port", sa.Integer()),
        sa.column("protocol", sa.String()),
        sa.column("settings", sa.JSON()),
        sa.column("created_at", sa.DateTime()),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    first_port: dict[str, int] = {}
    for asset_id, host, port, protocols_raw, labels_raw in rows:
        first_port[asset_id] = int(port)
        protocols = _loads(protocols_raw, [])
        labels = _loads(labels_raw, {})
        protocol = _protocol([str(p) for p in protocols], int(port))
        settings: dict[str, Any] = {}
        if protocol == "modbus":
            ranges = _ranges(str(labels.get("tune_write_ranges", "")))
            settings = {"write_ranges": {"tune": ranges}} if ranges else {}
        bind.execute(
            endpoints.insert().values(
                id=str(uuid.uuid4()),
                asset_id=asset_id,
                name=protocol,
                host=host,
                port=int(port),
                protocol=protocol,
                settings=settings,
                created_at=now,
            )
        )
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(sa.Column("login", sa.String(), nullable=True))
    requests = sa.table(
        "access_requests", sa.column("id", sa.String()), sa.column("ports", sa.JSON())
    )
    for request_id, asset_id, ports_raw in bind.execute(
        sa.text("SELECT id, asset_id, ports FROM access_requests")
    ).all():
        if not _loads(ports_raw, []) and asset_id in first_port:
            bind.execute(
                requests.update()
                .where(requests.c.id == request_id)
                .values(ports=[first_port[asset_id]])
            )


def _loads(raw: Any, default: Any) -> Any:
    if raw is None:
        return default
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return default
    return raw


def downgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_column("login")
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("protocols", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("endpoint_host", sa.String(), nullable=True))
        batch.add_column(sa.Column("endpoint_port", sa.Integer(), nullable=True))
    bind = op.get_bind()
    for asset_id, host, port, protocol in bind.execute(
        sa.text(
            "SELECT asset_id, host, port, protocol FROM asset_endpoints ORDER BY created_at, name"
        )
    ).all():
        bind.execute(
            sa.text(
                "UPDATE assets SET endpoint_host = :host, endpoint_port = :port, "
                "protocols = :protocols WHERE id = :id AND endpoint_host IS NULL"
            ),
            {"host": host, "port": port, "protocols": json.dumps([protocol]), "id": asset_id},
        )
    op.drop_table("asset_endpoints")
