"""S7comm inspection (ISO-on-TCP, port 102): enforces ``obligations.protocols.s7``.

Obligations block (built by the policy bundle from the operation class and the endpoint's
settings; docs/policy.md "OT operation table")::

    {"allow": ["read_var", "szl_read", ...],            # operation names, below
     "write_ranges": [{"area": "DB", "db": 1, "first": 0, "last": 15}, ...]}

``db`` null (obligations only) matches any DB. Operations, by what the request does:

========================  ===========  ==================================================
name                      class        S7 request
========================  ===========  ==================================================
read_var                  read         job 0x04 Read Var
szl_read                  read         userdata CPU functions, Read SZL
block_info                read         userdata block functions (list, info)
read_clock                read         userdata time functions, read clock
cyclic_read               read         userdata cyclic data (subscriptions)
write_var                 write        job 0x05 Write Var; every item inside write_ranges
upload                    engineering  job 0x1D-0x1F block upload
download                  engineering  job 0x1A request download (the PLC then pulls blocks)
plc_control               engineering  job 0x28 PI service other than P_PROGRAM (_INSE, ...)
plc_start                 dangerous    job 0x28 PI service P_PROGRAM (hot/cold start)
plc_stop                  dangerous    job 0x29
set_clock                 dangerous    userdata time functions other than read
password                  dangerous    userdata security (session password)
programmer                dangerous    userdata programmer commands (force, modify)
unknown                   dangerous    any other job function or userdata group
========================  ===========  ==================================================

Setup Communication (0xF0) and the COTP connection set-up always pass: they negotiate, they
do nothing to the controller. No obligations at all: the read-only default (the read
operations). Obligations without an s7 block: nothing but set-up (deny by default).

Refusals never reach the PLC: a job is answered with an Ack-Data carrying header error 0x8703
(access to object refused), a userdata request with a userdata response carrying that error.
A malformed frame (either direction) closes the connection; its bytes are recorded, never
forwarded. Client frames must start with a COTP connection request; ack-data from the client
passes only as the answer to a block-download job the PLC sent (same PDU reference).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from policies.decision import Obligations
from sessions.clock import Clock
from sessions.errors import ValidationError
from sessions.models import OperationClass
from sessions.ot.base import (
    ObligationsError,
    OpClass,
    Operation,
    ProtocolPlugin,
    Record,
    iso,
    protocol_block,
    shown_block,
)
from sessions.ot.framed import FramedInspector
from sessions.ot.pacing import Queued, TokenBucket
from sessions.ot.s7_wire import (
    ACK,
    ACK_DATA,
    AREA_CODES,
    AREAS,
    CR,
    DC,
    DOWNLOAD_BLOCK,
    DOWNLOAD_ENDED,
    DR,
    DT,
    JOB,
    PLC_CONTROL,
    PLC_STOP,
    READ_VAR,
    REQUEST_DOWNLOAD,
    SETUP,
    USERDATA,
    WRITE_VAR,
    S7Pdu,
    S7ProtocolError,
    Tpkt,
    TpktFramer,
    job_refusal,
    parse_pdu,
    userdata_refusal,
)
from sessions.ot.settings import fail, integer, operation_class, unknown_keys
from sessions.ot.wording import compact_json, operation_names, refused, span

OPERATIONS: Mapping[str, str] = {
    "read_var": OpClass.READ,
    "szl_read": OpClass.READ,
    "block_info": OpClass.READ,
    "read_clock": OpClass.READ,
    "cyclic_read": OpClass.READ,
    "write_var": OpClass.WRITE,
    "upload": OpClass.ENGINEERING,
    "download": OpClass.ENGINEERING,
    "plc_control": OpClass.ENGINEERING,
    "plc_start": OpClass.DANGEROUS,
    "plc_stop": OpClass.DANGEROUS,
    "set_clock": OpClass.DANGEROUS,
    "password": OpClass.DANGEROUS,
    "programmer": OpClass.DANGEROUS,
    "unknown": OpClass.DANGEROUS,
}
READ_ONLY = frozenset(op for op, cls in OPERATIONS.items() if cls == OpClass.READ)
_JOBS = {READ_VAR: "read_var", WRITE_VAR: "write_var", REQUEST_DOWNLOAD: "download",
         0x1D: "upload", 0x1E: "upload", 0x1F: "upload", PLC_STOP: "plc_stop"}  # fmt: skip
_GROUPS = {1: "programmer", 2: "cyclic_read", 3: "block_info", 5: "password"}


@dataclass(frozen=True, slots=True)
class S7Range:
    """Bytes ``first``..``last`` of one area (and DB number; None: any DB) that may be written."""

    area: str
    db: int | None
    first: int
    last: int


def operation_of(pdu: S7Pdu) -> str:
    """The operation name of a client request (see the module table)."""
    if pdu.rosctr == JOB:
        fn = pdu.params[0]
        if fn == PLC_CONTROL:
            return "plc_start" if b"P_PROGRAM" in pdu.params else "plc_control"
        return _JOBS.get(fn, "unknown")
    kind, group, sub = pdu.params[5] >> 4, pdu.params[5] & 0x0F, pdu.params[6]
    if kind not in (0x0, 0x4):
        return "unknown"
    if group == 4:
        return "szl_read" if sub == 1 else "unknown"
    if group == 7:
        return "read_clock" if sub in (1, 3) else "set_clock"
    return _GROUPS.get(group, "unknown")


class S7Inspector(FramedInspector[Tpkt]):
    """Enforces S7 obligations on one client connection (see the module docstring)."""

    protocol, label = "s7", "S7"

    def __init__(self, obligations: Obligations | None, clock: Clock, *,
                 limiter: TokenBucket | None = None, max_queued: int = 64) -> None:  # fmt: skip
        super().__init__(clock, TpktFramer(), TpktFramer(), limiter=limiter, max_queued=max_queued)
        self._allowed, self._ranges = s7_obligations(obligations)
        self._fragments: list[Tpkt] = []
        self._server_jobs: set[int] = set()
        self._connected = False

    def _held_request(self) -> bytes:
        held, self._fragments = b"".join(f.raw for f in self._fragments), []
        return held

    # -- client side ----------------------------------------------------------------------

    def _client_frame(self, now: datetime, frame: Tpkt) -> tuple[bytes, bytes, Record | None]:
        if frame.cotp_type == CR and not self._connected:
            self._connected = True
            return frame.raw, b"", None
        if frame.cotp_type in (DR, DC) and self._connected:  # disconnect: passes as it is
            return frame.raw, b"", None
        if frame.cotp_type != DT or not self._connected:
            raise S7ProtocolError(
                f"COTP TPDU 0x{frame.cotp_type:02X} not allowed from the client here"
            )
        self._fragments.append(frame)
        if not frame.eot:
            if len(self._fragments) > 64:
                raise S7ProtocolError("S7 PDU fragmented over more than 64 COTP frames")
            return b"", b"", None
        fragments, self._fragments = self._fragments, []
        wire = b"".join(f.raw for f in fragments)
        pdu = parse_pdu(b"".join(f.payload for f in fragments))
        if pdu.rosctr in (ACK, ACK_DATA):
            if pdu.ref not in self._server_jobs:
                raise S7ProtocolError(
                    f"S7 ack from the client for PDU {pdu.ref} the PLC never sent"
                )
            self._server_jobs.discard(pdu.ref)
            return wire, b"", None
        if pdu.rosctr == JOB and pdu.params[0] == SETUP:
            return wire, b"", None
        return self._judge(pdu, wire)

    def _judge(self, pdu: S7Pdu, wire: bytes) -> tuple[bytes, bytes, Record | None]:
        now = self._clock.now()
        name = operation_of(pdu)
        op = Operation(iso(now), "s7", pdu.function, name, OPERATIONS[name],
                       addresses=[i.describe() for i in pdu.items] or None,
                       values=[v.hex() for v in pdu.values] or None)  # fmt: skip
        refusal = self._check(name, pdu)
        if refusal is None and self._flow.queue.full:
            refusal = "request queue full"
        record = op.as_record(pdu_ref=pdu.ref, error=None)
        if refusal is None:
            record.update(allowed=True, reason=f"{name} allowed")
            self._flow.push(Queued(wire, pdu.ref, record))
            return b"", b"", None
        record.update(reason=refusal, result="refused")
        reply = job_refusal(pdu) if pdu.rosctr == JOB else userdata_refusal(pdu)
        return b"", self._flow.refuse(reply), record

    def _check(self, name: str, pdu: S7Pdu) -> str | None:
        if name not in self._allowed:
            return f"S7 {name} not allowed"
        if name != "write_var":
            return None
        for item in pdu.items:
            area = AREAS.get(item.area)
            first, last = item.first_byte, item.first_byte + item.length - 1
            if area is None or not any(
                r.area == area
                and (r.db is None or area != "DB" or r.db == item.db)
                and r.first <= first
                and last <= r.last
                for r in self._ranges
            ):
                listed = ", ".join(_describe(r) for r in self._ranges) or "none"
                return f"S7 write to {item.describe()} outside the write ranges ({listed})"
        return None

    # -- server side ----------------------------------------------------------------------

    def _server_frame(self, now: datetime, frame: Tpkt) -> Record | None:
        if frame.cotp_type != DT or not frame.eot:
            return None  # connection confirm, disconnect, fragments: passed as they are
        pdu = parse_pdu(frame.payload)
        if pdu.rosctr == JOB and pdu.params[0] in (DOWNLOAD_BLOCK, DOWNLOAD_ENDED):
            self._server_jobs.add(pdu.ref)  # the PLC pulls a block the client may answer
            return None
        record = self._flow.answered(pdu.ref)
        if record is None:
            return None
        error = pdu.error
        if pdu.rosctr == USERDATA and len(pdu.params) >= 12:
            error = struct.unpack_from(">H", pdu.params, 10)[0]
        record.update(answered_at=iso(now), error=error or None,
                      result="ok" if not error else "error")  # fmt: skip
        return record


def _describe(r: S7Range) -> str:
    where = f"DB{r.db} " if r.area == "DB" and r.db is not None else f"{r.area} "
    return f"{where}{r.first}\u2013{r.last}"


# ---- obligations and settings ---------------------------------------------------------------


def _range(raw: Any, where: str, *, any_db: bool) -> S7Range:
    if not isinstance(raw, Mapping):
        raise fail(where, "must be an object {area, db, first, last}")
    unknown_keys(raw, {"area", "db", "first", "last"}, where, "field(s)")
    area = raw.get("area")
    if area not in AREA_CODES:
        raise fail(f"{where}.area", f"must be one of {', '.join(AREA_CODES)}, got {area!r}")
    db = raw.get("db")
    if area == "DB" and not (db is None and any_db):
        db = integer(db, f"{where}.db", 1, 65535)
    elif area != "DB" and db is not None:
        raise fail(f"{where}.db", f"only the DB area has a DB number, not {area}")
    first = integer(raw.get("first"), f"{where}.first", 0, 65535)
    last = integer(raw.get("last"), f"{where}.last", 0, 65535)
    if last < first:
        raise fail(where, f"range {first}-{last} is inverted (last before first)")
    return S7Range(area, db, first, last)


def s7_obligations(obligations: Obligations | None) -> tuple[frozenset[str], tuple[S7Range, ...]]:
    """Allowed operation names and write ranges; raises ObligationsError if the block is bad."""
    if obligations is None:
        return READ_ONLY, ()
    block = protocol_block(obligations, "s7")
    if block is None:
        return frozenset(), ()
    return _parse_block(block)


def _parse_block(block: Mapping[str, Any]) -> tuple[frozenset[str], tuple[S7Range, ...]]:
    where = "obligations.protocols.s7"
    try:
        unknown_keys(block, {"allow", "write_ranges"}, where, "key(s)")
        allow = block.get("allow", [])
        if not isinstance(allow, list) or not set(allow) <= set(OPERATIONS):
            raise fail(f"{where}.allow", f"must be a list of {', '.join(OPERATIONS)}")
        ranges = block.get("write_ranges", [])
        if not isinstance(ranges, list):
            raise fail(f"{where}.write_ranges", "must be a list of ranges")
        parsed = tuple(
            _range(r, f"{where}.write_ranges[{i}]", any_db=True) for i, r in enumerate(ranges)
        )
    except ValidationError as exc:  # the policy's block, not the plant's settings
        raise ObligationsError(str(exc)) from None
    return frozenset(allow), parsed


def validate_s7_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"write_ranges": {class: [{area, db, first, last}]}}``; db required for the DB area."""
    unknown_keys(settings, {"write_ranges"}, where, "s7 setting(s)")
    raw = settings.get("write_ranges", {})
    if not isinstance(raw, Mapping):
        raise fail(f"{where}.write_ranges", "must be an object of operation class -> ranges")
    out: dict[str, list[dict[str, Any]]] = {}
    for op, items in raw.items():
        here = f"{where}.write_ranges.{operation_class(op, f'{where}.write_ranges')}"
        if not isinstance(items, list):
            raise fail(here, "must be a list of ranges")
        parsed = [_range(item, f"{here}[{i}]", any_db=False) for i, item in enumerate(items)]
        out[op] = [{"area": r.area, "db": r.db, "first": r.first, "last": r.last} for r in parsed]
    return {"write_ranges": out} if out else {}


def _build(
    obligations: Obligations | None, clock: Clock, limiter: TokenBucket | None
) -> S7Inspector:
    return S7Inspector(obligations, clock, limiter=limiter)


# ---- for people (the plug-in's describers) -----------------------------------------------


def _range_words(r: Mapping[str, Any]) -> str:
    area, db = str(r.get("area") or "any area"), r.get("db")
    where = (f"DB{db}" if db is not None else "any DB") if area == "DB" else area
    return f"{where} bytes {span(r.get('first'), r.get('last'))}"


def describe_s7_obligations(obligations: Mapping[str, Any]) -> str | None:
    """``operations read var, write var; writes to DB1 bytes 0-15``; None without a block;
    a block the inspector would refuse reads as such."""
    block = shown_block(obligations, "s7")
    if block is None:
        return None
    if not isinstance(block, Mapping):
        return refused(f"obligations.protocols.s7 must be an object, not {compact_json(block)}")
    try:
        _parse_block(block)
    except ObligationsError as exc:
        return refused(str(exc))
    allow = block.get("allow") or []
    parts = [f"operations {operation_names(allow)}" if allow else "no operations allowed"]
    ranges = block.get("write_ranges") or []
    if ranges:
        parts.append("writes to " + "; ".join(_range_words(r) for r in ranges))
    return "; ".join(parts)


def describe_s7_settings(settings: Mapping[str, Any]) -> str:
    """``tune may write DB1 bytes 0-15``, per operation class (settings as validated)."""
    ranges = settings.get("write_ranges")
    ranges = ranges if isinstance(ranges, Mapping) else {}
    parts = [
        f"{op} may write "
        + ", ".join(_range_words(r) for r in ranges[op] if isinstance(r, Mapping))
        for op in OperationClass.ALL
        if isinstance(ranges.get(op), list) and ranges[op]
    ]
    return "; ".join(parts) or "no writes"


PLUGIN = ProtocolPlugin(
    "s7", 102, _build, validate_s7_settings, "S7", describe_s7_obligations, describe_s7_settings
)
