"""The plant document: a typed model of the plant file, parsed with path-named errors.

:func:`parse` turns plain data (from YAML or JSON) into a :class:`PlantDoc` or raises
:class:`PlantError` naming the path of the first bad value (``assets[2].endpoints[0].port``);
:meth:`PlantDoc.to_data` is the inverse (what ``conduit plant export`` prints).
docs/plant.md documents the file, docs/plant.schema.json is its JSON Schema.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sessions.endpoints import validate_settings
from sessions.errors import ValidationError
from sessions.models import Criticality, EndpointProtocol, OperationClass, check_timezone
from sessions.windows import DAYS

VERSION = 1
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_RELATIVE = re.compile(r"^([+-])(\d{1,5})([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class PlantError(ValidationError):
    """A plant document is invalid; ``path`` names the bad value ("" for the whole file)."""

    code = "invalid_plant"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or 'document'}: {message}")
        self.path = path
        self.detail = message


@dataclass(frozen=True)
class WindowDoc:
    days: tuple[str, ...]
    start: str
    end: str
    description: str = ""


@dataclass(frozen=True)
class ZoneDoc:
    name: str
    purdue_level: int
    description: str = ""
    notes: str = ""


@dataclass(frozen=True)
class SiteDoc:
    name: str
    timezone: str
    description: str = ""
    maintenance_windows: tuple[WindowDoc, ...] = ()
    zones: tuple[ZoneDoc, ...] = ()


@dataclass(frozen=True)
class EndpointDoc:
    name: str
    host: str
    port: int
    protocol: str
    settings: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None  # the name of the agent that reaches it (else the asset's agent)


@dataclass(frozen=True)
class AssetDoc:
    name: str
    site: str
    zone: str
    criticality: str
    owner_group: str
    description: str = ""
    vendor_notes: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    endpoints: tuple[EndpointDoc, ...] = ()


@dataclass(frozen=True)
class ContractDoc:
    reference: str
    valid_from: datetime
    valid_until: datetime
    site: str | None = None
    asset: str | None = None
    operation_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VendorOrgDoc:
    slug: str
    name: str
    idp_values: tuple[str, ...] = ()
    contacts: tuple[str, ...] = ()
    contracts: tuple[ContractDoc, ...] = ()


@dataclass(frozen=True)
class PlantDoc:
    version: int = VERSION
    sites: tuple[SiteDoc, ...] = ()
    assets: tuple[AssetDoc, ...] = ()
    vendor_orgs: tuple[VendorOrgDoc, ...] = ()

    def to_data(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-ready); datetimes as ISO 8601 UTC ``…Z``."""
        return {
            "version": self.version,
            "sites": [plain(s) for s in self.sites],
            "assets": [plain(a) for a in self.assets],
            "vendor_orgs": [plain(o) for o in self.vendor_orgs],
        }


# The document classes by the key path the JSON Schema uses for them (tests compare the two).
DOCUMENT_CLASSES: dict[str, type] = {
    "": PlantDoc,
    "sites[]": SiteDoc,
    "sites[].maintenance_windows[]": WindowDoc,
    "sites[].zones[]": ZoneDoc,
    "assets[]": AssetDoc,
    "assets[].endpoints[]": EndpointDoc,
    "vendor_orgs[]": VendorOrgDoc,
    "vendor_orgs[].contracts[]": ContractDoc,
}


def iso(value: datetime) -> str:
    """``2026-12-06T14:00:00Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """Plain data of a document (dataclasses to dicts without None, datetimes as ISO)."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        out = {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        return {k: v for k, v in out.items() if v is not None}
    return value


# --------------------------------------------------------------------------- parsing


def _object(raw: Any, path: str, cls: type) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PlantError(path, "must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlantError(path, f"unknown field(s) {', '.join(map(str, unknown))}")
    required = {
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    missing = sorted(required - set(raw))
    if missing:
        raise PlantError(path, f"missing field(s) {', '.join(missing)}")
    return raw


def _str(raw: dict[str, Any], key: str, path: str, *, required: bool = True) -> str:
    value = raw.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value.strip()):
        raise PlantError(
            f"{path}.{key}", "must be a non-empty string" if required else "must be a string"
        )
    return value


def _list(raw: dict[str, Any], key: str, path: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise PlantError(f"{path}.{key}", "must be a list")
    return value


def _strings(raw: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _list(raw, key, path)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise PlantError(f"{path}.{key}[{i}]", "must be a non-empty string")
    return tuple(items)


def _unique(names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise PlantError(f"{path}[{i}]", f"duplicate {what} name {name!r}")
        seen.add(name)


def _window(raw: Any, path: str) -> WindowDoc:
    raw = _object(raw, path, WindowDoc)
    days = _strings(raw, "days", path)
    if not days or any(d not in DAYS for d in days):
        raise PlantError(f"{path}.days", f"must be a non-empty list of {', '.join(DAYS)}")
    start, end = _str(raw, "start", path), _str(raw, "end", path)
    for key, value in (("start", start), ("end", end)):
        if not _HHMM.match(value):
            raise PlantError(f"{path}.{key}", f"{value!r} is not HH:MM (24 h)")
    if start == end:
        raise PlantError(path, "a window cannot start and end at the same time")
    ordered = tuple(sorted(set(days), key=DAYS.index))
    return WindowDoc(ordered, start, end, _str(raw, "description", path, required=False))


def _zone(raw: Any, path: str) -> ZoneDoc:
    raw = _object(raw, path, ZoneDoc)
    level = raw.get("purdue_level")
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5:
        raise PlantError(f"{path}.purdue_level", f"must be a Purdue level 0-5, got {level!r}")
    return ZoneDoc(
        _str(raw, "name", path),
        level,
        _str(raw, "description", path, required=False),
        _str(raw, "notes", path, required=False),
    )


def _site(raw: Any, path: str) -> SiteDoc:
    raw = _object(raw, path, SiteDoc)
    tz = _str(raw, "timezone", path)
    try:
        check_timezone(tz)
    except ValidationError:
        raise PlantError(f"{path}.timezone", f"{tz!r} is not an IANA time zone name") from None
    zones = tuple(_zone(z, f"{path}.zones[{i}]") for i, z in enumerate(_list(raw, "zones", path)))
    _unique([z.name for z in zones], f"{path}.zones", "zone")
    windows = _list(raw, "maintenance_windows", path)
    return SiteDoc(
        _str(raw, "name", path),
        tz,
        _str(raw, "description", path, required=False),
        tuple(_window(w, f"{path}.maintenance_windows[{i}]") for i, w in enumerate(windows)),
        zones,
    )


def _endpoint(raw: Any, path: str) -> EndpointDoc:
    raw = _object(raw, path, EndpointDoc)
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PlantError(f"{path}.port", f"must be a port 1-65535, got {port!r}")
    protocol = raw.get("protocol")
    if protocol not in EndpointProtocol.ALL:
        raise PlantError(
            f"{path}.protocol",
            f"must be one of {', '.join(EndpointProtocol.ALL)}, got {protocol!r}",
        )
    try:
        settings = validate_settings(str(protocol), raw.get("settings"), where="settings")
    except ValidationError as exc:
        where, _, message = exc.message.partition(": ")
        raise PlantError(f"{path}.{where}", message) from None
    agent = _str(raw, "agent", path) if "agent" in raw else None
    return EndpointDoc(
        _str(raw, "name", path), _str(raw, "host", path), port, str(protocol), settings, agent
    )


def _asset(raw: Any, path: str) -> AssetDoc:
    raw = _object(raw, path, AssetDoc)
    crit = raw.get("criticality")
    if crit not in Criticality.ALL:
        raise PlantError(
            f"{path}.criticality", f"must be one of {', '.join(Criticality.ALL)}, got {crit!r}"
        )
    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise PlantError(f"{path}.labels", "must be a mapping of strings to strings")
    eps = _list(raw, "endpoints", path)
    endpoints = tuple(_endpoint(e, f"{path}.endpoints[{i}]") for i, e in enumerate(eps))
    _unique([e.name for e in endpoints], f"{path}.endpoints", "endpoint")
    seen: dict[tuple[str, int], str] = {}
    for i, ep in enumerate(endpoints):
        if (ep.host, ep.port) in seen:
            raise PlantError(
                f"{path}.endpoints[{i}]",
                f"{ep.host}:{ep.port} is already endpoint {seen[(ep.host, ep.port)]!r}",
            )
        seen[(ep.host, ep.port)] = ep.name
    return AssetDoc(
        _str(raw, "name", path),
        _str(raw, "site", path),
        _str(raw, "zone", path),
        str(crit),
        _str(raw, "owner_group", path),
        _str(raw, "description", path, required=False),
        _str(raw, "vendor_notes", path, required=False),
        dict(labels),
        endpoints,
    )


def resolve_time(value: Any, now: datetime) -> datetime | None:
    """A contract time: ISO 8601 with a zone, or relative (``-30d``, ``+12h``, ``+90m``) to
    today 00:00 UTC; None when ``value`` is neither."""
    if not isinstance(value, str):
        return None
    rel = _RELATIVE.match(value.strip())
    if rel:
        sign, amount, unit = rel.groups()
        delta = timedelta(**{_UNITS[unit]: int(amount)})
        # Why midnight: the same file applied twice on one day changes nothing.
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return day + delta if sign == "+" else day - delta
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def _when(raw: dict[str, Any], key: str, path: str, now: datetime) -> datetime:
    value = raw.get(key)
    resolved = resolve_time(value, now)
    if resolved is not None:
        return resolved
    raise PlantError(
        f"{path}.{key}",
        f"must be an ISO 8601 time with a zone (2026-01-01T00:00:00Z) or relative (-30d, +365d), "
        f"got {value!r}",
    )


def _contract(raw: Any, path: str, now: datetime) -> ContractDoc:
    raw = _object(raw, path, ContractDoc)
    site = raw.get("site")
    asset = raw.get("asset")
    for key, value in (("site", site), ("asset", asset)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise PlantError(f"{path}.{key}", "must be a non-empty string")
    if site is None and asset is None:
        raise PlantError(path, "a contract covers a site or an asset: name one")
    start, end = _when(raw, "valid_from", path, now), _when(raw, "valid_until", path, now)
    if end <= start:
        raise PlantError(
            f"{path}.valid_until", f"the contract ends ({iso(end)}) before it starts ({iso(start)})"
        )
    classes = _strings(raw, "operation_classes", path)
    for i, op in enumerate(classes):
        if op not in OperationClass.ALL:
            raise PlantError(
                f"{path}.operation_classes[{i}]",
                f"{op!r} is not an operation class ({', '.join(OperationClass.ALL)})",
            )
    ordered = tuple(sorted(set(classes), key=OperationClass.ALL.index))
    return ContractDoc(_str(raw, "reference", path), start, end, site, asset, ordered)


def _org(raw: Any, path: str, now: datetime) -> VendorOrgDoc:
    raw = _object(raw, path, VendorOrgDoc)
    items = _list(raw, "contracts", path)
    contracts = tuple(_contract(c, f"{path}.contracts[{i}]", now) for i, c in enumerate(items))
    _unique([c.reference for c in contracts], f"{path}.contracts", "contract reference")
    return VendorOrgDoc(
        _str(raw, "slug", path),
        _str(raw, "name", path),
        tuple(sorted(set(_strings(raw, "idp_values", path)))),
        _strings(raw, "contacts", path),
        contracts,
    )


def parse(data: Any, now: datetime) -> PlantDoc:
    """Validate plain data; raise :class:`PlantError` at the first bad value.

    ``now`` resolves relative contract times (``-30d`` is 30 days before today, 00:00 UTC).
    Names are checked across the document: zones and assets must exist, names are unique.
    """
    raw = _object(data if data is not None else {}, "", PlantDoc)
    version = raw.get("version", VERSION)
    if version != VERSION:
        raise PlantError("version", f"must be {VERSION}, got {version!r}")
    sites = tuple(_site(s, f"sites[{i}]") for i, s in enumerate(_list(raw, "sites", "")))
    _unique([s.name for s in sites], "sites", "site")
    assets = tuple(_asset(a, f"assets[{i}]") for i, a in enumerate(_list(raw, "assets", "")))
    _unique([a.name for a in assets], "assets", "asset")
    orgs = tuple(
        _org(o, f"vendor_orgs[{i}]", now) for i, o in enumerate(_list(raw, "vendor_orgs", ""))
    )
    _unique([o.slug for o in orgs], "vendor_orgs", "vendor org")
    zones = {s.name: {z.name for z in s.zones} for s in sites}
    for i, a in enumerate(assets):
        if a.site not in zones:
            raise PlantError(f"assets[{i}].site", f"unknown site {a.site!r}")
        if a.zone not in zones[a.site]:
            raise PlantError(f"assets[{i}].zone", f"unknown zone {a.zone!r} in site {a.site!r}")
    asset_names = {a.name for a in assets}
    for i, o in enumerate(orgs):
        for j, c in enumerate(o.contracts):
            where = f"vendor_orgs[{i}].contracts[{j}]"
            if c.site is not None and c.site not in zones:
                raise PlantError(f"{where}.site", f"unknown site {c.site!r}")
            if c.asset is not None and c.asset not in asset_names:
                raise PlantError(f"{where}.asset", f"unknown asset {c.asset!r}")
    return PlantDoc(VERSION, sites, assets, orgs)
