"""Diffing a plant document against the database: the :class:`Plan` of :class:`Change` s
(created, changed, removed, archived), removals that cannot happen marked ``blocked``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from sessions.errors import ValidationError
from sessions.models import (
    Agent,
    Asset,
    AssetEndpoint,
)
from sessions.plant.document import (
    PlantDoc,
    PlantError,
    plain,
)
from sessions.plant.reading import export
from sessions.plant.removal import asset_history, contract_history, in_use

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


def agent_id(db: Session, name: str, current: str | None) -> str:
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
                agent_id(db, ep.agent, current.get((asset.name, ep.name)))
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
                history = asset_history(db, key)
                if history and archive:
                    changes.append(Change(kind, key, "archived", before, None))
                else:
                    blocked = f"{history}; use --archive" if history else ""
                    changes.append(Change(kind, key, "removed", before, None, blocked))
            else:
                blocked = (
                    contract_history(db, key)
                    if kind == "contract"
                    else in_use(db, kind, key, removed_assets, placement)
                )
                changes.append(Change(kind, key, "removed", before, None, blocked))
    return Plan(doc, tuple(changes), archive)
