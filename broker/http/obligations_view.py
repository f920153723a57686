"""Obligations for people: one renderer used by every page that shows them.

A grant's stored obligations (``Grant.obligations``) and a decision's
(``Obligations.as_dict()``) are the same JSON object (docs/policy.md). :func:`obligation_rows`
turns one into ``(label, text)`` rows in a fixed order, e.g. ``("Modbus", "read functions
1, 2, 3, 4; writes to holding registers 10-30 (unit 1); unit ids 1")``; templates show them
with the ``obligations_table`` macro (``view_macros.html``) through the ``obligation_rows``
Jinja filter. Never Python reprs: booleans become words, unknown keys are shown as compact
JSON under their own name, so a new obligation is visible without code here. Input that is
not a mapping yields no rows (there is nothing to promise about it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# design.md "OT operations": Modbus read and write/control function codes.
MODBUS_READ = frozenset({1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43})
MODBUS_WRITE = frozenset({5, 6, 15, 16, 21, 22, 23})
TABLE_NAMES = {"coils": "coils", "holding_registers": "holding registers"}
RECORD_TEXT = {
    "strict": "strict (the session ends if recording fails)",
    "best_effort": "best effort",
}
_KNOWN = (
    "record",
    "max_duration_s",
    "idle_timeout_s",
    "approvals_required",
    "require_mfa",
    "supervise",
    "maintenance_window_only",
    "modbus",
    "rate_limit_rps",
    "protocols",
)
PROTOCOL_NAMES = {"modbus": "Modbus", "s7": "S7", "enip": "EtherNet/IP"}


def duration_text(seconds: Any) -> str:
    """``7200`` -> ``2 h``, ``5400`` -> ``1 h 30 min``, ``45`` -> ``45 s``."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return _json(seconds)
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes else []
    parts += [f"{secs} s"] if secs or not parts else []
    return " ".join(parts)


def _numbers(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _units(units: Any) -> str:
    if units is None:
        return ""
    units = list(units)
    return f" (unit{'s' if len(units) != 1 else ''} {_numbers(units)})"


def _range_text(r: Mapping[str, Any]) -> str:
    table = TABLE_NAMES.get(str(r.get("table")), str(r.get("table")))
    first, last = r.get("first"), r.get("last")
    where = f"{first}" if first == last else f"{first}\u2013{last}"
    return f"{table} {where}{_units(r.get('unit_ids'))}"


def modbus_text(modbus: Mapping[str, Any], rate: Any = None) -> str:
    """One line: read/write/other functions, write ranges, unit ids, rate."""
    codes = sorted(int(c) for c in modbus.get("allow_function_codes") or ())
    parts: list[str] = []
    for label, group in (("read", MODBUS_READ), ("write", MODBUS_WRITE)):
        chosen = [c for c in codes if c in group]
        if chosen:
            parts.append(f"{label} functions {_numbers(chosen)}")
    other = [c for c in codes if c not in MODBUS_READ | MODBUS_WRITE]
    if other:
        parts.append(f"other functions {_numbers(other)}")
    if not codes:
        parts.append("no function codes allowed")
    ranges = [r for r in modbus.get("write_ranges") or () if isinstance(r, Mapping)]
    parts.append(
        "writes to " + "; ".join(_range_text(r) for r in ranges) if ranges else "no writes"
    )
    units = modbus.get("unit_ids")
    parts.append("any unit id" if units is None else f"unit ids {_numbers(units)}")
    if rate is not None:
        parts.append(f"rate {_rate(rate)}/s")
    return "; ".join(parts)


def _ot_range_text(r: Mapping[str, Any]) -> str:
    area = str(r.get("area", ""))
    db = r.get("db")
    where = f"DB{db}" if area == "DB" and db is not None else area or "any area"
    first, last = r.get("first"), r.get("last")
    return f"{where} bytes {first}" if first == last else f"{where} bytes {first}\u2013{last}"


def protocol_text(block: Mapping[str, Any]) -> str:
    """One line for an S7 / EtherNet/IP block: its operations and write ranges."""
    allowed = [str(a).replace("_", " ") for a in block.get("allow") or ()]
    parts = [f"operations {', '.join(allowed)}" if allowed else "no operations allowed"]
    ranges = [r for r in block.get("write_ranges") or () if isinstance(r, Mapping)]
    if ranges:
        parts.append("writes to " + "; ".join(_ot_range_text(r) for r in ranges))
    rest = sorted(set(block) - {"allow", "write_ranges"})
    parts += [f"{_label(k).lower()} {_json(block[k])}" for k in rest]
    return "; ".join(parts)


def _rate(rate: Any) -> str:
    if isinstance(rate, float) and rate.is_integer():
        return str(int(rate))
    return str(rate)


def _json(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def obligation_rows(
    obligations: Any, protocols: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """``(label, text)`` rows for an obligations object; unset (None) values are left out.

    ``protocols``: what the grant reaches (``AccessRequest.protocols``); when given, the
    Modbus row (and its rate) is shown only if it includes ``modbus``, since nothing else
    enforces it. None (unknown, e.g. the what-if simulator) shows every row.
    """
    if not isinstance(obligations, Mapping):
        return []
    modbus_relevant = protocols is None or "modbus" in set(protocols)
    o = obligations
    rows: list[tuple[str, str]] = []
    if "record" in o:
        rows.append(("Recording", RECORD_TEXT.get(str(o["record"]), _json(o["record"]))))
    for key, label in (("max_duration_s", "Longest session"), ("idle_timeout_s", "Idle timeout")):
        if o.get(key) is not None:
            rows.append((label, duration_text(o[key])))
    if o.get("approvals_required"):
        rows.append(("Approvals needed", _json(o["approvals_required"])))
    if "require_mfa" in o:
        rows.append(("MFA", "required at connect" if o["require_mfa"] is True else "not required"))
    if o.get("supervise") is True:
        rows.append(("Supervision", "an approver watches the session"))
    if o.get("maintenance_window_only") is True:
        rows.append(("Maintenance windows", "only while a window of the site is open"))
    raw_blocks = o.get("protocols")
    blocks: Mapping[str, Any] = raw_blocks if isinstance(raw_blocks, Mapping) else {}
    if modbus_relevant:
        rows += _modbus_rows({**o, "modbus": blocks.get("modbus", o.get("modbus"))})
    reached = None if protocols is None else set(protocols)
    for name in sorted(set(blocks) - {"modbus"}):
        if isinstance(blocks[name], Mapping) and (reached is None or name in reached):
            rows.append((PROTOCOL_NAMES.get(name, name), protocol_text(blocks[name])))
    for key in sorted(set(o) - set(_KNOWN)):
        if o[key] is not None:
            rows.append((_label(key), _json(o[key])))
    return rows


def _modbus_rows(o: Mapping[str, Any]) -> list[tuple[str, str]]:
    modbus = o.get("modbus")
    if isinstance(modbus, Mapping):
        return [("Modbus", modbus_text(modbus, o.get("rate_limit_rps")))]
    if o.get("rate_limit_rps") is not None:
        return [("Rate limit", f"{_rate(o['rate_limit_rps'])} requests/s")]
    return []


def obligations_text(obligations: Any, protocols: Iterable[str] | None = None) -> str:
    """The rows on one line each (``Label: text``), for the CLI."""
    rows = obligation_rows(obligations, protocols)
    return "\n".join(f"{label}: {text}" for label, text in rows)
