"""One plant object at a time within the exported plant document: find, create, replace,
remove sites, zones, maintenance windows, assets, vendor organisations and contracts.

Plain data in, plain data out (the document of :func:`sessions.plant.export`); the caller
applies the edited document (:func:`broker.http.plant_changes.edit_plant`), which validates it
as a whole. An unknown object or parent raises :class:`NotFoundError` naming it; creating one
that exists, or removing one the document still uses, raises :class:`ConflictError` with the
reason; a body naming another object than its path raises :class:`ValidationError`. Used by
the per-object API (:mod:`broker.api.plant_objects`) and the plant page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sessions.errors import ConflictError, NotFoundError, ValidationError
from sessions.windows import DAYS

Data = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """A kind of plant object as the document holds it."""

    name: str  # in messages: "vendor org"
    field: str  # the list holding these objects, in the parent or the document: "zones"
    key: str  # the field naming one ("" for windows: named by days and times, window_key)
    parent: Kind | None = None
    # Sub-lists with URLs of their own: a PUT whose body leaves them out keeps them.
    kept: tuple[str, ...] = ()
    missing: str = ""  # added to the 404 message


SITE = Kind("site", "sites", "name", kept=("zones", "maintenance_windows"))
ZONE = Kind("zone", "zones", "name", SITE)
WINDOW = Kind("maintenance window", "maintenance_windows", "", SITE)
ASSET = Kind("asset", "assets", "name", missing=" (archived assets are not listed)")
ORG = Kind("vendor org", "vendor_orgs", "slug", kept=("contracts",))
CONTRACT = Kind("contract", "contracts", "reference", ORG)


def window_key(window: Data) -> str:
    """A window's stable name: ``sat,sun_06:00-14:00`` (days in week order)."""
    days = window.get("days")
    if isinstance(days, list) and all(d in DAYS for d in days):
        days = sorted(set(days), key=DAYS.index)
    shown = ",".join(map(str, days)) if isinstance(days, list) else str(days)
    return f"{shown}_{window.get('start')}-{window.get('end')}"


def key_of(kind: Kind, item: Data) -> Any:
    return item.get(kind.key) if kind.key else window_key(item)


def items_of(data: Data, kind: Kind, parent: str | None) -> list[Data]:
    """The list holding ``kind`` objects (under ``parent`` for zones, windows, contracts)."""
    if kind.parent is None:
        items: list[Data] = data[kind.field]
        return items
    holder = find(data, kind.parent, None, str(parent))
    return holder.setdefault(kind.field, [])  # type: ignore[no-any-return]


def _index(items: list[Data], kind: Kind, key: Any) -> int | None:
    return next((i for i, item in enumerate(items) if key_of(kind, item) == key), None)


def _located(data: Data, kind: Kind, parent: str | None, key: str) -> tuple[list[Data], int]:
    items = items_of(data, kind, parent)
    index = _index(items, kind, key)
    if index is None:
        where = f" in {kind.parent.name} {parent!r}" if kind.parent else ""
        raise NotFoundError(f"no {kind.name} {key!r}{where}{kind.missing}")
    return items, index


def find(data: Data, kind: Kind, parent: str | None, key: str) -> Data:
    """The object; raises :class:`NotFoundError` naming it (and its parent)."""
    items, index = _located(data, kind, parent, key)
    return items[index]


def create(data: Data, kind: Kind, parent: str | None, body: Data) -> None:
    """Add ``body``; raises :class:`ConflictError` when one with its key exists."""
    items = items_of(data, kind, parent)
    key = key_of(kind, body)
    if isinstance(key, str) and _index(items, kind, key) is not None:
        replace = "; PUT to replace it" if kind.key else ""
        raise ConflictError(f"{kind.name} {key!r} already exists{replace}")
    items.append(body)


def replace(data: Data, kind: Kind, parent: str | None, key: str, body: Data) -> None:
    """Replace the object by ``body`` (renaming is refused: remove and create instead)."""
    items, index = _located(data, kind, parent, key)
    if body.setdefault(kind.key, key) != key:
        raise ValidationError(f"the body names {kind.name} {body[kind.key]!r}, the path {key!r}")
    for sub in kind.kept:
        if sub not in body and sub in items[index]:
            body[sub] = items[index][sub]
    items[index] = body


def used_by(data: Data, kind: Kind, parent: str | None, key: str) -> list[str]:
    """What in the document names the object (assets in a zone or site, contracts covering
    a site or asset). Uses outside the document (agents, join tokens, users, history) are
    found when the change is planned (:func:`sessions.plant.diff`)."""
    assets, orgs = data["assets"], data["vendor_orgs"]
    names: list[str] = []
    if kind in (ZONE, SITE):
        site, zone = (parent, key) if kind is ZONE else (key, None)
        names = [
            f"asset {a['name']}"
            for a in assets
            if a.get("site") == site and zone in (None, a.get("zone"))
        ]
    if kind in (SITE, ASSET):
        names += [
            f"contract {o['slug']}/{c['reference']}"
            for o in orgs
            for c in o.get("contracts", [])
            if c.get("asset" if kind is ASSET else "site") == key
        ]
    return names


def remove(data: Data, kind: Kind, parent: str | None, key: str) -> None:
    """Take the object out; raises :class:`ConflictError` naming what still uses it."""
    items, index = _located(data, kind, parent, key)
    uses = used_by(data, kind, parent, key)
    if uses:
        raise ConflictError(
            f"{kind.name} {key!r} is still used by {', '.join(uses)}", code="plant_refused"
        )
    del items[index]


def listed(kind: Kind, item: Data) -> Data:
    """An object as the API shows it (windows with their ``key``)."""
    return item if kind.key else {"key": window_key(item), **item}
