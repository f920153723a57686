"""What a vendor may ask for and how a grant reads for people.

:func:`covered_assets` lists the assets a vendor's organisation holds a currently valid
contract for (with the operation classes those contracts allow), the request form's offer.
:func:`connect_lines` and :func:`allowances` turn a grant and its declared endpoints into the
exact commands to connect and a plain-words account of what the grant allows. Policy and
:mod:`sessions.access` still decide; this module only decides what the pages offer and say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, col, select

from sessions.endpoints import logins_for
from sessions.models import (
    Asset,
    AssetEndpoint,
    EndpointProtocol,
    Grant,
    OperationClass,
    VendorContract,
    Zone,
)
from sessions.ot.base import ProtocolPlugin
from sessions.ot.registry import plugin_for


@dataclass
class Offer:
    """One asset the form offers, with its declared endpoints and logins."""

    name: str
    label: str
    classes: list[str]
    contracts: list[str]
    endpoints: list[AssetEndpoint] = field(default_factory=list)

    def logins(self) -> list[tuple[str, str]]:
        """(login, "login (classes…)") for every declared SSH login of the offered classes."""
        per: dict[str, list[str]] = {}
        for op in self.classes:
            for login in logins_for(self.endpoints, op):
                per.setdefault(login, []).append(op)
        return [(n, f"{n} ({', '.join(ops)})") for n, ops in sorted(per.items())]


def covering(contracts: list[VendorContract], asset: Asset, now: datetime) -> list[VendorContract]:
    """The contracts among ``contracts`` valid at ``now`` that cover ``asset`` (site or asset)."""
    return [
        c
        for c in contracts
        if c.valid_from <= now < c.valid_until
        and (c.asset_id == asset.id or (c.asset_id is None and c.site_id == asset.site_id))
    ]


def _classes(contracts: list[VendorContract]) -> list[str]:
    if not contracts or any(not c.operation_classes for c in contracts):
        return list(OperationClass.ALL)
    allowed = {op for c in contracts for op in c.operation_classes}
    return [op for op in OperationClass.ALL if op in allowed]


def covered_assets(
    db: Session, org_id: str | None, now: datetime, *, everything: bool = False
) -> list[Offer]:
    """Non-archived assets above Purdue level 0 the org's valid contracts cover (sorted).

    ``everything`` (admins): every such asset, with all operation classes.
    """
    rows = db.exec(
        select(Asset, Zone.name, Zone.purdue_level)
        .join(Zone, col(Zone.id) == col(Asset.zone_id))
        .where(col(Asset.archived_at).is_(None), col(Zone.purdue_level) > 0)
        .order_by(col(Asset.name))
    ).all()
    contracts = (
        list(db.exec(select(VendorContract).where(VendorContract.vendor_org_id == org_id)).all())
        if org_id
        else []
    )
    endpoints: dict[str, list[AssetEndpoint]] = {}
    for ep in db.exec(select(AssetEndpoint)).all():
        endpoints.setdefault(ep.asset_id, []).append(ep)
    offers = []
    for asset, zone, level in rows:
        cover = covering(contracts, asset, now)
        if not cover and not everything:
            continue
        offers.append(
            Offer(
                name=asset.name,
                label=f"{asset.name} ({zone}, level {level})",
                classes=_classes(cover) if cover else list(OperationClass.ALL),
                contracts=[describe_contract(c) for c in cover],
                endpoints=sorted(endpoints.get(asset.id, []), key=lambda e: (e.port, e.name)),
            )
        )
    return offers


def describe_contract(c: VendorContract) -> str:
    """``SVC-1 (valid 2026-11-06 to 2027-12-06, classes: read_only, tune)``."""
    classes = ", ".join(c.operation_classes) if c.operation_classes else "all classes"
    return (
        f"{c.reference} (valid {c.valid_from:%Y-%m-%d} to {c.valid_until:%Y-%m-%d}, "
        f"classes: {classes})"
    )


@dataclass(frozen=True)
class GrantView:
    """A grant with what its request named (declared ports, SSH login) and the asset's name."""

    grant: Grant
    asset: str
    ports: list[int]
    login: str | None


def connect_lines(
    g: GrantView, endpoints: list[AssetEndpoint], ssh_host: str, ssh_port: int | None
) -> list[str]:
    """The commands that reach the grant's endpoints, bound to this grant by its id prefix."""
    prefix, asset, login = g.grant.id[:8], g.asset, g.login
    lines = []
    for ep in endpoints:
        if ep.port not in g.ports:
            continue
        if ep.protocol == EndpointProtocol.SSH and login:
            lines.append(f"conduit ssh {login}@{asset} --grant {prefix}")
            if ssh_port is not None:
                lines.append(f"ssh -p {ssh_port} {login}@{asset}+{prefix}@{ssh_host}")
        else:
            lines.append(
                f"conduit forward {asset} {ep.port} --grant {prefix} --local-port {_local(ep.port)}"
            )
    return lines


def _local(port: int) -> int:
    """A local port the vendor can bind without privileges (502 -> 1502)."""
    return port if port >= 1024 else port + 1000


def _allows(plugin: ProtocolPlugin, grant: Grant, ep: AssetEndpoint) -> str:
    """The plug-in's words for what ``grant`` allows at ``ep`` (its obligations line when it
    has no allowance describer; no line: nothing beyond set-up is allowed)."""
    if plugin.describe_allowance is not None:
        return plugin.describe_allowance(grant.obligations, ep.settings, grant.operation_class)
    return plugin.describe_obligations(grant.obligations) or "no operations allowed"


def allowances(g: GrantView, endpoints: list[AssetEndpoint]) -> list[str]:
    """What the grant allows, in words: logins, each inspected protocol's operations and write
    ranges (its plug-in's words, :mod:`sessions.ot.registry`), the end."""
    grant, out = g.grant, []
    for ep in endpoints:
        if ep.port not in g.ports:
            continue
        where = f"{ep.name} ({ep.protocol} {ep.host}:{ep.port})"
        plugin = plugin_for(ep.protocol)
        if ep.protocol == EndpointProtocol.SSH:
            out.append(f"{where}: SSH as {g.login}" if g.login else f"{where}: SSH")
        elif plugin is not None:
            out.append(f"{where}: {_allows(plugin, grant, ep)}")
        else:
            out.append(f"{where}: {ep.protocol} connection")
    out.append(f"until {grant.ends_at:%Y-%m-%d %H:%M} UTC")
    return out
