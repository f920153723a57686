"""Decisions: what the policy engine answers, parsed strictly and failing closed.

The policy contract (docs/policy.md): the query ``data.conduit.access.decision`` returns an
object ``{"allow": bool, "reasons": [str, ...], "obligations": {...}}``. Anything else —
undefined, wrong types, unknown record mode, negative durations — becomes a *deny* whose
reasons say what was wrong. :func:`deny` builds such decisions for callers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

DECISION_QUERY = "data.conduit.access.decision"
RECORD_MODES = ("strict", "best_effort")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the form that is hashed."""
    return _CANONICAL.encode(value)


def input_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical input document (audited with every decision)."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


@dataclass(frozen=True)
class ModbusObligations:
    allow_function_codes: tuple[int, ...] = ()
    write_ranges: tuple[tuple[int, int], ...] = ()  # inclusive (first, last) register addresses


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "max_duration_s": self.max_duration_s,
            "idle_timeout_s": self.idle_timeout_s,
            "approvals_required": self.approvals_required,
            "require_mfa": self.require_mfa,
            "modbus": {
                "allow_function_codes": list(self.modbus.allow_function_codes),
                "write_ranges": [list(r) for r in self.modbus.write_ranges],
            },
            "rate_limit_rps": self.rate_limit_rps,
            "supervise": self.supervise,
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
    """A fail-closed decision with one reason."""
    return Decision(allow=False, reasons=(reason,), **fields)


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


def _obligations(raw: Any) -> Obligations:
    if raw is None:
        return Obligations()
    if not _is_mapping(raw):
        raise MalformedDecision(f"obligations must be an object, got {type(raw).__name__}")
    record = raw.get("record", "strict")
    if record not in RECORD_MODES:
        raise MalformedDecision(f"obligations.record must be one of {RECORD_MODES}, got {record!r}")
    modbus_raw = raw.get("modbus") or {}
    if not _is_mapping(modbus_raw):
        raise MalformedDecision("obligations.modbus must be an object")
    codes = modbus_raw.get("allow_function_codes") or []
    # Integers 1-255, not booleans (True == 1): every element's type is int, and the set of
    # values lies within 1-255.
    if not isinstance(codes, list) or not (
        set(map(type, codes)) <= {int} and set(codes) <= _FUNCTION_CODES
    ):
        raise MalformedDecision("obligations.modbus.allow_function_codes must be integers 1-255")
    ranges_raw = modbus_raw.get("write_ranges") or []
    ranges: list[tuple[int, int]] = []
    if not isinstance(ranges_raw, list):
        raise MalformedDecision("obligations.modbus.write_ranges must be a list of [first, last]")
    for r in ranges_raw:
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            or not 0 <= r[0] <= r[1] <= 65535
        ):
            raise MalformedDecision(
                f"obligations.modbus.write_ranges entry {r!r} is not [first, last]"
            )
        ranges.append((r[0], r[1]))
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
        modbus=ModbusObligations(tuple(sorted(set(codes))), tuple(ranges)),
        rate_limit_rps=float(rate) if rate is not None else None,
        supervise=bool(raw.get("supervise", False)),
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
