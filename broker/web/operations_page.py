"""``/recordings/{id}/operations``: the OT operations timeline of a forwarded connection.

For a ``pcap`` recording or its ``ops_jsonl`` companion (the ops log ``<base>-ops`` next to the
pcap ``<base>``, same session): every operation of every protocol, refused and dangerous ones
marked; server-side filters ``writes=1`` and ``refused=1``; links to download the pcap and the
ops log. At most :data:`OPS_LIMIT` operations are shown, the counts cover the whole log; lines
that are not JSON objects are counted as unreadable, not shown. Unverified, like download.
Visibility and the audited 403 are :mod:`broker.web.recording_access`'s; any other format is
404 ``no_operations``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.auth.auth import Principal
from broker.http.recording_rows import RecordingRow, load_recordings
from broker.http.web import render, require
from broker.runtime.errors import BrokerError
from broker.services import Services, services
from broker.web.recording_access import recording_directory, visible_recording
from sessions.db import session_scope
from sessions.identity import ADMIN, APPROVER, SECURITY, VENDOR
from sessions.models import Recording, RecordingFormat
from sessions.ot.base import OpClass
from sessions.ot.modbus_wire import DANGEROUS_FUNCTION_CODES, REGISTER_WRITE_FUNCTION_CODES
from sessions.recording import RecordingError, iter_chunks

OPS_LIMIT = 2000  # operations shown on one page (the counts cover the whole log)
VALUES_SHOWN = 16
# design.md "OT operations": Modbus write / control function codes.
WRITE_FUNCTION_CODES = frozenset({*REGISTER_WRITE_FUNCTION_CODES, 21})


@dataclass(frozen=True)
class Operation:
    """One ops-log line as the timeline shows it."""

    time: str
    protocol: str
    unit: str
    function: str
    function_name: str
    where: str
    values: str
    allowed: bool
    reason: str
    result: str
    write: bool
    dangerous: bool


@dataclass
class Timeline:
    """The operations that pass the filters (at most ``OPS_LIMIT``) and whole-log counts."""

    operations: list[Operation]
    total: int = 0
    matching: int = 0
    writes: int = 0
    refused: int = 0
    dangerous: int = 0
    unreadable: int = 0
    problem: str | None = None


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _values(values: object, prefix: str = "") -> str:
    if not isinstance(values, list) or not values:
        return ""
    shown = ", ".join(
        str(int(v)) if isinstance(v, bool) else _text(v) for v in values[:VALUES_SHOWN]
    )
    more = f", … ({len(values)} values)" if len(values) > VALUES_SHOWN else ""
    return f"{prefix}[{shown}{more}]"


def _where(op: dict[str, Any]) -> str:
    where = _text(op.get("range"))
    addresses = op.get("addresses")
    if not where and op.get("protocol", "modbus") != "modbus" and isinstance(addresses, list):
        where = ", ".join(map(_text, addresses))
    if not where and op.get("start") is not None:
        where = f"address {op.get('start')}, quantity {_text(op.get('quantity')) or 1}"
    if op.get("read_range"):
        where = f"write {where}; read {op['read_range']}" if where else f"read {op['read_range']}"
    return where


def _operation(op: dict[str, Any]) -> Operation:
    fc = op.get("function")
    code = fc if isinstance(fc, int) and not isinstance(fc, bool) else None
    allowed = op.get("allowed") is True
    result = _text(op.get("result"))
    if op.get("exception") is not None:
        result = f"{result} (exception {op['exception']})"
    written = _values(op.get("values"))
    protocol = _text(op.get("protocol")) or "modbus"  # logs before protocols were named
    op_class = op.get("class")
    if op_class is None or protocol == "modbus":  # Modbus: by code, as the alerts always were
        write = code in WRITE_FUNCTION_CODES
        dangerous = code in DANGEROUS_FUNCTION_CODES
    else:
        write, dangerous = op_class == OpClass.WRITE, op_class in OpClass.ALERTED
    return Operation(
        time=_text(op.get("time")).replace("T", " ").removesuffix("Z"),
        protocol=protocol,
        unit=_text(op.get("unit")),
        function=_text(fc),
        function_name=_text(op.get("function_name")),
        where=_where(op),
        values=written or _values(op.get("response_values"), "read "),
        allowed=allowed,
        reason=_text(op.get("reason")),
        result=result,
        write=write,
        dangerous=dangerous,
    )


def _lines(directory: Path) -> Iterator[bytes]:
    """The ops log's lines, streamed across chunk boundaries."""
    tail = b""
    for chunk in iter_chunks(directory):
        *lines, tail = (tail + chunk).split(b"\n")
        yield from lines
    if tail:
        yield tail


def _timeline(directory: Path, *, writes_only: bool, refused_only: bool) -> Timeline:
    timeline = Timeline([])
    try:
        for line in _lines(directory):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise ValueError("not an object")
                op = _operation(raw)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError included
                timeline.unreadable += 1
                continue
            timeline.total += 1
            timeline.writes += op.write
            timeline.refused += not op.allowed
            timeline.dangerous += op.dangerous
            if (writes_only and not op.write) or (refused_only and op.allowed):
                continue
            timeline.matching += 1
            if len(timeline.operations) < OPS_LIMIT:
                timeline.operations.append(op)
    except RecordingError as exc:
        timeline.problem = f"the operations log could not be read: {exc.message}"
    return timeline


def _companions(
    svc: Services, principal: Principal, row: RecordingRow
) -> tuple[str | None, RecordingRow | None]:
    """(pcap recording id, ops-log recording) of ``row``'s connection: ``<base>``/``<base>-ops``."""
    base = Path(row.path).name.removesuffix("-ops")
    with session_scope(svc.engine) as db:
        siblings = db.exec(
            select(Recording.id, Recording.format, Recording.path).where(
                Recording.session_id == row.session_id
            )
        ).all()
    pcap_id = ops_id = None
    for rid, fmt, path in siblings:
        name = Path(path).name
        if fmt == RecordingFormat.PCAP and name == base:
            pcap_id = rid
        elif fmt == RecordingFormat.OPS_JSONL and name == f"{base}-ops":
            ops_id = rid
    if row.format == RecordingFormat.OPS_JSONL:
        return pcap_id, row
    if ops_id is None:
        return row.id, None
    found, _ = load_recordings(svc, principal, {}, ops_id)  # the same session: the same owner
    return row.id, found[0] if found else None


async def operations_page(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    row = await visible_recording(request, principal)
    if row.format not in (RecordingFormat.PCAP, RecordingFormat.OPS_JSONL):
        raise BrokerError(
            f"recording {row.id} is a {row.format} recording: it has no operations log",
            code="no_operations",
            status=404,
        )
    svc = services(request)
    pcap_id, ops = await run_in_threadpool(_companions, svc, principal, row)
    filters = {k: request.query_params.get(k, "") == "1" for k in ("writes", "refused")}
    timeline = None
    if ops is not None:
        try:
            directory = await run_in_threadpool(recording_directory, svc, ops)
        except BrokerError as exc:  # the pcap may still be there: keep the page
            timeline = Timeline([], problem=exc.message)
        else:
            timeline = await run_in_threadpool(
                _timeline, directory, writes_only=filters["writes"], refused_only=filters["refused"]
            )
    return render(
        request,
        "operations.html",
        {
            "r": row,
            "pcap_id": pcap_id,
            "ops": ops,
            "timeline": timeline,
            "filters": filters,
            "limit": OPS_LIMIT,
        },
    )


routes = [Route("/recordings/{id}/operations", operations_page, methods=["GET"])]
