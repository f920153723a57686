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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sessions.recording import VerifyResult, VerifyStatus, genesis

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
