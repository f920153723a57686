"""Web pages for sessions: the live list with a kill switch, recordings, playback.

* ``/sessions``: this broker's live sessions the user may see (``broker/http/visibility.py``: admins
  and security all, approvers those on assets their groups own, vendors their own); admins can
  end one (CSRF form,
  confirmed through ``<details>`` since the CSP forbids inline scripts), audited as
  ``session.killed`` exactly like ``POST /api/sessions/{id}/kill``.
* ``/recordings`` (the same visibility as ``/sessions``): filters by user,
  asset, date range (session start, UTC) and kind (recording format); the stored integrity.
* ``/recordings/{id}``: facts and, for asciicast, playback with the asciinema-player served
  from ``/static/vendor`` (``broker/frontend``) and started by ``/static/player.js`` from a data
  attribute. The player compiles WebAssembly, so this one page's CSP adds
  ``'wasm-unsafe-eval'`` (no ``'unsafe-eval'``, no inline script).
* ``/recordings/{id}/download``: the chunks concatenated in chain order (streamed, unverified;
  the stored integrity is sent as ``X-Conduit-Integrity``), audited ``recording.downloaded``.
* ``POST /recordings/{id}/verify``: :func:`sessions.recording.verify_recording` with the
  broker's public recording key; the result is stored and audited ``recording.verified``.
* ``/recordings/{id}/operations`` (a forwarded connection's ``pcap`` or its ``ops_jsonl``): the
  Modbus operations timeline from the ops log (``<base>-ops`` next to the pcap ``<base>``, same
  session), refused and dangerous operations marked; server-side filters ``writes=1`` and
  ``refused=1``; links to download the pcap and the ops log. Unverified, like download.

Asking for a recording one may not see gets 403, audited ``recording.access.denied``.
``Recording.path`` is the recording directory, absolute or relative to ``<data_dir>`` or to
``<data_dir>/recordings``; it must lie inside ``<data_dir>/recordings``. Paths are never shown.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from broker.api.session_api import end_live_session
from broker.auth.auth import Principal
from broker.http.visibility import live_rows, may_see, owns_assets, sees_all, session_filter
from broker.http.web import check_csrf, render, require
from broker.keys.recording import public_key_path, recording_key_dir
from broker.runtime.errors import BrokerError, Forbidden
from broker.runtime.people import Person, person_of
from broker.services import Services, services
from sessions.db import session_scope
from sessions.identity import ADMIN, APPROVER, SECURITY, VENDOR
from sessions.models import (
    Asset,
    MaintenanceSession,
    Recording,
    RecordingFormat,
    RecordingIntegrity,
    User,
)
from sessions.ot.base import OpClass
from sessions.ot.modbus_wire import DANGEROUS_FUNCTION_CODES, REGISTER_WRITE_FUNCTION_CODES
from sessions.recording import (
    KIND_EXTENSIONS,
    RecordingError,
    VerifyStatus,
    iter_chunks,
    load_public_key,
    verify_recording,
)
from sessions.recording_end import RECORDING_CLOSED, AuditedEnd, check_end
from sessions.recording_end import subject as end_subject

LIST_LIMIT = 200
OPS_LIMIT = 2000  # operations shown on one page (the counts cover the whole log)
VALUES_SHOWN = 16
# design.md "OT operations": Modbus write / control function codes.
WRITE_FUNCTION_CODES = frozenset({*REGISTER_WRITE_FUNCTION_CODES, 21})
MEDIA_TYPES = {
    RecordingFormat.ASCIICAST: "application/x-asciicast",
    RecordingFormat.PCAP: "application/vnd.tcpdump.pcap",
    RecordingFormat.OPS_JSONL: "application/x-ndjson",
}
PLAYER_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self' 'wasm-unsafe-eval'; frame-ancestors 'none'; form-action 'self' {idp}"
)


def _done(path: str, message: str) -> Response:
    return RedirectResponse(f"{path}?{urlencode({'message': message})}", status_code=303)


# ---- live sessions --------------------------------------------------------------------------


async def sessions_page(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    svc = services(request)
    rows = await run_in_threadpool(live_rows, svc.engine, principal, svc.live.list())
    ctx = {"sessions": rows, "message": request.query_params.get("message")}
    return render(request, "sessions.html", ctx)


async def kill_session(request: Request) -> Response:
    principal = await require(request, ADMIN)
    await check_csrf(request, principal)
    session_id = request.path_params["id"]
    if await end_live_session(request, principal, session_id) is None:
        return _done("/sessions", f"Session {session_id} is not live on this broker.")
    return _done("/sessions", f"Session {session_id} ended.")


# ---- recordings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingRow:
    """One recording as the pages show it (no file system path, nothing secret)."""

    id: str
    format: str
    session_id: str
    session_kind: str
    user_id: str
    user: Person
    asset: str
    owner_group: str | None
    login: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    size_bytes: int
    finalized: bool
    integrity: str
    path: str  # for the handlers only; templates must not show it


def _day(value: str | None, *, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` as the start of that day (or of the next one for ``end``), UTC."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def _query(principal: Principal, filters: dict[str, str], recording_id: str | None) -> Any:
    query = (
        select(Recording, MaintenanceSession, User, Asset)
        .join(MaintenanceSession, col(MaintenanceSession.id) == col(Recording.session_id))
        .join(User, col(User.id) == col(MaintenanceSession.user_id))
        .join(Asset, col(Asset.id) == col(MaintenanceSession.asset_id))
        .order_by(col(MaintenanceSession.started_at).desc(), col(Recording.id))
    )
    if recording_id is not None:
        return query.where(Recording.id == recording_id)
    query = query.where(session_filter(principal))
    others = sees_all(principal) or owns_assets(principal)  # vendors: no user filter
    if others and (who := filters.get("user", "").strip().lower()):
        query = query.where(
            sa.or_(
                sa.func.lower(col(User.name)).contains(who, autoescape=True),
                sa.func.lower(col(User.email)).contains(who, autoescape=True),
            )
        )
    if asset := filters.get("asset", "").strip():
        query = query.where(Asset.name == asset)
    if kind := filters.get("kind", ""):
        query = query.where(Recording.format == kind)
    if (since := _day(filters.get("from"))) is not None:
        query = query.where(col(MaintenanceSession.started_at) >= since)
    if (until := _day(filters.get("to"), end=True)) is not None:
        query = query.where(col(MaintenanceSession.started_at) < until)
    return query.limit(LIST_LIMIT)


def load_recordings(
    svc: Services, principal: Principal, filters: dict[str, str], recording_id: str | None = None
) -> tuple[list[RecordingRow], list[str]]:
    """Matching recordings (newest session first) and the asset names for the filter."""
    with session_scope(svc.engine) as db:
        rows = [
            RecordingRow(
                id=rec.id,
                format=rec.format,
                session_id=ms.id,
                session_kind=ms.kind,
                user_id=user.id,
                user=person_of(user),
                asset=asset.name,
                owner_group=asset.owner_group,
                login=ms.login,
                started_at=ms.started_at,
                ended_at=ms.ended_at,
                end_reason=ms.end_reason,
                size_bytes=rec.size_bytes,
                finalized=rec.finalized_at is not None,
                integrity=rec.integrity,
                path=rec.path,
            )
            for rec, ms, user, asset in db.exec(_query(principal, filters, recording_id)).all()
        ]
        assets = [] if recording_id else list(db.exec(select(Asset.name).order_by(Asset.name)))
    return rows, assets


async def recordings_page(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    keys = ("user", "asset", "kind", "from", "to")
    filters = {k: request.query_params.get(k, "") for k in keys}
    rows, assets = await run_in_threadpool(load_recordings, services(request), principal, filters)
    return render(
        request,
        "recordings.html",
        {
            "recordings": rows,
            "assets": assets,
            "kinds": RecordingFormat.ALL,
            "filters": filters,
            "sees_all": sees_all(principal) or owns_assets(principal),
            "limited": len(rows) == LIST_LIMIT,
        },
    )


async def _recording(request: Request, principal: Principal) -> RecordingRow:
    """The requested recording if ``principal`` may see it: 404 if absent, 403 (audited)."""
    svc = services(request)
    recording_id = request.path_params["id"]
    rows, _ = await run_in_threadpool(load_recordings, svc, principal, {}, recording_id)
    if not rows:
        raise BrokerError(f"recording {recording_id} not found", code="not_found", status=404)
    row = rows[0]
    if not may_see(principal, row.user_id, row.owner_group):
        await svc.record(
            request,
            "recording.access.denied",
            actor=principal.user_id,
            outcome="deny",
            subject=f"recording:{row.id}",
            details={"path": request.url.path, "owner": row.user_id},
        )
        raise Forbidden("this recording belongs to another user's session")
    return row


def _directory(svc: Services, row: RecordingRow) -> Path:
    """The recording's directory, which must lie inside ``<data_dir>/recordings``."""
    data_dir = svc.settings.data_dir.resolve()
    root = data_dir / "recordings"
    given = Path(row.path)
    candidates = [given] if given.is_absolute() else [data_dir / given, root / given]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_relative_to(root) and resolved != root and resolved.is_dir():
            return resolved
    raise BrokerError(
        f"recording {row.id}: its files are not in this broker's recording store",
        code="recording_missing",
        status=404,
    )


async def recording_page(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    row = await _recording(request, principal)
    response = render(
        request,
        "recording.html",
        {
            "r": row,
            "playable": row.format == RecordingFormat.ASCIICAST,
            "message": request.query_params.get("message"),
        },
    )
    issuer = urlsplit(services(request).settings.oidc.issuer)
    response.headers["Content-Security-Policy"] = PLAYER_CSP.replace(
        "{idp}", f"{issuer.scheme}://{issuer.netloc}"
    )
    return response


async def download(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    row = await _recording(request, principal)
    svc = services(request)
    directory = await run_in_threadpool(_directory, svc, row)
    chunks = iter_chunks(directory)
    try:  # read the first chunk now, so an unreadable recording is an error page, not a cut
        first = await run_in_threadpool(next, chunks, b"")
    except RecordingError as exc:
        raise BrokerError(
            f"reading recording {row.id}: {exc.message}", code="recording_unreadable", status=404
        ) from exc
    await svc.record(
        request,
        "recording.downloaded",
        actor=principal.user_id,
        outcome="ok",
        subject=f"recording:{row.id}",
    )
    extension = KIND_EXTENSIONS.get(row.format, "bin")
    return StreamingResponse(
        itertools.chain([first], chunks),
        media_type=MEDIA_TYPES.get(row.format, "application/octet-stream"),
        headers={
            "Content-Disposition": f'attachment; filename="{row.id}.{extension}"',
            "X-Conduit-Integrity": row.integrity,
        },
    )


def _verify(svc: Services, row: RecordingRow) -> tuple[str, str]:
    """Verify the files, store the outcome; (integrity, one-line summary)."""
    try:
        key = load_public_key(public_key_path(recording_key_dir(svc.settings.data_dir)))
        directory = _directory(svc, row)
        result = verify_recording(directory, key)
    except RecordingError as exc:
        raise BrokerError(f"verifying recording {row.id}: {exc.message}", status=503) from exc
    ends = [  # the clean end the audit log records: a truncated recording is BROKEN
        end
        for event in svc.audit.find(RECORDING_CLOSED, end_subject(directory.name))
        if (end := AuditedEnd.from_event(event.seq, event.details)) is not None
    ]
    result = check_end(result, ends, source="the audit log")
    integrity = {
        VerifyStatus.OK: RecordingIntegrity.OK,
        VerifyStatus.BROKEN: RecordingIntegrity.BROKEN,
    }.get(result.status, RecordingIntegrity.UNKNOWN)
    with session_scope(svc.engine, write=True) as db:
        stored = db.get(Recording, row.id)
        if stored is not None:
            stored.integrity = integrity
    return integrity, result.summary()


async def verify(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    await check_csrf(request, principal)
    row = await _recording(request, principal)
    svc = services(request)
    integrity, summary = await run_in_threadpool(_verify, svc, row)
    await svc.record(
        request,
        "recording.verified",
        actor=principal.user_id,
        outcome="ok" if integrity != RecordingIntegrity.BROKEN else "error",
        subject=f"recording:{row.id}",
        details={"summary": summary},
    )
    return _done(f"/recordings/{row.id}", summary)


# ---- OT operations timeline (every protocol) ------------------------------------------


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
    row = await _recording(request, principal)
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
            directory = await run_in_threadpool(_directory, svc, ops)
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


routes = [
    Route("/sessions", sessions_page, methods=["GET"]),
    Route("/sessions/{id}/kill", kill_session, methods=["POST"]),
    Route("/recordings", recordings_page, methods=["GET"]),
    Route("/recordings/{id}", recording_page, methods=["GET"]),
    Route("/recordings/{id}/download", download, methods=["GET"]),
    Route("/recordings/{id}/verify", verify, methods=["POST"]),
    Route("/recordings/{id}/operations", operations_page, methods=["GET"]),
]
