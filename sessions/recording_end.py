"""A recording's clean end, as the audit log records it, and the check against it.

Without a manifest a recording verifies as INCOMPLETE: that is what a broker crash leaves, and
it is also what someone leaves who removed the manifest, the last chunks and their chain lines.
The audit log tells the two apart: when a recording is closed cleanly the broker appends a
``recording.closed`` event (subject ``recording:<id>``) carrying the chunk count, size and
final chain hash that the signed manifest holds. :func:`check_end` turns a recording that the
log shows as ended cleanly but which lacks that end (or ends differently) into BROKEN.

The event is only as good as the audit chain: deleting it breaks the chain, and deleting it
together with everything after it is caught by the signed checkpoints (``conduit audit verify
--checkpoints``).

The session's end binds its recordings too: ``session.ended`` lists each recording of the
session with its final chain hash (or ``incomplete`` and why); :func:`check_session_end` makes
a recording whose end differs from that hash BROKEN, naming the event.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sessions.recording import VerifyResult, VerifyStatus, genesis
from sessions.session_end import INCOMPLETE

RECORDING_CLOSED = "recording.closed"


def subject(recording_id: str) -> str:
    """The audit subject of a recording's events."""
    return f"recording:{recording_id}"


@dataclass(frozen=True)
class AuditedEnd:
    """A ``recording.closed`` event: the end the broker recorded in the audit log."""

    seq: int
    chunks: int
    size: int
    final_chain: str

    @classmethod
    def from_event(cls, seq: int, details: Mapping[str, Any]) -> AuditedEnd | None:
        """From an event's details; None if they are not a well-formed end."""
        chunks, size, final = details.get("chunks"), details.get("size"), details.get("final_chain")
        if not (isinstance(chunks, int) and isinstance(size, int) and isinstance(final, str)):
            return None
        return cls(seq, chunks, size, final)


def closed_details(
    *,
    session_id: str,
    recording_id: str,
    kind: str,
    chunks: int,
    size: int,
    final_chain: str,
    end_reason: str,
) -> dict[str, Any]:
    """The details of the ``recording.closed`` event for a cleanly closed writer."""
    return {
        "session": session_id,
        "recording": recording_id,
        "kind": kind,
        "chunks": chunks,
        "size": size,
        "final_chain": final_chain,
        "end_reason": end_reason[:200],
    }


def check_end(result: VerifyResult, ends: Iterable[AuditedEnd], *, source: str) -> VerifyResult:
    """``result`` (of :func:`sessions.recording.verify_recording`) checked against the ends the
    audit log (``source``, for the messages) records for the same recording.

    No recorded end: unchanged, with a note. A recorded end and a recording that is INCOMPLETE
    or ends elsewhere: BROKEN (truncated or replaced). A BROKEN result stays as it is.
    """
    recorded = list(ends)
    if result.status == VerifyStatus.BROKEN:
        return result
    if not recorded:
        why = (
            "the broker stopped, or it is still being written"
            if result.status == VerifyStatus.INCOMPLETE
            else "it predates these events, or the event is gone"
        )
        note = f"{source} records no clean end of this recording ({why})"
        return dataclasses.replace(result, notes=(*result.notes, note))
    end = recorded[0]
    for other in recorded[1:]:
        if dataclasses.replace(other, seq=end.seq) != end:
            why = f"{source} records two different ends (events {end.seq} and {other.seq})"
            return _broken(result, why)
    said = (
        f"{source} (event {end.seq}) records a clean end with {end.chunks} chunks, "
        f"{end.size} bytes, final chain {end.final_chain[:16]}…"
    )
    if result.status == VerifyStatus.INCOMPLETE:
        return _broken(
            result,
            f"truncated: {said}; the recording has {result.chunks} verified chunks and no manifest",
        )
    head = result.head or genesis(result.recording_id or "")
    if (result.chunks, result.size, head) != (end.chunks, end.size, end.final_chain):
        return _broken(
            result, f"{said}; the recording has {result.chunks} chunks, {result.size} bytes"
        )
    return dataclasses.replace(
        result,
        notes=(
            *result.notes,
            f"{source}: the clean end recorded in event {end.seq} matches",
        ),
    )


def _broken(result: VerifyResult, reason: str) -> VerifyResult:
    return dataclasses.replace(result, status=VerifyStatus.BROKEN, reason=reason)


# ---- the session's end: session.ended names each recording's final chain hash --------------

_RECORDING_ID = re.compile(r"^(?P<session>.+)-(?:\d+|tcp\d+(?:-ops)?)$")


def session_of(recording_id: str) -> str | None:
    """The session id a recording id (``<session>-<channel>``, ``<session>-tcp<n>[-ops]``)
    belongs to; None if it is not one of those forms."""
    match = _RECORDING_ID.match(recording_id)
    return match.group("session") if match else None


@dataclass(frozen=True)
class SessionBinding:
    """What a ``session.ended`` event records about one recording of the session."""

    seq: int
    session_id: str
    final_chain: str  # the chain hash, or "incomplete"
    why: str | None = None

    @classmethod
    def from_event(
        cls, seq: int, subject: str | None, details: Mapping[str, Any], recording_ids: set[str]
    ) -> SessionBinding | None:
        """The entry for one of ``recording_ids`` in a ``session.ended`` event, or None."""
        entries = details.get("recordings")
        if not isinstance(entries, list):
            return None
        session_id = (subject or "").removeprefix("session:")
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") in recording_ids:
                final, why = entry.get("final_chain"), entry.get("why")
                if isinstance(final, str):
                    return cls(seq, session_id, final, why if isinstance(why, str) else None)
        return None


def check_session_end(
    result: VerifyResult, bindings: Iterable[SessionBinding], *, source: str
) -> VerifyResult:
    """``result`` checked against what ``session.ended`` (in ``source``) records for the same
    recording: a recording whose verified end is not the final chain hash the event names is
    BROKEN, and the message names the event. No event: unchanged, with a note (the session
    is still live, or it predates these events)."""
    found = list(bindings)
    if not found:
        note = f"{source}: no session.ended event names this recording (live, or older)"
        return dataclasses.replace(result, notes=(*result.notes, note))
    bound = found[0]
    event = f"session.ended (event {bound.seq}, session {bound.session_id})"
    if bound.final_chain == INCOMPLETE:
        note = f"{source}: {event} records it as incomplete ({bound.why or 'no reason given'})"
        return dataclasses.replace(result, notes=(*result.notes, note))
    head = result.head or genesis(result.recording_id or "")
    said = f"{event} in {source} records final chain {bound.final_chain[:16]}…"
    if result.status == VerifyStatus.BROKEN:
        return _broken(result, f"{result.reason}; {said}")
    if result.status == VerifyStatus.INCOMPLETE or head != bound.final_chain:
        return _broken(
            result,
            f"final chain hash does not match the session's end: {said}, "
            f"the recording ends at {head[:16]}…"
            + (" without a manifest" if result.status == VerifyStatus.INCOMPLETE else ""),
        )
    note = f"{source}: the final chain hash matches {event}"
    return dataclasses.replace(result, notes=(*result.notes, note))
