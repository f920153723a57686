"""Export the plant from the database, diff a plant document against it, apply the diff.

Keys: sites by name, zones by site and name, assets by name, vendor orgs by slug, contracts by
org and reference. Agents are not part of the file (they enrol); an endpoint names the agent
that reaches it (by name), and an asset keeps its own agent as the fallback.
Removing an asset that has history (requests, grants, sessions) is refused unless
``archive``: then it is archived (``archived_at``; no new requests, out of policy data, out of
the export). Zones, sites and vendor orgs still used by anything outside the file (agents,
join tokens, archived assets, users) are never removed. Nor is a contract with history
(requests its organisation's users made, since it started, for assets it covers): it is
the record of why they were allowed; end it by moving ``valid_until`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import or_ as sa_or
from sqlmodel import Session, col, delete, select

from sessions.errors import ConflictError, ValidationError
from sessions.models import (
    AccessRequest,
    Agent,
    AgentJoinToken,
    Asset,
    AssetEndpoint,
    Grant,
    MaintenanceSession,
    MaintenanceWindow,
    Site,
    User,
    VendorContract,
    VendorOrg,
    Zone,
)
from sessions.plant.document import (
    AssetDoc,
    ContractDoc,
    EndpointDoc,
    PlantDoc,
    PlantError,
    SiteDoc,
    VendorOrgDoc,
    WindowDoc,
    ZoneDoc,
    plain,
)

KINDS = ("site", "zone", "asset", "vendor_org", "contract")


@dataclass(frozen=True)
class Change:
    """One difference: ``action`` is created, changed, removed or archived."""

    kind: str
    key: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    blocked: str = ""  # why the removal cannot happen (history, still in use)

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "key": self.key, "action": self.action}
        out |= {"before": self.before, "after": self.after}
        return out | ({"blocked": self.blocked} if self.blocked else {})


@dataclass(frozen=True)
class Plan:
    """What applying ``doc`` would change (empty ``changes``: nothing)."""

    doc: PlantDoc
    changes: tuple[Change, ...]
    archive: bool

    def refusals(self) -> list[str]:
        """Why the plan cannot be applied (blocked removals), empty when it can."""
        return [f"{c.kind} {c.key}: {c.blocked}" for c in self.changes if c.blocked]

    def summary(self) -> dict[str, int]:
        out = {a: 0 for a in ("created", "changed", "removed", "archived")}
        for c in self.changes:
            out[c.action] += 1
        return out


# --------------------------------------------------------------------------- export


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


# --------------------------------------------------------------------------- diff


def _items(doc: PlantDoc) -> dict[str, dict[str, dict[str, Any]]]:
    """Per kind: key -> the plain document of that one thing (sub-things excluded)."""
    out: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
    for s in doc.sites:
        site = plain(s)
        site.pop("zones")
        out["site"][s.name] = site
        for z in s.zones:
            out["zone"][f"{s.name}/{z.name}"] = {"site": s.name, **plain(z)}
    for a in doc.assets:
        out["asset"][a.name] = plain(a)
    for o in doc.vendor_orgs:
        org = plain(o)
        org.pop("contracts")
        out["vendor_org"][o.slug] = org
        for c in o.contracts:
            out["contract"][f"{o.slug}/{c.reference}"] = {"vendor_org": o.slug, **plain(c)}
    return out


def _count(db: Session, model: Any, column: Any, value: str) -> int:
    return int(db.exec(select(func.count()).select_from(model).where(column == value)).one())


def _asset_history(db: Session, name: str) -> str:
    asset = db.exec(select(Asset).where(Asset.name == name)).first()
    if asset is None:
        return ""
    counts = {
        "requests": _count(db, AccessRequest, AccessRequest.asset_id, asset.id),
        "grants": _count(db, Grant, Grant.asset_id, asset.id),
        "sessions": _count(db, MaintenanceSession, MaintenanceSession.asset_id, asset.id),
    }
    found = [f"{n} {what}" for what, n in counts.items() if n]
    return f"has history ({', '.join(found)})" if found else ""


def _contract_history(db: Session, key: str) -> str:
    """Why the contract ``org/reference`` cannot be removed ("" if it can)."""
    slug, _, reference = key.partition("/")
    contract = db.exec(
        select(VendorContract)
        .join(VendorOrg, col(VendorOrg.id) == col(VendorContract.vendor_org_id))
        .where(VendorOrg.slug == slug, VendorContract.reference == reference)
    ).first()
    if contract is None:
        return ""
    # A NULL scope compares as IS NULL, which no asset matches.
    covered = sa_or(col(Asset.id) == contract.asset_id, col(Asset.site_id) == contract.site_id)
    requests = db.exec(
        select(func.count())
        .select_from(AccessRequest)
        .join(User, col(User.id) == col(AccessRequest.requester_id))
        .join(Asset, col(Asset.id) == col(AccessRequest.asset_id))
        .where(
            User.vendor_org_id == contract.vendor_org_id,
            covered,
            # No upper bound: ending a contract early must not make its history vanish.
            col(AccessRequest.created_at) >= contract.valid_from,
        )
    ).one()
    if not requests:
        return ""
    return f"has history ({requests} requests under it); end it by moving valid_until instead"


def _placed(where: tuple[str, str] | None, kind: str, site: str, zone: str) -> bool:
    """Whether the document places an asset (``(site, zone)``) in this site or zone."""
    return where is not None and where[0] == site and (kind == "site" or where[1] == zone)


def _in_use(
    db: Session,
    kind: str,
    key: str,
    removed_assets: set[str],
    placement: dict[str, tuple[str, str]],
) -> str:
    """Why a zone, site or vendor org cannot be removed ("" if it can)."""
    uses: list[str] = []
    if kind in ("zone", "site"):
        site_name, _, zone_name = key.partition("/")
        site = db.exec(select(Site).where(Site.name == site_name)).first()
        if site is None:
            return ""
        if kind == "zone":
            zone = db.exec(
                select(Zone).where(Zone.site_id == site.id, Zone.name == zone_name)
            ).first()
            if zone is None:
                return ""
            column, value = "zone_id", zone.id
        else:
            column, value = "site_id", site.id
        kept = [
            a.name
            for a in db.exec(select(Asset).where(getattr(Asset, column) == value)).all()
            if a.archived_at is not None
            or (a.name in removed_assets and _asset_history(db, a.name))
            or _placed(placement.get(a.name), kind, site_name, zone_name)
        ]
        if kept:
            uses.append(f"assets {', '.join(sorted(kept))}")
        agents = _count(db, Agent, getattr(Agent, column), value)
        tokens = _count(db, AgentJoinToken, getattr(AgentJoinToken, column), value)
        if agents:
            uses.append(f"{agents} agent(s)")
        if tokens:
            uses.append(f"{tokens} join token(s)")
    else:
        org = db.exec(select(VendorOrg).where(VendorOrg.slug == key)).first()
        users = _count(db, User, User.vendor_org_id, org.id) if org is not None else 0
        if users:
            uses.append(f"{users} user(s)")
    return f"still used by {'; '.join(uses)}" if uses else ""


def _agent_id(db: Session, name: str, current: str | None) -> str:
    """The agent named ``name``: the endpoint's current one if it has that name, else the one
    unrevoked agent with it. Raises :class:`ValidationError` (unknown or ambiguous)."""
    agents = db.exec(select(Agent).where(Agent.name == name)).all()
    if current is not None and any(a.id == current for a in agents):
        return current
    live = [a for a in agents if a.revoked_at is None]
    if len(live) != 1:
        problem = "unknown agent" if not live else f"{len(live)} agents are named"
        raise ValidationError(f"{problem} {name!r} (conduit agents list shows names)")
    return live[0].id


def _check_agents(db: Session, doc: PlantDoc) -> None:
    """Every endpoint's ``agent`` names one agent, else :class:`PlantError` naming the path."""
    current = {
        (a.name, e.name): e.agent_id
        for a, e in db.exec(
            select(Asset, AssetEndpoint).join(
                AssetEndpoint, col(AssetEndpoint.asset_id) == col(Asset.id)
            )
        ).all()
    }
    for i, asset in enumerate(doc.assets):
        for j, ep in enumerate(asset.endpoints):
            if ep.agent is None:
                continue
            try:
                _agent_id(db, ep.agent, current.get((asset.name, ep.name)))
            except ValidationError as exc:
                raise PlantError(f"assets[{i}].endpoints[{j}].agent", exc.message) from None


def diff(db: Session, doc: PlantDoc, *, archive: bool = False) -> Plan:
    """What applying ``doc`` would change; removals that cannot happen carry ``blocked``.

    Raises :class:`PlantError` when an endpoint names an unknown agent.
    """
    _check_agents(db, doc)
    have, want = _items(export(db)), _items(doc)
    archived = {a.name for a in db.exec(select(Asset).where(col(Asset.archived_at).is_not(None)))}
    removed_assets = set(have["asset"]) - set(want["asset"])
    placement = {a.name: (a.site, a.zone) for a in doc.assets}
    changes: list[Change] = []
    for kind in KINDS:
        for key, after in want[kind].items():
            before = have[kind].get(key)
            if before is None:
                action = "changed" if kind == "asset" and key in archived else "created"
                changes.append(Change(kind, key, action, None, after))
            elif before != after:
                changes.append(Change(kind, key, "changed", before, after))
        for key, before in have[kind].items():
            if key in want[kind]:
                continue
            if kind == "asset":
                history = _asset_history(db, key)
                if history and archive:
                    changes.append(Change(kind, key, "archived", before, None))
                else:
                    blocked = f"{history}; use --archive" if history else ""
                    changes.append(Change(kind, key, "removed", before, None, blocked))
            else:
                blocked = (
                    _contract_history(db, key)
                    if kind == "contract"
                    else _in_use(db, kind, key, removed_assets, placement)
                )
                changes.append(Change(kind, key, "removed", before, None, blocked))
    return Plan(doc, tuple(changes), archive)


# --------------------------------------------------------------------------- apply


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
        row.agent_id = _agent_id(db, ed.agent, row.agent_id) if ed.agent else None
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
