"""Why something the document no longer names cannot be removed: history (an asset's
requests, grants and sessions; a contract's requests) or use outside the file (agents, join
tokens, archived assets, users). Each function returns the reason, "" when removal may happen.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy import or_ as sa_or
from sqlmodel import Session, col, select

from sessions.models import (
    AccessRequest,
    Agent,
    AgentJoinToken,
    Asset,
    Grant,
    MaintenanceSession,
    Site,
    User,
    VendorContract,
    VendorOrg,
    Zone,
)


def _count(db: Session, model: Any, column: Any, value: str) -> int:
    return int(db.exec(select(func.count()).select_from(model).where(column == value)).one())


def asset_history(db: Session, name: str) -> str:
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


def contract_history(db: Session, key: str) -> str:
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


def in_use(
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
            or (a.name in removed_assets and asset_history(db, a.name))
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
