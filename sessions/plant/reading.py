"""The plant read back from the database as a document (:func:`export`)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from sessions.models import (
    Agent,
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
    ContractDoc,
    EndpointDoc,
    PlantDoc,
    SiteDoc,
    VendorOrgDoc,
    WindowDoc,
    ZoneDoc,
)


def export(db: Session) -> PlantDoc:
    """The plant as a document (archived assets left out), ordered by name."""
    sites = db.exec(select(Site).order_by(col(Site.name))).all()
    zones = db.exec(select(Zone).order_by(col(Zone.name))).all()
    windows = db.exec(select(MaintenanceWindow).order_by(col(MaintenanceWindow.start))).all()
    site_names = {s.id: s.name for s in sites}
    zone_names = {z.id: z.name for z in zones}
    site_docs = tuple(
        SiteDoc(
            s.name,
            s.timezone,
            s.description,
            tuple(
                WindowDoc(tuple(w.days), w.start, w.end, w.description)
                for w in windows
                if w.site_id == s.id
            ),
            tuple(
                ZoneDoc(z.name, z.purdue_level, z.description, z.notes)
                for z in zones
                if z.site_id == s.id
            ),
        )
        for s in sites
    )
    agent_names = {a.id: a.name for a in db.exec(select(Agent)).all()}
    endpoints: dict[str, list[EndpointDoc]] = {}
    for ep in db.exec(select(AssetEndpoint).order_by(col(AssetEndpoint.name))).all():
        agent = agent_names.get(ep.agent_id) if ep.agent_id else None
        endpoints.setdefault(ep.asset_id, []).append(
            EndpointDoc(ep.name, ep.host, ep.port, ep.protocol, dict(ep.settings), agent)
        )
    assets = db.exec(
        select(Asset).where(col(Asset.archived_at).is_(None)).order_by(col(Asset.name))
    ).all()
    asset_docs = tuple(
        AssetDoc(
            a.name,
            site_names[a.site_id],
            zone_names[a.zone_id],
            a.criticality,
            a.owner_group,
            a.description,
            a.vendor_notes,
            dict(a.labels),
            tuple(endpoints.get(a.id, [])),
        )
        for a in assets
    )
    asset_names = {a.id: a.name for a in db.exec(select(Asset)).all()}
    contracts = db.exec(select(VendorContract).order_by(col(VendorContract.reference))).all()
    orgs = db.exec(select(VendorOrg).order_by(col(VendorOrg.slug))).all()
    org_docs = tuple(
        VendorOrgDoc(
            o.slug,
            o.name,
            tuple(o.idp_values),
            tuple(o.contacts),
            tuple(
                ContractDoc(
                    c.reference,
                    c.valid_from,
                    c.valid_until,
                    site_names.get(c.site_id) if c.site_id else None,
                    asset_names.get(c.asset_id) if c.asset_id else None,
                    tuple(c.operation_classes),
                )
                for c in contracts
                if c.vendor_org_id == o.id
            ),
        )
        for o in orgs
    )
    return PlantDoc(sites=site_docs, assets=asset_docs, vendor_orgs=org_docs)
