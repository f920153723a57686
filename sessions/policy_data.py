"""The policy engine's view of the plant, built from the database.

:func:`build_plant_data` returns the document pushed to the engine as ``data.plant``
(sites with time zones and maintenance windows, assets, vendor organisations with their
contracts, the vendor lockout flag). It is rebuilt whenever the broker changes any of these
and periodically, so changes take effect without a restart. docs/policy.md documents it.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from sessions.endpoints import endpoint_document
from sessions.models import (
    Asset,
    AssetEndpoint,
    MaintenanceWindow,
    PlantFlag,
    Site,
    VendorContract,
    VendorOrg,
    Zone,
)

LOCKOUT_FLAG = "vendor_lockout"


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def build_plant_data(db: Session) -> dict[str, Any]:
    """``{"plant": {...}}`` for the current database state (read-only)."""
    sites = {s.id: s for s in db.exec(select(Site)).all()}
    zones = {z.id: z for z in db.exec(select(Zone)).all()}
    # Archived assets (removed by the plant file, kept for their history) are not in the plant.
    assets = db.exec(select(Asset).where(col(Asset.archived_at).is_(None))).all()
    endpoints: dict[str, list[dict[str, Any]]] = {}
    for ep in db.exec(select(AssetEndpoint).order_by(col(AssetEndpoint.port))).all():
        endpoints.setdefault(ep.asset_id, []).append(endpoint_document(ep))
    asset_names = {a.id: a.name for a in assets}
    windows: dict[str, list[dict[str, Any]]] = {}
    for w in db.exec(select(MaintenanceWindow)).all():
        windows.setdefault(w.site_id, []).append(
            {"days": list(w.days), "start": w.start, "end": w.end}
        )
    orgs: dict[str, dict[str, Any]] = {}
    org_slugs = {o.id: o.slug for o in db.exec(select(VendorOrg)).all()}
    for slug in org_slugs.values():
        orgs[slug] = {"contracts": []}
    for c in db.exec(select(VendorContract)).all():
        orgs[org_slugs[c.vendor_org_id]]["contracts"].append(
            {
                "site": sites[c.site_id].name if c.site_id in sites else None,
                "asset": asset_names.get(c.asset_id) if c.asset_id else None,
                "valid_from": _iso(c.valid_from),
                "valid_until": _iso(c.valid_until),
                "reference": c.reference,
                "operation_classes": list(c.operation_classes),
            }
        )
    lockout = db.get(PlantFlag, LOCKOUT_FLAG)
    lockout_value = lockout.value if lockout is not None else {}
    return {
        "plant": {
            "sites": {
                s.name: {"timezone": s.timezone, "maintenance_windows": windows.get(s.id, [])}
                for s in sites.values()
            },
            "assets": {
                a.name: {
                    "site": sites[a.site_id].name,
                    "zone": zones[a.zone_id].name,
                    "purdue_level": zones[a.zone_id].purdue_level,
                    "criticality": a.criticality,
                    "owner_group": a.owner_group,
                    "protocols": sorted({e["protocol"] for e in endpoints.get(a.id, [])}),
                    "endpoints": endpoints.get(a.id, []),
                }
                for a in assets
            },
            "vendor_orgs": orgs,
            "lockout": {
                "vendors": bool(lockout_value.get("vendors", False)),
                "reason": str(lockout_value.get("reason", "")),
            },
        }
    }
