"""Obligations for people: one renderer used by every page that shows them.

A grant's stored obligations (``Grant.obligations``) and a decision's
(``Obligations.as_dict()``) are the same JSON object (docs/policy.md). :func:`obligation_rows`
turns one into ``(label, text)`` rows in a fixed order; templates show them with the
``obligations_table`` macro (``view_macros.html``) through the ``obligation_rows`` Jinja
filter. A protocol's row is its plug-in's (:mod:`sessions.ot.registry`): the plug-in's
``title`` as the label and its ``describe_obligations`` line as the text, so this module
holds no protocol names and a new protocol reads as words without code here. Never Python
reprs: booleans become words; unknown keys, and blocks under ``protocols`` no plug-in
describes, are shown as compact JSON under their own name. Input that is not a mapping
yields no rows (there is nothing to promise about it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sessions.ot.registry import registered

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
    "rate_limit_rps",
    "protocols",
)


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
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def obligation_rows(
    obligations: Any, protocols: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """``(label, text)`` rows for an obligations object; unset (None) values are left out.

    ``protocols``: what the grant reaches (``AccessRequest.protocols``); when given, a
    protocol's row (and the rate limit) is shown only if it includes that protocol, since
    nothing else enforces it. None (unknown, e.g. the what-if simulator) shows every row.
    """
    if not isinstance(obligations, Mapping):
        return []
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
    reached = None if protocols is None else set(protocols)
    rows += _protocol_rows(o, reached)
    plugins = registered()
    known = set(_KNOWN).union(*(p.obligation_keys for p in plugins.values()))
    for key in sorted(set(o) - known):
        if o[key] is not None:
            rows.append((_label(key), _json(o[key])))
    return rows


def _protocol_rows(o: Mapping[str, Any], reached: set[str] | None) -> list[tuple[str, str]]:
    """One row per reached protocol: a plug-in's own words, else its block as compact JSON;
    the rate limit when no shown row already states it."""
    plugins = registered()
    rows: list[tuple[str, str]] = []
    stated: set[str] = set()
    for name, plugin in plugins.items():
        text = plugin.describe_obligations(o) if reached is None or name in reached else None
        if text is not None:
            rows.append((plugin.title, text))
            stated |= plugin.obligation_keys
    inspected = reached is None or bool(reached & set(plugins))
    rate = o.get("rate_limit_rps")
    if rate is not None and inspected and "rate_limit_rps" not in stated:
        rows.append(("Rate limit", f"{_rate(rate)} requests/s"))
    raw_blocks = o.get("protocols")
    blocks: Mapping[str, Any] = raw_blocks if isinstance(raw_blocks, Mapping) else {}
    for name in sorted(set(blocks) - set(plugins), key=str):
        if blocks[name] is not None and (reached is None or name in reached):
            rows.append((str(name), _json(blocks[name])))
    return rows


def obligations_text(obligations: Any, protocols: Iterable[str] | None = None) -> str:
    """The rows on one line each (``Label: text``), for the CLI."""
    rows = obligation_rows(obligations, protocols)
    return "\n".join(f"{label}: {text}" for label, text in rows)
