"""Canonical JSON: the one encoding the project hashes and signs.

Sorted keys, no whitespace, UTF-8 with non-ASCII kept as is, no NaN or Infinity, datetimes as
ISO-8601 UTC with microseconds and a ``Z`` (``2025-01-01T12:00:00.000000Z``).  The audit
chain, recording chains and manifests, checkpoints, policy input hashes, the OPA request body
and the webhook body all use it, so a verifier needs to reimplement only this.  It lives in
:mod:`policies` because that is the leaf package every layer may import.

The agents' wire protocol (:mod:`agents.wire`) has its own encoder on purpose: agents stand
alone and import nothing from the project but that module.

Display-only output (``indent=2``) is not canonical JSON and does not use this.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime


def format_timestamp(value: datetime) -> str:
    """``2025-01-01T12:00:00.000000Z``: ISO-8601 UTC, always with microseconds.

    Raises :class:`ValueError` for naive datetimes (their instant is unknown).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("canonical_json: naive datetime cannot be encoded")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return format_timestamp(value)
    raise TypeError(f"canonical_json: {type(value).__name__} is not JSON-serialisable")


_ENCODER = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    default=_default,
)


def canonical_json(obj: object) -> str:
    """Encode ``obj`` canonically (see the module docstring).

    Raises :class:`TypeError` for a value JSON cannot hold (a set, bytes, an object) and
    :class:`ValueError` for NaN, Infinity, a naive datetime or a circular reference.
    """
    return _ENCODER.encode(obj)


def canonical_bytes(obj: object) -> bytes:
    """:func:`canonical_json` encoded as UTF-8: the bytes that are hashed and signed.

    Raises as :func:`canonical_json` does, and :class:`UnicodeEncodeError` (a
    :class:`ValueError`) for a lone surrogate.
    """
    return canonical_json(obj).encode("utf-8")
