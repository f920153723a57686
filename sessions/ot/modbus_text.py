"""Modbus for people: the plug-in's describers (:class:`sessions.ot.base.ProtocolPlugin`).

- :func:`describe_modbus_obligations`: the block (``protocols.modbus``, else the legacy
  top-level ``modbus``) and the rate, e.g. ``read functions 1, 2, 3, 4; write functions 6, 16;
  writes to holding registers 10\u201330 (unit 1); unit ids 1; rate 20/s``;
- :func:`describe_modbus_settings`: ``tune may write holding registers 0\u201399; unit ids 1``;
- :func:`describe_modbus_allowance`: what a grant allows at one endpoint, e.g. ``function
  codes 1, 2, 3, 4; writes to holding registers 0\u201399 (unit 1)``.

A block the inspector would refuse reads as :func:`sessions.ot.wording.refused` with the
parser's message; nothing here raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.decision import parse_modbus_obligations
from sessions.models import OperationClass
from sessions.ot.wording import compact_json, numbers, refused, span

# design.md "OT operations": Modbus read and write/control function codes.
MODBUS_READ = frozenset({1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43})
MODBUS_WRITE = frozenset({5, 6, 15, 16, 21, 22, 23})
DEFAULT_READS = "1, 2, 3, 4"  # what a grant without a function-code list may use
TABLE_NAMES = {"coils": "coils", "holding_registers": "holding registers"}
OBLIGATION_KEYS = frozenset({"modbus", "rate_limit_rps"})


def modbus_block(obligations: Mapping[str, Any]) -> Any:
    """``protocols.modbus`` when present, else the legacy top-level ``modbus`` (as stored)."""
    blocks = obligations.get("protocols")
    if isinstance(blocks, Mapping) and "modbus" in blocks:
        return blocks["modbus"]
    return obligations.get("modbus")


def _problem(block: Any) -> str | None:
    try:
        parse_modbus_obligations(block, "modbus")
    except (ValueError, TypeError) as exc:  # MalformedDecision is a ValueError
        return str(exc)
    return None


def _table(name: Any) -> str:
    return TABLE_NAMES.get(str(name), str(name))


def _units(units: Any) -> str:
    if not isinstance(units, list | tuple) or not units:
        return ""
    return f" (unit{'s' if len(units) != 1 else ''} {numbers(units)})"


def _range_text(r: Mapping[str, Any]) -> str:
    where = span(r.get("first"), r.get("last"))
    return f"{_table(r.get('table'))} {where}{_units(r.get('unit_ids'))}"


def _rate(rate: Any) -> str:
    if isinstance(rate, float) and rate.is_integer():
        return str(int(rate))
    return str(rate)


def describe_modbus_obligations(obligations: Mapping[str, Any]) -> str | None:
    """Read/write/other functions, write ranges, unit ids, rate; None without a block."""
    block = modbus_block(obligations)
    if block is None:
        return None
    problem = _problem(block)
    if problem is not None:
        return refused(problem)
    codes = sorted(int(c) for c in block.get("allow_function_codes") or ())
    parts: list[str] = []
    for label, group in (("read", MODBUS_READ), ("write", MODBUS_WRITE)):
        chosen = [c for c in codes if c in group]
        if chosen:
            parts.append(f"{label} functions {numbers(chosen)}")
    other = [c for c in codes if c not in MODBUS_READ | MODBUS_WRITE]
    if other:
        parts.append(f"other functions {numbers(other)}")
    if not codes:
        parts.append("no function codes allowed")
    ranges = list(block.get("write_ranges") or ())
    parts.append(
        "writes to " + "; ".join(_range_text(r) for r in ranges) if ranges else "no writes"
    )
    units = block.get("unit_ids")
    parts.append("any unit id" if units is None else f"unit ids {numbers(units)}")
    rate = obligations.get("rate_limit_rps")
    if rate is not None:
        parts.append(f"rate {_rate(rate)}/s")
    return "; ".join(parts)


def _by_table(items: list[Any]) -> str:
    by_table: dict[str, list[str]] = {}
    for r in items:
        if isinstance(r, Mapping):
            by_table.setdefault(_table(r.get("table")), []).append(
                span(r.get("first"), r.get("last"))
            )
    return ", ".join(f"{table} {' and '.join(spans)}" for table, spans in by_table.items())


def describe_modbus_settings(settings: Mapping[str, Any]) -> str:
    """Write ranges per operation class and the unit ids (settings as validated)."""
    ranges = settings.get("write_ranges")
    ranges = ranges if isinstance(ranges, Mapping) else {}
    parts = [
        f"{op} may write {_by_table(list(ranges[op]))}"
        for op in OperationClass.ALL
        if isinstance(ranges.get(op), list)
    ]
    text = "; ".join(parts) or "no writes"
    units = settings.get("unit_ids")
    return f"{text}; unit ids {numbers(units) if isinstance(units, list) and units else 'any'}"


def describe_modbus_allowance(
    obligations: Mapping[str, Any], settings: Mapping[str, Any], operation_class: str
) -> str:
    """The grant's function codes and write ranges (else the endpoint's for the class), each
    range with its unit ids (else the block's, else the endpoint's)."""
    block = modbus_block(obligations)
    if block is not None and not isinstance(block, Mapping):
        return refused(f"the modbus block is not an object: {compact_json(block)}")
    modbus: Mapping[str, Any] = block or {}
    codes = modbus.get("allow_function_codes")
    codes = codes if isinstance(codes, list) else None
    ranges = modbus.get("write_ranges")
    if ranges is None:
        per_class = settings.get("write_ranges")
        ranges = per_class.get(operation_class, []) if isinstance(per_class, Mapping) else []
    text = f"function codes {numbers(codes)}" if codes else f"read functions {DEFAULT_READS}"
    units = modbus.get("unit_ids") or settings.get("unit_ids")
    good = [r for r in ranges if isinstance(r, Mapping)] if isinstance(ranges, list) else []
    shown = [_range_text({**r, "unit_ids": r.get("unit_ids") or units}) for r in good]
    writes = "writes to " + "; ".join(shown) if shown else "no writes"
    return f"{text}; {writes}"
