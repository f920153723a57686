"""Ids on the command line: a full id, or an unambiguous prefix of one as shown in listings.

Every command that takes the id of a request, grant, session, agent, endpoint, window or
recording resolves it here, so the rules are the same everywhere: a full UUID is used as it
is; anything shorter is matched (case-insensitively) against the ids the caller can list, and
must match exactly one. No match and several matches are refused with one line that says so
(and, for several, names the candidates), before anything is changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from broker.runtime.errors import BrokerError

FULL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")
MAX_SHOWN = 5


def check_prefix(kind: str, given: str) -> str:
    """``given`` if it can be an id (prefix); :class:`BrokerError` ``bad_id`` otherwise."""
    if not _PREFIX.match(given):
        raise BrokerError(f"{given!r} is not a {kind} id (or id prefix)", code="bad_id")
    return given


def _no_match(kind: str, given: str, listing: str) -> str:
    return f"no {kind} with an id starting with {given!r}: see {listing}"


def missing(kind: str, given: str, listing: str) -> str | None:
    """For ``call(not_found=...)``: the message for a prefix that names nothing (``no grant
    with an id starting with 'x': see ...``); None for a full id, whose "not found" the broker
    words better ("no live session ...")."""
    return None if FULL_ID.match(given.lower()) else _no_match(kind, given, listing)


def pick(kind: str, given: str, candidates: Iterable[tuple[str, str]], listing: str) -> str:
    """The one candidate id starting with ``given``; ``candidates`` are ``(id, label)`` pairs.

    ``listing`` says where the ids are shown, e.g. ``"`conduit grants`"`` (for the messages).
    Raises :class:`BrokerError` ``not_found`` (no match) or ``ambiguous_id`` (several, listed).
    """
    check_prefix(kind, given)
    wanted = given.lower()
    found: dict[str, str] = {}
    for cid, label in candidates:
        if cid.lower() == wanted:
            return cid
        if cid.lower().startswith(wanted):
            found[cid] = label
    if not found:
        raise BrokerError(_no_match(kind, given, listing), code="not_found")
    if len(found) > 1:
        shown = ", ".join(
            f"{cid} ({label})" if label else cid for cid, label in list(found.items())[:MAX_SHOWN]
        )
        more = f" and {len(found) - MAX_SHOWN} more" if len(found) > MAX_SHOWN else ""
        raise BrokerError(
            f"{given!r} is ambiguous: {len(found)} {kind}s start with it: {shown}{more}; "
            "give more of the id",
            code="ambiguous_id",
        )
    return next(iter(found))


def resolve(
    kind: str,
    given: str,
    path: str,
    listing: str,
    *,
    key: str | None = None,
    label: Any = None,
    params: dict[str, str] | None = None,
) -> str:
    """Resolve ``given`` against the broker's listing at ``path`` (``GET``, JSON).

    The answer is a list of objects with an ``id`` (or the list under ``key``); ``label``
    turns one into the few words shown for an ambiguous prefix. A full UUID is returned as
    it is, without asking the broker (which then says whether it exists). So is a prefix that
    matches nothing the caller can list: the broker's answer (a role refusal, "not found")
    says more than "no match" would; callers pass ``missing(...)`` as ``call``'s ``not_found``
    so that a 404 still names what was typed.
    """
    from broker.cli.api_client import call

    if FULL_ID.match(given.lower()):
        return given.lower()
    check_prefix(kind, given)
    answer = call("GET", path, params=params)
    rows = answer[key] if key is not None else answer
    try:
        return pick(
            kind,
            given,
            ((str(r["id"]), label(r) if label else "") for r in rows if isinstance(r, dict)),
            f"`{listing}`",
        )
    except BrokerError as exc:
        if exc.code != "not_found":
            raise
        return given
