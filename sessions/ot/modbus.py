"""Modbus/TCP inspection: policy enforcement (sans-IO; framing and decoding: modbus_wire).

The relay hands every byte to a :class:`ModbusInspector` and writes back only what it returns;
no I/O here, time from the injected :class:`Clock` (driving it, OT-safe drain: :mod:`.base`).

Obligations (``obligations.protocols.modbus``, else the legacy ``obligations.modbus``;
docs/policy.md "OT operation table")::

    modbus.allow_function_codes: tuple[int, ...]      # e.g. (1, 2, 3, 4, 7, 11, ...)
    modbus.write_ranges: tuple[WriteRange, ...]       # (table, first, last, unit_ids | None)
    modbus.unit_ids: tuple[int, ...] | None           # unit ids that may be addressed; None: any
    rate_limit_rps: float | None                      # requests/s towards the asset

Writes are confined per Modbus table.  FC 5 and 15 write coils (table ``coils``); FC 6, 16, 22
and the write half of 23 write holding registers (``holding_registers``).  A write must lie
wholly inside the union of the ranges of *its own table* that apply to the request's unit id
(a range with ``unit_ids`` None applies to every unit); a table with no such range takes no
writes.  Addresses are PDU addresses (0-based, as on the wire).  FC 21 (write file record) is
confined by no range: only the function-code list admits it.  FC 43 passes only as MEI type 14
(read device identification).  ``obligations=None``: FC 1-4 and 43/14, no writes, any unit id,
no rate limit.  Deny by default: a function code that is not listed is refused.

Outcomes per client request, in this order:

* MBAP or PDU structure broken (protocol id != 0, length outside 2..254, a known function
  code's layout or byte count inconsistent, FC 0 or >= 0x80) -> :class:`ModbusProtocolError`;
  the inspector forwards nothing from the bad frame on, reports ``Verdicts.close``, hands the
  stopped bytes (the bad frame and everything after it that it was given) back in
  ``Verdicts.malformed`` for the recording, and logs a ``refused`` record with their hex.
* unit id outside ``modbus.unit_ids`` (when set) -> exception 0A GATEWAY PATH UNAVAILABLE.
* function code not allowed (or FC 43 with MEI type != 14) -> exception 01 ILLEGAL FUNCTION.
* well framed but out of the spec's value domain (quantity 0 or too large, coil value other
  than 0xFF00/0x0000, bad device-id read code) -> exception 03 ILLEGAL DATA VALUE, as a
  real device would answer; address + quantity beyond 65536 -> exception 02.
* write outside the write ranges of its table and unit -> exception 02 ILLEGAL DATA ADDRESS,
  the reason naming the table and the ranges ("FC5 write to coil 15 outside the coil write
  ranges (none)").
* queue full (the relay kept reading while :attr:`ModbusInspector.accepting` was False)
  -> exception 06 SERVER DEVICE BUSY.
* otherwise queued, and forwarded once the token bucket (``rate_limit_rps``) and the
  concurrency cap allow it.  Exception responses go straight back to the client with the
  request's transaction and unit ids; the connection stays up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from policies.decision import (
    MalformedDecision,
    ModbusObligations,
    Obligations,
    WriteRange,
    parse_modbus_obligations,
)
from sessions.clock import Clock
from sessions.ot import modbus_text as words
from sessions.ot.base import (
    ObligationsError,
    Operation,
    ProtocolPlugin,
    Record,
    Verdicts,
    iso,
    malformed_record,
    protocol_block,
)
from sessions.ot.modbus_settings import validate_modbus_settings
from sessions.ot.modbus_wire import (
    MEI_READ_DEVICE_ID,
    READ_ONLY_FUNCTION_CODES,
    TABLE_NOUNS,
    WRITE_TABLE,
    ExceptionCode,
    Frame,
    MbapFramer,
    ModbusProtocolError,
    Request,
    Response,
    exception_response,
    feed_frames,
    function_name,
    operation_class,
    parse_request,
    parse_response,
    reference_range,
    stopped_bytes,
)
from sessions.ot.pacing import TokenBucket


@dataclass(slots=True)
class _Txn:
    frame: Frame
    request: Request
    record: Record
    deadline: datetime | None = None
    done: bool = False


class ModbusInspector:
    """Enforces Modbus obligations on one client connection (see the module docstring).

    ``max_concurrent``: forwarded requests awaiting an answer before further ones queue.
    ``max_queued``: requests held (rate or concurrency) before :attr:`accepting` turns False
    and further requests get exception 06.  ``response_timeout_s``: an unanswered forwarded
    request frees its slot after this long and is logged as ``no_response``.  ``limiter``
    overrides the bucket built from ``rate_limit_rps`` (pass a shared one for a per-asset limit).

    Ops-log records (one dict per request, JSON-ready): ``time``, ``transaction_id``, ``unit``,
    ``function``, ``function_name``, ``start``, ``quantity``, ``range`` (e.g. "40001\u201340010"),
    ``read_start``/``read_quantity``/``read_range`` (FC 23), ``values`` (written values),
    ``table`` (writes: ``coils`` or ``holding_registers``, else None), ``detail``, ``allowed``,
    ``reason``, ``result`` (ok, exception, refused, no_response, not_sent), ``exception``,
    ``response_values`` (read results) and ``answered_at``.  Refused requests are logged at
    once; forwarded ones when answered, timed out, or at :meth:`finish`.  A malformed frame
    (either direction) gets one ``refused`` record whose ``reason`` is the protocol error, with
    ``raw`` (hex of the first :data:`RAW_LOGGED` stopped bytes) and ``raw_length``; only such
    records carry ``raw``.
    """

    def __init__(
        self,
        obligations: Obligations | None,
        clock: Clock,
        *,
        max_concurrent: int = 16,
        max_queued: int = 64,
        response_timeout_s: float = 5.0,
        burst: float = 1.0,
        limiter: TokenBucket | None = None,
    ) -> None:
        if max_concurrent < 1 or max_queued < 1 or response_timeout_s <= 0:
            raise ValueError("max_concurrent, max_queued and response_timeout_s must be positive")
        self._clock = clock
        modbus = modbus_obligations(obligations)
        rate = None if obligations is None else obligations.rate_limit_rps
        self._allowed = frozenset(modbus.allow_function_codes)
        self._write_ranges = modbus.write_ranges
        self._units = None if modbus.unit_ids is None else frozenset(modbus.unit_ids)
        self._merged: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (table, unit) -> union
        if limiter is None and rate is not None:
            limiter = TokenBucket(rate, clock, burst)
        self._limiter = limiter
        self._max_concurrent = max_concurrent
        self._max_queued = max_queued
        self._timeout = timedelta(seconds=response_timeout_s)
        self._client = MbapFramer()
        self._server = MbapFramer()
        self._queue: deque[_Txn] = deque()
        self._in_flight: dict[int, deque[_Txn]] = {}
        self._in_flight_count = 0
        self._order: deque[_Txn] = deque()  # in-flight in forwarding order (done ones lazily)
        self._closed: str | None = None
        self._server_broken = False
        self._closing = False

    # -- state --------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Requests forwarded to the PLC and not yet answered (or timed out)."""
        return self._in_flight_count

    def queued(self) -> int:
        """Allowed requests held back by the rate limit or the concurrency cap."""
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        """False while the queue is full: the relay should stop reading from the client."""
        return len(self._queue) < self._max_queued and not self._closing

    @property
    def drained(self) -> bool:
        """Every forwarded transaction has been answered (or timed out)."""
        return self._in_flight_count == 0

    @property
    def closed(self) -> str | None:
        """Why the connection must close (malformed frame), or None."""
        return self._closed

    # -- entry points -------------------------------------------------------------------

    def from_client(self, data: bytes) -> Verdicts:
        """Inspect bytes from the vendor's tool; never raises on hostile input."""
        now = self._clock.now()
        if self._closed is not None or self._closing:
            return Verdicts(close=self._closed)
        records = self._expire(now)
        forward = bytearray()
        replies = bytearray()
        frames, unparsed, error = feed_frames(self._client, data)
        bad_at = len(frames)
        for i, frame in enumerate(frames):
            try:
                request = parse_request(frame.pdu)
            except ModbusProtocolError as exc:
                error, bad_at = exc, i
                break
            refusal = self._check(request, frame.unit_id)
            if refusal is None and len(self._queue) >= self._max_queued:
                refusal = ExceptionCode.SERVER_DEVICE_BUSY, "request queue full"
            record = self._record(now, frame, request)
            if refusal is None:
                record.update(allowed=True, reason=self._allow_reason(request))
                self._queue.append(_Txn(frame, request, record))
                forward += self._forward(now)
                continue
            code, reason = refusal
            replies += exception_response(frame, code)
            record.update(allowed=False, reason=reason, result="refused", exception=int(code))
            records.append(record)
        malformed = b""
        if error is not None:
            self._closed = f"malformed Modbus request: {error.message}"
            malformed = stopped_bytes(self._client, frames[bad_at:], unparsed, error)
            records.append(_malformed_record(now, malformed, self._closed))
            records += self._discard_queue(self._closed)
        return self._verdicts(now, bytes(forward), bytes(replies), records, malformed)

    def from_server(self, data: bytes) -> Verdicts:
        """Match the PLC's answers to forwarded requests; pass them through unchanged."""
        now = self._clock.now()
        if self._server_broken:
            return Verdicts(close=self._closed)
        records = self._expire(now)
        answers = bytearray()
        frames, unparsed, error = feed_frames(self._server, data)
        bad_at = len(frames)
        for i, frame in enumerate(frames):
            pending = self._in_flight.get(frame.transaction_id)
            txn = pending[0] if pending else None
            try:
                response = parse_response(frame.pdu, txn.request if txn else None)
            except ModbusProtocolError as exc:
                error, bad_at = exc, i
                break
            answers += frame.encode()
            if txn is not None:
                self._pop_in_flight(txn)
                records.append(self._answered(now, txn, response))
        malformed = b""
        if error is not None:
            self._server_broken = True
            reason = f"malformed Modbus response: {error.message}"
            self._closed = self._closed or reason
            malformed = stopped_bytes(self._server, frames[bad_at:], unparsed, error)
            records.append(_malformed_record(now, malformed, reason))
            records += self._discard_queue(self._closed)
        return self._verdicts(now, self._forward(now), bytes(answers), records, malformed)

    def poll(self) -> Verdicts:
        """Release queued requests that are now due and expire unanswered ones."""
        now = self._clock.now()
        records = self._expire(now)
        return self._verdicts(now, self._forward(now), b"", records)

    def begin_close(self, reason: str) -> Verdicts:
        """Stop taking requests (session ending); queued ones are dropped and logged.

        Afterwards :meth:`from_client` ignores its input; keep feeding :meth:`from_server`
        until :attr:`drained` or a short bound passes, then call :meth:`finish`.
        """
        now = self._clock.now()
        self._closing = True
        records = self._expire(now) + self._discard_queue(f"session closing: {reason}")
        return self._verdicts(now, b"", b"", records)

    def finish(self) -> list[Record]:
        """Log every request still queued or in flight (the connection is gone)."""
        self._closing = True
        records = self._discard_queue("connection ended")
        for txn in self._order:
            if not txn.done:
                txn.record.update(result="no_response", reason="connection ended before answer")
                records.append(txn.record)
        self._in_flight.clear()
        self._order.clear()
        self._in_flight_count = 0
        return records

    # -- internals ----------------------------------------------------------------------

    def _check(self, request: Request, unit: int) -> tuple[ExceptionCode, str] | None:
        fc = request.function_code
        if self._units is not None and unit not in self._units:
            allowed = ", ".join(map(str, sorted(self._units))) or "none"
            return (
                ExceptionCode.GATEWAY_PATH_UNAVAILABLE,
                f"unit id {unit} not allowed (unit ids: {allowed})",
            )
        if fc not in self._allowed:
            return (
                ExceptionCode.ILLEGAL_FUNCTION,
                f"function {fc} ({function_name(fc)}) not allowed",
            )
        if fc == 43 and request.detail.get("mei_type") != MEI_READ_DEVICE_ID:
            mei = request.detail.get("mei_type")
            return ExceptionCode.ILLEGAL_FUNCTION, f"function 43 MEI type {mei} not allowed"
        if request.problem is not None:
            return request.problem
        table = WRITE_TABLE.get(fc)
        if table is None:
            return None
        span = request.write_span
        if span is None:  # every write parser sets a span; refuse if one ever does not
            return ExceptionCode.ILLEGAL_DATA_ADDRESS, f"FC{fc} write without an address"
        ranges = self._ranges_for(table, unit)
        if any(first <= span[0] and span[1] <= last for first, last in ranges):
            return None
        one, many = TABLE_NOUNS[table]
        where = f"{one} {span[0]}" if span[0] == span[1] else f"{many} {_span(*span)}"
        per_unit = any(r.table == table and r.unit_ids is not None for r in self._write_ranges)
        scope = f" for unit {unit}" if per_unit else ""
        listed = ", ".join(_span(first, last) for first, last in ranges) or "none"
        return (
            ExceptionCode.ILLEGAL_DATA_ADDRESS,
            f"FC{fc} write to {where} outside the {one} write ranges{scope} ({listed})",
        )

    def _ranges_for(self, table: str, unit: int) -> list[tuple[int, int]]:
        """The union of the ranges that confine writes into ``table`` for ``unit``."""
        merged = self._merged.get((table, unit))
        if merged is None:
            merged = _merge(self._write_ranges, table, unit)
            self._merged[(table, unit)] = merged
        return merged

    @staticmethod
    def _allow_reason(request: Request) -> str:
        fc = request.function_code
        table = WRITE_TABLE.get(fc)
        if table is not None:
            return f"function {fc} allowed; write within the {TABLE_NOUNS[table][0]} write ranges"
        return f"function {fc} allowed"

    def _record(self, now: datetime, frame: Frame, request: Request) -> Record:
        fc = request.function_code
        start, qty = request.start, request.quantity
        rstart, rqty = request.read_start, request.read_quantity
        span = None if start is None else reference_range(fc, start, 1 if qty is None else qty)
        read_span = None if rstart is None or rqty is None else reference_range(fc, rstart, rqty)
        values = list(request.values) if request.values is not None else None
        addresses = [r for r in (span, read_span) if r is not None] or None
        op = Operation(iso(now), "modbus", fc, function_name(fc), operation_class(fc),
                       unit=frame.unit_id, values=values, addresses=addresses)  # fmt: skip
        return op.as_record(
            transaction_id=frame.transaction_id,
            table=WRITE_TABLE.get(fc),
            start=start,
            quantity=qty,
            range=span,
            read_start=rstart,
            read_quantity=rqty,
            read_range=read_span,
            detail=dict(request.detail),
            exception=None,
            response_values=None,
            answered_at=None,
        )

    def _answered(self, now: datetime, txn: _Txn, response: Response) -> Record:
        record = txn.record
        record["answered_at"] = iso(now)
        if response.function_code != txn.request.function_code:
            record["result"] = "mismatched_response"
        elif response.exception is not None:
            record.update(result="exception", exception=response.exception)
        else:
            record["result"] = "ok"
        if response.values is not None:
            record["response_values"] = list(response.values)
        return record

    def _pop_in_flight(self, txn: _Txn) -> None:
        tid = txn.frame.transaction_id
        pending = self._in_flight[tid]
        pending.remove(txn)
        if not pending:
            del self._in_flight[tid]
        txn.done = True
        self._in_flight_count -= 1

    def _oldest_in_flight(self) -> _Txn | None:
        while self._order and self._order[0].done:
            self._order.popleft()
        return self._order[0] if self._order else None

    def _discard_queue(self, reason: str) -> list[Record]:
        records = []
        while self._queue:
            txn = self._queue.popleft()
            txn.record.update(result="not_sent", reason=reason)
            records.append(txn.record)
        return records

    def _expire(self, now: datetime) -> list[Record]:
        records: list[Record] = []
        while (txn := self._oldest_in_flight()) is not None:
            if txn.deadline is None or txn.deadline > now:
                break
            self._pop_in_flight(txn)
            txn.record.update(result="no_response", reason="no answer within timeout")
            records.append(txn.record)
        return records

    def _forward(self, now: datetime) -> bytes:
        if self._closed is not None or self._closing:
            return b""
        out = bytearray()
        while self._queue and self._in_flight_count < self._max_concurrent:
            if self._limiter is not None and not self._limiter.try_take(now):
                break
            txn = self._queue.popleft()
            txn.deadline = now + self._timeout
            self._in_flight.setdefault(txn.frame.transaction_id, deque()).append(txn)
            self._order.append(txn)
            self._in_flight_count += 1
            out += txn.frame.encode()
        return bytes(out)

    def _verdicts(
        self,
        now: datetime,
        to_server: bytes,
        to_client: bytes,
        records: list[Record],
        malformed: bytes = b"",
    ) -> Verdicts:
        oldest = self._oldest_in_flight()
        times = [oldest.deadline] if oldest is not None and oldest.deadline is not None else []
        if self._queue and self._in_flight_count < self._max_concurrent and self._limiter:
            times.append(self._limiter.available_at(now))
        poll_at = min(times) if times else None
        return Verdicts(to_server, to_client, tuple(records), self._closed, poll_at, malformed)


def _malformed_record(now: datetime, raw: bytes, reason: str) -> Record:
    """The ops-log record of stopped bytes; ids and function code read from the MBAP header."""
    fc = raw[7] if len(raw) > 7 else None
    return malformed_record(
        now,
        "modbus",
        raw,
        reason,
        transaction_id=int.from_bytes(raw[:2], "big") if len(raw) >= 2 else None,
        unit=raw[6] if len(raw) > 6 else None,
        function=fc,
        function_name=None if fc is None else function_name(fc),
        table=None,
        start=None,
        quantity=None,
        range=None,
        detail={},
        exception=None,
    )


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}\u2013{last}"


def _merge(ranges: tuple[WriteRange, ...], table: str, unit: int) -> list[tuple[int, int]]:
    """The ranges that apply to ``table`` and ``unit``, sorted, overlapping/adjacent joined."""
    merged: list[tuple[int, int]] = []
    applicable = sorted((r.first, r.last) for r in ranges if r.applies_to(table, unit))
    for first, last in applicable:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def modbus_obligations(obligations: Obligations | None) -> ModbusObligations:
    """``protocols.modbus``, else legacy ``modbus``; None: read-only. ObligationsError if bad."""
    if obligations is None:
        return ModbusObligations(READ_ONLY_FUNCTION_CODES)
    block = protocol_block(obligations, "modbus")
    if block is None:
        return obligations.modbus
    try:
        return parse_modbus_obligations(block, "obligations.protocols.modbus")
    except MalformedDecision as exc:
        raise ObligationsError(str(exc)) from None


def _build(
    obligations: Obligations | None, clock: Clock, limiter: TokenBucket | None
) -> ModbusInspector:
    return ModbusInspector(obligations, clock, limiter=limiter)


PLUGIN = ProtocolPlugin(
    "modbus", 502, _build, validate_modbus_settings, "Modbus", words.describe_modbus_obligations,
    words.describe_modbus_settings, words.describe_modbus_allowance, words.OBLIGATION_KEYS,
)  # fmt: skip
