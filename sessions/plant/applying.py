"""Applying a :class:`sessions.plant.planning.Plan`: the database made to match its document,
in the caller's transaction (sites and windows, zones, assets and endpoints, vendor orgs and
contracts, then removals in dependency order).
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, delete, select

from sessions.errors import ConflictError
from sessions.models import (
    Asset,
    AssetEndpoint,
    MaintenanceWindow,
    Site,
    VendorContract,
    VendorOrg,
    Zone,
)
from sessions.plant.document import (
    AssetDoc,
    PlantDoc,
)
from sessions.plant.planning import Plan, agent_id


def apply(db: Session, plan: Plan, now: datetime) -> None:
    """Make the database match ``plan.doc`` in the caller's transaction.

    Raises :class:`ConflictError` (code ``plant_refused``) when a removal is blocked; nothing
    is changed then. The caller commits (``session_scope(engine, write=True)``).
    """
    refusals = plan.refusals()
    if refusals:
        raise ConflictError("plant apply refused: " + "; ".join(refusals), code="plant_refused")
    if not plan.changes:
        return
    doc = plan.doc
    sites = _apply_sites(db, doc, now)
    zones = _apply_zones(db, doc, sites)
    assets = {a.name: a for a in db.exec(select(Asset)).all()}
    for ad in doc.assets:
        site_id = sites[ad.site].id
        _apply_asset(db, assets.get(ad.name), ad, site_id, zones[(site_id, ad.zone)].id, now)
    _apply_orgs(db, doc, sites, now)
    _remove(db, plan, sites, zones, assets, now)


def _apply_sites(db: Session, doc: PlantDoc, now: datetime) -> dict[str, Site]:
    """Create or update every site of the document and replace changed window lists."""
    sites = {s.name: s for s in db.exec(select(Site)).all()}
    for s in doc.sites:
        site = sites.get(s.name) or Site(name=s.name, timezone=s.timezone)
        site.timezone, site.description = s.timezone, s.description
        db.add(site)
        db.flush()
        sites[s.name] = site
        have = [
            (tuple(w.days), w.start, w.end, w.description)
            for w in db.exec(
                select(MaintenanceWindow)
                .where(MaintenanceWindow.site_id == site.id)
                .order_by(col(MaintenanceWindow.start))
            ).all()
        ]
        if have != [(w.days, w.start, w.end, w.description) for w in s.maintenance_windows]:
            db.exec(delete(MaintenanceWindow).where(col(MaintenanceWindow.site_id) == site.id))
            for w in s.maintenance_windows:
                db.add(
                    MaintenanceWindow(
                        site_id=site.id,
                        days=list(w.days),
                        start=w.start,
                        end=w.end,
                        description=w.description,
                        created_at=now,
                    )
                )
    return sites


def _apply_zones(db: Session, doc: PlantDoc, sites: dict[str, Site]) -> dict[tuple[str, str], Zone]:
    """Create or update every zone of the document; (site id, zone name) -> zone."""
    zones = {(z.site_id, z.name): z for z in db.exec(select(Zone)).all()}
    for s in doc.sites:
        site_id = sites[s.name].id
        for zd in s.zones:
            zone = zones.get((site_id, zd.name)) or Zone(
                site_id=site_id, name=zd.name, purdue_level=zd.purdue_level
            )
            zone.purdue_level, zone.description, zone.notes = (
                zd.purdue_level,
                zd.description,
                zd.notes,
            )
            db.add(zone)
            db.flush()
            zones[(site_id, zd.name)] = zone
    return zones


def _remove(
    db: Session,
    plan: Plan,
    sites: dict[str, Site],
    zones: dict[tuple[str, str], Zone],
    assets: dict[str, Asset],
    now: datetime,
) -> None:
    """Archive or delete what the plan removes: assets first, then zones, then sites and orgs
    (each flushed before the next, so no reference is left dangling)."""
    for change in plan.changes:
        if change.kind == "asset" and change.action in ("removed", "archived"):
            asset = assets[change.key]
            if change.action == "archived":
                asset.archived_at = now
                db.add(asset)
            else:
                db.exec(delete(AssetEndpoint).where(col(AssetEndpoint.asset_id) == asset.id))
                db.delete(asset)
    db.flush()
    for change in plan.changes:
        if change.action == "removed" and change.kind == "zone":
            site_name, _, zone_name = change.key.partition("/")
            db.delete(zones[(sites[site_name].id, zone_name)])
    db.flush()
    for change in plan.changes:
        if change.action == "removed" and change.kind == "site":
            site = sites[change.key]
            db.exec(delete(MaintenanceWindow).where(col(MaintenanceWindow.site_id) == site.id))
            db.delete(site)
        if change.action == "removed" and change.kind == "vendor_org":
            org = db.exec(select(VendorOrg).where(VendorOrg.slug == change.key)).one()
            db.delete(org)
    db.flush()


def _apply_asset(
    db: Session, asset: Asset | None, ad: AssetDoc, site_id: str, zone_id: str, now: datetime
) -> None:
    if asset is None:
        asset = Asset(
            name=ad.name,
            site_id=site_id,
            zone_id=zone_id,
            criticality=ad.criticality,
            owner_group=ad.owner_group,
            created_at=now,
        )
    asset.site_id, asset.zone_id = site_id, zone_id
    asset.criticality, asset.owner_group = ad.criticality, ad.owner_group
    asset.description, asset.vendor_notes = ad.description, ad.vendor_notes
    asset.labels, asset.archived_at = dict(ad.labels), None
    db.add(asset)
    db.flush()
    have = {
        e.name: e for e in db.exec(select(AssetEndpoint).where(AssetEndpoint.asset_id == asset.id))
    }
    wanted = {e.name: e for e in ad.endpoints}
    for name, row in have.items():
        if name not in wanted:
            db.delete(row)
    db.flush()
    for name, ed in wanted.items():
        row = have.get(name) or AssetEndpoint(
            asset_id=asset.id, name=name, host=ed.host, port=ed.port, protocol=ed.protocol,
            created_at=now,
        )  # fmt: skip
        row.host, row.port, row.protocol, row.settings = (
            ed.host,
            ed.port,
            ed.protocol,
            dict(ed.settings),
        )
        row.agent_id = agent_id(db, ed.agent, row.agent_id) if ed.agent else None
        db.add(row)
    db.flush()


def _apply_orgs(db: Session, doc: PlantDoc, sites: dict[str, Site], now: datetime) -> None:
    orgs = {o.slug: o for o in db.exec(select(VendorOrg)).all()}
    asset_ids = {a.name: a.id for a in db.exec(select(Asset)).all()}
    wanted = {(o.slug, c.reference) for o in doc.vendor_orgs for c in o.contracts}
    slugs = {org.id: slug for slug, org in orgs.items()}
    contracts = {}
    for c in db.exec(select(VendorContract)).all():
        key = (slugs[c.vendor_org_id], c.reference)
        if key in wanted:
            contracts[key] = c
        else:
            db.delete(c)
    db.flush()
    for od in doc.vendor_orgs:
        org = orgs.get(od.slug) or VendorOrg(slug=od.slug, name=od.name, created_at=now)
        org.name, org.idp_values, org.contacts = od.name, list(od.idp_values), list(od.contacts)
        db.add(org)
        db.flush()
        for cd in od.contracts:
            row = contracts.get((od.slug, cd.reference)) or VendorContract(
                vendor_org_id=org.id, reference=cd.reference, valid_from=cd.valid_from,
                valid_until=cd.valid_until, created_at=now,
            )  # fmt: skip
            row.site_id = sites[cd.site].id if cd.site else None
            row.asset_id = asset_ids[cd.asset] if cd.asset else None
            row.valid_from, row.valid_until = cd.valid_from, cd.valid_until
            row.operation_classes = list(cd.operation_classes)
            db.add(row)
    db.flush()
