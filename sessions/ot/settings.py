"""Endpoint settings helpers shared by the protocol modules: one error shape, names the field.

Every problem raises :class:`sessions.errors.ValidationError` with code ``invalid_endpoint``
and a message starting with the field's path (``settings.write_ranges.tune[0].first: ...``).
"""

from __future__ import annotations

from typing import Any

from sessions.errors import ValidationError
from sessions.models import OperationClass


def fail(where: str, message: str) -> ValidationError:
    return ValidationError(f"{where}: {message}", code="invalid_endpoint")


def integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(where, f"must be an integer {low}-{high}, got {value!r}")
    return value


def unit_ids(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise fail(where, "must be a non-empty list of unit ids 0-255")
    units = sorted({integer(u, f"{where}[]", 0, 255) for u in value})
    return units


def operation_class(name: Any, where: str) -> str:
    """``name`` if it is an operation class, else ValidationError."""
    if name not in OperationClass.ALL:
        raise fail(where, f"{name!r} is not an operation class ({', '.join(OperationClass.ALL)})")
    return str(name)


def unknown_keys(raw: Any, allowed: set[str], where: str, what: str) -> None:
    """Refuse keys outside ``allowed`` (a misspelt key would silently widen a restriction)."""
    unknown = set(raw) - allowed
    if unknown:
        raise fail(where, f"unknown {what} {', '.join(sorted(unknown))}")
