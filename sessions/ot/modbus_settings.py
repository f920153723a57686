"""Modbus endpoint settings: unit ids and write ranges per operation class and table.

::

    {"unit_ids": [1, 2],                       # optional: only these units
     "write_ranges": {"tune": [{"table": "holding_registers", "first": 10,
                                "last": 30, "unit_ids": [1]}, ...], ...}}

A class with no ranges gets no writes, except ``program`` and ``firmware``, which default to
the whole address space of both tables (the policy bundle applies that default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sessions.ot.settings import fail as _fail
from sessions.ot.settings import integer as _int
from sessions.ot.settings import operation_class as _class
from sessions.ot.settings import unit_ids as _units

MODBUS_TABLES = ("coils", "holding_registers")


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


def validate_modbus_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
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
