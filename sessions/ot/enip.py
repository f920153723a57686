"""EtherNet/IP + CIP inspection (port 44818): enforces ``obligations.protocols.enip``.

Obligations block (built by the policy bundle from the operation class; docs/policy.md "OT
operation table")::

    {"allow": ["read_tag", "read_attribute", ...]}     # operation names, below

===============  ===========  ===========================================================
name             class        CIP service
===============  ===========  ===========================================================
read_tag         read         0x4C Read Tag, 0x52 Read Tag Fragmented (not to class 0x06)
read_attribute   read         0x01 Get Attributes All, 0x03 Get Attribute List,
                              0x0E Get Attribute Single, 0x55 Get Instance Attribute List
write_tag        write        0x4D Write Tag, 0x53 Write Tag Fragmented,
                              0x4E Read-Modify-Write Tag (not to class 0x06)
write_attribute  engineering  0x02 Set Attributes All, 0x04 Set Attribute List,
                              0x10 Set Attribute Single
reset            dangerous    0x05 Reset
start            dangerous    0x06 Start
stop             dangerous    0x07 Stop
unknown          dangerous    any other service
===============  ===========  ===========================================================

Session registration, List Identity/Services/Interfaces, NOP and the Connection Manager's
Forward Open/Close always pass (they set up, they do nothing to the controller). An
Unconnected Send is judged by the request it carries; a Multiple Service Packet passes only
if every request in it is allowed. Other encapsulation commands are answered with status
0x0001 (unsupported command) and never reach the device. No obligations at all: the
read-only default; obligations without an enip block: set-up only (deny by default).

Refused requests are answered by the broker with a CIP reply carrying general status 0x0F
(privilege violation) in the same encapsulation command, session and sender context. A
malformed frame (either direction) closes the connection; its bytes are recorded, never
forwarded.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from policies.decision import Obligations
from sessions.clock import Clock
from sessions.errors import ValidationError
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
from sessions.ot.enip_wire import (
    CONNECTION_MANAGER,
    FORWARD_CLOSE,
    FORWARD_OPEN,
    LARGE_FORWARD_OPEN,
    MULTIPLE_SERVICE,
    PASS_COMMANDS,
    SEND_RR,
    SEND_UNIT,
    UNCONNECTED_SEND,
    Cip,
    Encap,
    EncapFramer,
    EnipProtocolError,
    multiple_service,
    parse_cip,
    parse_message,
    refusal,
    unconnected_send,
    unsupported,
)
from sessions.ot.framed import FramedInspector
from sessions.ot.pacing import Queued, TokenBucket
from sessions.ot.settings import fail, unknown_keys
from sessions.ot.wording import compact_json, operation_names, refused

OPERATIONS: Mapping[str, str] = {
    "read_tag": OpClass.READ,
    "read_attribute": OpClass.READ,
    "write_tag": OpClass.WRITE,
    "write_attribute": OpClass.ENGINEERING,
    "reset": OpClass.DANGEROUS,
    "start": OpClass.DANGEROUS,
    "stop": OpClass.DANGEROUS,
    "unknown": OpClass.DANGEROUS,
}
READ_ONLY = frozenset(op for op, cls in OPERATIONS.items() if cls == OpClass.READ)
_SERVICES = {0x4C: "read_tag", 0x52: "read_tag", 0x01: "read_attribute", 0x03: "read_attribute",
             0x0E: "read_attribute", 0x55: "read_attribute", 0x4D: "write_tag", 0x53: "write_tag",
             0x4E: "write_tag", 0x02: "write_attribute", 0x04: "write_attribute",
             0x10: "write_attribute", 0x05: "reset", 0x06: "start", 0x07: "stop"}  # fmt: skip
_RANK = (OpClass.READ, OpClass.WRITE, OpClass.ENGINEERING, OpClass.DANGEROUS)
_SETUP = frozenset({FORWARD_OPEN, LARGE_FORWARD_OPEN, FORWARD_CLOSE})


def operation_of(cip: Cip) -> str:
    """The operation name of one CIP request (see the module table)."""
    if cip.cls == CONNECTION_MANAGER:
        return "unknown"  # set-up is handled before; anything else to it is not understood
    return _SERVICES.get(cip.service, "unknown")


def requests_in(cip: Cip) -> list[Cip] | None:
    """The requests a message asks for; None for connection set-up (always passes)."""
    if cip.cls == CONNECTION_MANAGER and cip.service in _SETUP:
        return None
    if cip.cls == CONNECTION_MANAGER and cip.service == UNCONNECTED_SEND:
        inner = parse_cip(unconnected_send(cip.data))
        return (
            [inner] if not (inner.cls == CONNECTION_MANAGER and inner.service in _SETUP) else None
        )
    if cip.service == MULTIPLE_SERVICE:
        return [parse_cip(part) for part in multiple_service(cip.data)]
    return [cip]


class EnipInspector(FramedInspector[Encap]):
    """Enforces EtherNet/IP obligations on one client connection (see the module docstring)."""

    protocol, label = "enip", "EtherNet/IP"

    def __init__(self, obligations: Obligations | None, clock: Clock, *,
                 limiter: TokenBucket | None = None, max_queued: int = 64) -> None:  # fmt: skip
        super().__init__(
            clock, EncapFramer(), EncapFramer(), limiter=limiter, max_queued=max_queued
        )
        self._allowed = enip_obligations(obligations)
        self._t_o: dict[int, int] = {}  # connected O->T id -> T->O id (from Forward Open)

    # -- client side ----------------------------------------------------------------------

    def _client_frame(self, now: datetime, frame: Encap) -> tuple[bytes, bytes, Record | None]:
        if frame.command in PASS_COMMANDS:
            return frame.raw, b"", None
        if frame.command not in (SEND_RR, SEND_UNIT):
            op = Operation(iso(now), "enip", frame.command, "unknown", OpClass.DANGEROUS,
                           reason=f"encapsulation command 0x{frame.command:04X} not relayed",
                           result="refused")  # fmt: skip
            return b"", self._flow.refuse(unsupported(frame)), op.as_record(session=frame.session)
        message = parse_message(frame.data)
        cip = parse_cip(message.cip)
        requests = requests_in(cip)
        if requests is None:
            return frame.raw, b"", None
        names = [operation_of(r) for r in requests]
        service = requests[0].service if len(requests) == 1 else cip.service
        written = [r.data.hex() for r, n in zip(requests, names, strict=True) if n != "read_tag"
                   and OPERATIONS[n] != OpClass.READ]  # fmt: skip
        addresses = [r.tag or r.path for r in requests]
        op = Operation(iso(now), "enip", service, ",".join(names),
                       max((OPERATIONS[n] for n in names), key=_RANK.index),
                       addresses=addresses, values=written or None)  # fmt: skip
        record = op.as_record(session=frame.session, status=None)
        key = ("rr", frame.context) if frame.command == SEND_RR else ("unit", message.sequence)
        refused = sorted({n for n in names if n not in self._allowed})
        why = f"EtherNet/IP {', '.join(refused)} not allowed" if refused else None
        if why is None and self._flow.queue.full:
            why = "request queue full"
        if why is None:
            record.update(allowed=True, reason=f"{op.function_name} allowed")
            self._flow.push(Queued(frame.raw, key, record))
            return b"", b"", None
        record.update(reason=why, result="refused")
        t_o = None if message.connection is None else self._t_o.get(message.connection)
        return b"", self._flow.refuse(refusal(frame, message, service, t_o)), record

    # -- server side ----------------------------------------------------------------------

    def _server_frame(self, now: datetime, frame: Encap) -> Record | None:
        if frame.command not in (SEND_RR, SEND_UNIT):
            return None
        message = parse_message(frame.data)
        reply = message.cip
        if len(reply) < 4 or not reply[0] & 0x80 or len(reply) < 4 + 2 * reply[3]:
            raise EnipProtocolError("CIP reply header malformed")
        status = reply[2]
        if (
            reply[0] & 0x7F in (FORWARD_OPEN, LARGE_FORWARD_OPEN)
            and status == 0
            and len(reply) >= 12
        ):
            o_t, t_o = struct.unpack_from("<II", reply, 4)
            self._t_o[o_t] = t_o
        key = ("rr", frame.context) if frame.command == SEND_RR else ("unit", message.sequence)
        record = self._flow.answered(key)
        if record is not None:
            record.update(
                answered_at=iso(now), status=status, result="ok" if status == 0 else "error"
            )
        return record


def enip_obligations(obligations: Obligations | None) -> frozenset[str]:
    """Allowed operation names; raises ObligationsError if the enip block is malformed."""
    if obligations is None:
        return READ_ONLY
    block = protocol_block(obligations, "enip")
    if block is None:
        return frozenset()
    return _parse_block(block)


def _parse_block(block: Mapping[str, Any]) -> frozenset[str]:
    where = "obligations.protocols.enip"
    try:
        unknown_keys(block, {"allow"}, where, "key(s)")
        allow = block.get("allow", [])
        if not isinstance(allow, list) or not set(allow) <= set(OPERATIONS):
            raise fail(f"{where}.allow", f"must be a list of {', '.join(OPERATIONS)}")
    except ValidationError as exc:
        raise ObligationsError(str(exc)) from None
    return frozenset(allow)


def validate_enip_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """EtherNet/IP endpoints take no settings (the operation class decides)."""
    unknown_keys(settings, set(), where, "enip setting(s)")
    return {}


def _build(
    obligations: Obligations | None, clock: Clock, limiter: TokenBucket | None
) -> EnipInspector:
    return EnipInspector(obligations, clock, limiter=limiter)


def describe_enip_obligations(obligations: Mapping[str, Any]) -> str | None:
    """``operations read tag, read attribute``; None without a block; a block the inspector
    would refuse reads as such."""
    block = shown_block(obligations, "enip")
    if block is None:
        return None
    if not isinstance(block, Mapping):
        return refused(f"obligations.protocols.enip must be an object, not {compact_json(block)}")
    try:
        _parse_block(block)
    except ObligationsError as exc:
        return refused(str(exc))
    allow = block.get("allow") or []
    return f"operations {operation_names(allow)}" if allow else "no operations allowed"


def describe_enip_settings(settings: Mapping[str, Any]) -> str:
    """EtherNet/IP endpoints take no settings: the operation class alone decides."""
    return "no settings (the operation class decides)"


PLUGIN = ProtocolPlugin(
    "enip", 44818, _build, validate_enip_settings, "EtherNet/IP",
    describe_enip_obligations, describe_enip_settings,
)  # fmt: skip
