"""Decisions: what the policy engine answers, parsed strictly and failing closed.

The policy contract (docs/policy.md): the query ``data.conduit.access.decision`` returns an
object ``{"allow": bool, "reasons": [str, ...], "obligations": {...}}``. Anything else —
undefined, wrong types, unknown record mode, negative durations, a Modbus write range that does
not name its table — becomes a *deny* whose reasons say what was wrong. :func:`deny` builds
such decisions for callers.

``obligations.modbus`` (:class:`ModbusObligations`)::

    {"allow_function_codes": [int 1-255, ...],
     "write_ranges": [{"table": "coils" | "holding_registers", "first": int 0-65535,
                       "last": int first-65535, "unit_ids": [int 0-255, ...] | null}, ...],
     "unit_ids": [int 0-255, ...] | null}

Unknown keys in the modbus object or a range are refused: a misspelt ``unit_ids`` would
silently widen a restriction.

``obligations.protocols`` is an object of per-protocol blocks (``{"s7": {...}, "enip": {...}}``),
checked here only for shape (an object of objects keyed by protocol name); each block is parsed
by that protocol's inspector module (``sessions.ot``), which refuses the connection when its
block is malformed. ``obligations.modbus`` stays the Modbus block (a ``protocols.modbus`` block,
when present, takes precedence).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from policies.canonical import canonical_json

DECISION_QUERY = "data.conduit.access.decision"
RECORD_MODES = ("strict", "best_effort")


def input_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical input document (audited with every decision)."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


COILS = "coils"
HOLDING_REGISTERS = "holding_registers"
WRITE_TABLES = (COILS, HOLDING_REGISTERS)  # the Modbus tables a client can write


@dataclass(frozen=True)
class WriteRange:
    """Addresses ``first``..``last`` (inclusive, PDU addresses 0-65535) of one writable table.

    ``unit_ids`` None: the range applies to requests for every unit id; a tuple: only to
    requests addressed to those unit ids.  Invalid values raise ValueError.
    """

    table: str
    first: int
    last: int
    unit_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.table not in WRITE_TABLES or not 0 <= self.first <= self.last <= 0xFFFF:
            raise ValueError(f"invalid write range {self!r}")

    def applies_to(self, table: str, unit_id: int) -> bool:
        """Whether this range confines writes into ``table`` addressed to ``unit_id``."""
        return self.table == table and (self.unit_ids is None or unit_id in self.unit_ids)

    def as_dict(self) -> dict[str, Any]:
        units = None if self.unit_ids is None else list(self.unit_ids)
        return {"table": self.table, "first": self.first, "last": self.last, "unit_ids": units}


@dataclass(frozen=True)
class ModbusObligations:
    """What the Modbus inspector enforces (sessions/ot/modbus.py).

    A write must lie wholly inside the union of the ``write_ranges`` of its own table that
    apply to its unit id; a table with no such range takes no writes.  ``unit_ids`` None: any
    unit id may be addressed; a tuple: requests to any other unit id are refused.
    """

    allow_function_codes: tuple[int, ...] = ()
    write_ranges: tuple[WriteRange, ...] = ()
    unit_ids: tuple[int, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "allow_function_codes": list(self.allow_function_codes),
            "write_ranges": [r.as_dict() for r in self.write_ranges],
            "unit_ids": None if self.unit_ids is None else list(self.unit_ids),
        }


@dataclass(frozen=True)
class Obligations:
    """What the enforcement point must do when it acts on an allow."""

    record: str = "strict"
    max_duration_s: int | None = None
    idle_timeout_s: int | None = None
    approvals_required: int = 0
    require_mfa: bool = False
    modbus: ModbusObligations = field(default_factory=ModbusObligations)
    rate_limit_rps: float | None = None
    supervise: bool = False
    protocols: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "max_duration_s": self.max_duration_s,
            "idle_timeout_s": self.idle_timeout_s,
            "approvals_required": self.approvals_required,
            "require_mfa": self.require_mfa,
            "modbus": self.modbus.as_dict(),
            "rate_limit_rps": self.rate_limit_rps,
            "supervise": self.supervise,
            "protocols": {name: dict(block) for name, block in self.protocols.items()},
        }


@dataclass(frozen=True)
class Decision:
    """One answer. ``reasons`` is never empty; ``allow`` is False unless the policy said True."""

    allow: bool
    reasons: tuple[str, ...]
    obligations: Obligations = field(default_factory=Obligations)
    bundle_version: str | None = None
    engine: str = ""
    input_hash: str = ""
    elapsed_ms: float = 0.0
    evaluator: str = ""  # embedded engine: "rvm" or "interpreter" (not part of as_dict)
    # True when the engine could not decide (unreachable, no bundle, malformed answer, over its
    # budget): a fail-closed deny from :func:`deny`, not the policy saying no. Callers that act
    # on a deny after the fact (the grant re-check) must not treat it as the policy's verdict.
    # Not part of as_dict.
    engine_failed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "obligations": self.obligations.as_dict(),
            "bundle_version": self.bundle_version,
            "engine": self.engine,
            "input_hash": self.input_hash,
        }

    def stamped(self, **changes: Any) -> Decision:
        return replace(self, **changes)


def deny(reason: str, **fields: Any) -> Decision:
    """A fail-closed decision with one reason: the engine could not decide
    (``engine_failed``)."""
    return Decision(allow=False, reasons=(reason,), engine_failed=True, **fields)


class MalformedDecision(ValueError):
    """The engine's answer does not follow the contract (message says where)."""


def _int(value: Any, where: str, *, minimum: int = 0, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MalformedDecision(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


_FUNCTION_CODES = frozenset(range(1, 256))


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)  # the first test is the cheap one


_MODBUS_KEYS = frozenset({"allow_function_codes", "write_ranges", "unit_ids"})
_RANGE_KEYS = frozenset({"table", "first", "last", "unit_ids"})
_UNIT_IDS = frozenset(range(256))


def _ints_within(value: Any, allowed: frozenset[int]) -> bool:
    # Every element's type is int (not bool: True == 1) and every value is allowed.
    return isinstance(value, list) and set(map(type, value)) <= {int} and set(value) <= allowed


def _unit_ids(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not _ints_within(value, _UNIT_IDS):
        raise MalformedDecision(f"{where} must be null or a list of integers 0-255, got {value!r}")
    return tuple(sorted(set(value)))


def _write_range(entry: Any, where: str) -> WriteRange:
    if isinstance(entry, list):
        raise MalformedDecision(
            f"{where} is a [first, last] pair {entry!r}: pairs are no longer accepted because "
            'they do not name a table; write {"table": "coils" | "holding_registers", '
            '"first": ..., "last": ..., "unit_ids": null | [...]}'
        )
    if not _is_mapping(entry):
        raise MalformedDecision(f"{where} must be an object, got {type(entry).__name__}")
    if unknown := sorted(map(str, entry.keys() - _RANGE_KEYS)):
        # A misspelt key (say "unit_id") would otherwise widen the range to every unit.
        raise MalformedDecision(f"{where} has unknown keys {unknown}")
    table = entry.get("table")
    if table not in WRITE_TABLES:
        raise MalformedDecision(f"{where}.table must be one of {WRITE_TABLES}, got {table!r}")
    bounds = []
    for key in ("first", "last"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise MalformedDecision(f"{where}.{key} must be an integer 0-65535, got {value!r}")
        bounds.append(value)
    first, last = bounds
    if first > last:
        raise MalformedDecision(f"{where} is inverted: first {first} > last {last}")
    return WriteRange(table, first, last, _unit_ids(entry.get("unit_ids"), f"{where}.unit_ids"))


def _modbus(raw: Any) -> ModbusObligations:
    return parse_modbus_obligations(raw, "obligations.modbus")


def parse_modbus_obligations(raw: Any, where: str) -> ModbusObligations:
    """A Modbus obligations block; raises MalformedDecision naming ``where``."""
    if not _is_mapping(raw):
        raise MalformedDecision(f"{where} must be an object")
    if unknown := sorted(map(str, raw.keys() - _MODBUS_KEYS)):
        raise MalformedDecision(f"{where} has unknown keys {unknown}")
    codes = raw.get("allow_function_codes") or []
    if not _ints_within(codes, _FUNCTION_CODES):
        raise MalformedDecision(f"{where}.allow_function_codes must be integers 1-255")
    ranges = raw.get("write_ranges") or []
    if not isinstance(ranges, list):
        raise MalformedDecision(f"{where}.write_ranges must be a list of range objects")
    return ModbusObligations(
        allow_function_codes=tuple(sorted(set(codes))),
        write_ranges=tuple(
            _write_range(r, f"{where}.write_ranges[{i}]") for i, r in enumerate(ranges)
        ),
        unit_ids=_unit_ids(raw.get("unit_ids"), f"{where}.unit_ids"),
    )


def _protocols(raw: Any) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not _is_mapping(raw):
        raise MalformedDecision("obligations.protocols must be an object of protocol blocks")
    blocks: dict[str, dict[str, Any]] = {}
    for name, block in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise MalformedDecision(f"obligations.protocols has a bad protocol name {name!r}")
        if not _is_mapping(block):
            raise MalformedDecision(f"obligations.protocols.{name} must be an object")
        blocks[name] = dict(block)
    return blocks


def _obligations(raw: Any) -> Obligations:
    if raw is None:
        return Obligations()
    if not _is_mapping(raw):
        raise MalformedDecision(f"obligations must be an object, got {type(raw).__name__}")
    record = raw.get("record", "strict")
    if record not in RECORD_MODES:
        raise MalformedDecision(f"obligations.record must be one of {RECORD_MODES}, got {record!r}")
    modbus_raw = raw.get("modbus")
    modbus = _modbus({} if modbus_raw is None else modbus_raw)
    rate = raw.get("rate_limit_rps")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0
    ):
        raise MalformedDecision(
            f"obligations.rate_limit_rps must be a positive number, got {rate!r}"
        )
    for flag in ("require_mfa", "supervise"):
        if not isinstance(raw.get(flag, False), bool):
            raise MalformedDecision(f"obligations.{flag} must be a boolean")
    return Obligations(
        record=record,
        max_duration_s=_int(raw.get("max_duration_s"), "obligations.max_duration_s", minimum=1),
        idle_timeout_s=_int(raw.get("idle_timeout_s"), "obligations.idle_timeout_s", minimum=1),
        approvals_required=_int(
            raw.get("approvals_required", 0), "obligations.approvals_required", optional=False
        )
        or 0,
        require_mfa=bool(raw.get("require_mfa", False)),
        modbus=modbus,
        rate_limit_rps=float(rate) if rate is not None else None,
        supervise=bool(raw.get("supervise", False)),
        protocols=_protocols(raw.get("protocols")),
    )


def decision_from(raw: Any, **stamps: Any) -> Decision:
    """The Decision in the engine's raw answer; raises MalformedDecision if there is none."""
    if not _is_mapping(raw):
        raise MalformedDecision(f"decision must be an object, got {type(raw).__name__}")
    allow = raw.get("allow")
    if not isinstance(allow, bool):
        raise MalformedDecision(f"decision.allow must be a boolean, got {allow!r}")
    reasons = raw.get("reasons")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise MalformedDecision("decision.reasons must be a list of strings")
    obligations = _obligations(raw.get("obligations"))
    if not reasons:
        reasons = ["allowed by policy" if allow else "denied by policy (no reason given)"]
    return Decision(allow=allow, reasons=tuple(reasons), obligations=obligations, **stamps)


def parse_decision(raw: Any, **stamps: Any) -> Decision:
    """Turn the engine's raw answer into a Decision; never raises, fails closed instead.

    ``stamps`` (engine, bundle_version, input_hash, elapsed_ms, evaluator) are set on the
    result.
    """
    try:
        return decision_from(raw, **stamps)
    except MalformedDecision as exc:
        return deny(f"policy returned a malformed decision: {exc}", **stamps)
