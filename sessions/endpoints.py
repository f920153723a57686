"""Declared asset endpoints: settings validation, and what a grant may reach through them.

An asset's endpoints are inventory (:class:`sessions.models.AssetEndpoint`): a request may
name only ports among them, a connection may reach only an endpoint of its grant, and
inspection is chosen by the endpoint's declared ``protocol``.

``settings`` per protocol (validated and normalized by :func:`validate_settings`; anything
else raises :class:`sessions.errors.ValidationError` naming the field)::

    ssh:    {"logins": {"read_only": ["maint"], "tune": ["maint", "eng"], ...}}
            # or {"logins": ["maint"]} for every operation class
    modbus: {"unit_ids": [1, 2],                       # optional: only these units
             "write_ranges": {"tune": [{"table": "holding_registers", "first": 10,
                                        "last": 30, "unit_ids": [1]}, ...], ...}}

Modbus write ranges are per operation class and per table (``coils``,
``holding_registers``); a class with no ranges gets no writes, except ``program`` and
``firmware`` which default to the whole address space of both tables (the policy bundle
applies that default). Other protocols take no settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlmodel import Session, select

from sessions.errors import ValidationError
from sessions.models import AssetEndpoint, EndpointProtocol, OperationClass

MODBUS_TABLES = ("coils", "holding_registers")
# Protocols the broker inspects on the wire; any other endpoint is relayed as generic TCP,
# and only when policy allows generic TCP for the asset.
INSPECTED_PROTOCOLS = frozenset({EndpointProtocol.MODBUS})
_LOGIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _fail(where: str, message: str) -> ValidationError:
    return ValidationError(f"{where}: {message}", code="invalid_endpoint")


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"must be an integer {low}-{high}, got {value!r}")
    return value


def _units(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _fail(where, "must be a non-empty list of unit ids 0-255")
    units = sorted({_int(u, f"{where}[]", 0, 255) for u in value})
    return units


def _login(value: Any, where: str) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 32
        or not set(value) <= _LOGIN_CHARS
        or value[0] in "-."
    ):
        raise _fail(where, f"{value!r} is not a valid login name")
    return value


def _class(name: Any, where: str) -> str:
    if name not in OperationClass.ALL:
        raise _fail(where, f"{name!r} is not an operation class ({', '.join(OperationClass.ALL)})")
    return str(name)


def _ssh(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(settings) - {"logins"}
    if unknown:
        raise _fail(where, f"unknown ssh setting(s) {', '.join(sorted(unknown))}")
    raw = settings.get("logins", {})
    if isinstance(raw, list):
        raw = dict.fromkeys(OperationClass.ALL, raw)
    if not isinstance(raw, Mapping):
        raise _fail(f"{where}.logins", "must be a list or an object of operation class -> list")
    logins: dict[str, list[str]] = {}
    for op, names in raw.items():
        here = f"{where}.logins.{_class(op, f'{where}.logins')}"
        if not isinstance(names, list):
            raise _fail(here, "must be a list of login names")
        logins[op] = sorted({_login(n, here) for n in names})
    return {"logins": logins} if logins else {}


def _range(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be an object {table, first, last[, unit_ids]}")
    unknown = set(raw) - {"table", "first", "last", "unit_ids"}
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(sorted(unknown))}")
    table = raw.get("table")
    if table not in MODBUS_TABLES:
        raise _fail(f"{where}.table", f"must be one of {', '.join(MODBUS_TABLES)}, got {table!r}")
    first = _int(raw.get("first"), f"{where}.first", 0, 65535)
    last = _int(raw.get("last"), f"{where}.last", 0, 65535)
    if last < first:
        raise _fail(where, f"range {first}-{last} is inverted (last before first)")
    out: dict[str, Any] = {"table": table, "first": first, "last": last}
    units = _units(raw.get("unit_ids"), f"{where}.unit_ids")
    if units is not None:
        out["unit_ids"] = units
    return out


def _no_overlap(ranges: Sequence[Mapping[str, Any]], where: str) -> None:
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            same_units = a.get("unit_ids") is None or b.get("unit_ids") is None
            if not same_units and set(a["unit_ids"]) & set(b["unit_ids"]):
                same_units = True
            if (
                a["table"] == b["table"]
                and same_units
                and a["first"] <= b["last"]
                and b["first"] <= a["last"]
            ):
                raise _fail(
                    where,
                    f"{a['table']} ranges {a['first']}-{a['last']} and "
                    f"{b['first']}-{b['last']} overlap",
                )


def _modbus(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(settings) - {"unit_ids", "write_ranges"}
    if unknown:
        raise _fail(where, f"unknown modbus setting(s) {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    units = _units(settings.get("unit_ids"), f"{where}.unit_ids")
    if units is not None:
        out["unit_ids"] = units
    raw = settings.get("write_ranges", {})
    if not isinstance(raw, Mapping):
        raise _fail(f"{where}.write_ranges", "must be an object of operation class -> ranges")
    ranges: dict[str, list[dict[str, Any]]] = {}
    for op, items in raw.items():
        here = f"{where}.write_ranges.{_class(op, f'{where}.write_ranges')}"
        if not isinstance(items, list):
            raise _fail(here, "must be a list of ranges")
        parsed = [_range(item, f"{here}[{i}]") for i, item in enumerate(items)]
        if units is not None:
            for item in parsed:
                stray = set(item.get("unit_ids", ())) - set(units)
                if stray:
                    raise _fail(here, f"unit id(s) {sorted(stray)} are not in unit_ids {units}")
        _no_overlap(parsed, here)
        ranges[op] = sorted(parsed, key=lambda r: (r["table"], r["first"]))
    if ranges:
        out["write_ranges"] = ranges
    return out


def validate_settings(protocol: str, settings: Any, *, where: str = "settings") -> dict[str, Any]:
    """Return the normalized settings of a ``protocol`` endpoint; raise ValidationError if bad."""
    if protocol not in EndpointProtocol.ALL:
        raise _fail("protocol", f"must be one of {', '.join(EndpointProtocol.ALL)}")
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise _fail(where, "must be an object")
    if protocol == EndpointProtocol.SSH:
        return _ssh(settings, where)
    if protocol == EndpointProtocol.MODBUS:
        return _modbus(settings, where)
    if settings:
        raise _fail(where, f"{protocol} endpoints take no settings")
    return {}


def logins_for(endpoints: Iterable[AssetEndpoint], operation_class: str) -> list[str]:
    """SSH logins the asset's SSH endpoints allow for ``operation_class`` (sorted, unique)."""
    found: set[str] = set()
    for ep in endpoints:
        if ep.protocol == EndpointProtocol.SSH:
            found.update(ep.settings.get("logins", {}).get(operation_class, []))
    return sorted(found)


def ssh_endpoint(endpoints: Iterable[AssetEndpoint]) -> AssetEndpoint | None:
    """The asset's SSH endpoint (the first by name), or None."""
    ssh = sorted((e for e in endpoints if e.protocol == EndpointProtocol.SSH), key=lambda e: e.name)
    return ssh[0] if ssh else None


def endpoint_document(ep: AssetEndpoint) -> dict[str, Any]:
    """An endpoint as the policy input and the API show it."""
    return {
        "name": ep.name,
        "host": ep.host,
        "port": ep.port,
        "protocol": ep.protocol,
        "inspected": ep.protocol in INSPECTED_PROTOCOLS,
        "settings": dict(ep.settings),
    }


def describe(ep: AssetEndpoint) -> str:
    """``modbus 127.0.0.1:502 (plc)`` — how approvers and vendors see an endpoint."""
    return f"{ep.protocol} {ep.host}:{ep.port} ({ep.name})"


def endpoints_of(db: Session, asset_id: str) -> list[AssetEndpoint]:
    """The asset's declared endpoints, ordered by port then name."""
    rows = db.exec(select(AssetEndpoint).where(AssetEndpoint.asset_id == asset_id)).all()
    return sorted(rows, key=lambda e: (e.port, e.name))
