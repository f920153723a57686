"""Words shared by the plug-ins' describers (:class:`sessions.ot.base.ProtocolPlugin`).

Pure functions of JSON values that never raise: a describer turns whatever a stored grant or
a what-if decision holds into one line for people, and a malformed block into a sentence
saying so (with its value as compact JSON, never a Python repr).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

DASH = "\u2013"  # en dash, as in "0\u201399"


def numbers(values: Iterable[Any]) -> str:
    """``[1, 2]`` -> ``1, 2``."""
    return ", ".join(str(v) for v in values)


def span(first: Any, last: Any) -> str:
    """``0, 99`` -> ``0\u201399``; ``5, 5`` -> ``5``."""
    return f"{first}" if first == last else f"{first}{DASH}{last}"


def operation_names(names: Iterable[Any]) -> str:
    """``["read_var", "write_var"]`` -> ``read var, write var``."""
    return ", ".join(str(n).replace("_", " ") for n in names)


def compact_json(value: Any) -> str:
    """Sorted, compact JSON (non-JSON values as their ``str``)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def refused(problem: str) -> str:
    """The line for a block the inspector would refuse (it fails closed)."""
    return f"malformed, so every connection is refused ({problem})"
