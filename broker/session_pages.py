"""Web pages for sessions: the live list with a kill switch, recordings, playback.

* ``/sessions`` (admin, security): this broker's live sessions; admins can end one (CSRF form,
  confirmed through ``<details>`` since the CSP forbids inline scripts), audited as
  ``session.killed`` exactly like ``POST /api/sessions/{id}/kill``.
* ``/recordings`` (admin, security: all; vendor: their own sessions only): filters by user,
  asset, date range (session start, UTC) and kind (recording format); the stored integrity.
* ``/recordings/{id}``: facts and, for asciicast, playback with the asciinema-player served
  from ``/static/vendor`` (``broker/frontend``) and started by ``/static/player.js`` from a data
  attribute. The player compiles WebAssembly, so this one page's CSP adds
  ``'wasm-unsafe-eval'`` (no ``'unsafe-eval'``, no inline script).
* ``/recordings/{id}/download``: the chunks concatenated in chain order (streamed, unverified;
  the stored integrity is sent as ``X-Conduit-Integrity``), audited ``recording.downloaded``.
* ``POST /recordings/{id}/verify``: :func:`sessions.recording.verify_recording` with the
  broker's public recording key; the result is stored and audited ``recording.verified``.

A vendor asking for another user's recording gets 403, audited ``recording.access.denied``.
``Recording.path`` is the recording directory, absolute or relative to ``<data_dir>`` or to
``<data_dir>/recordings``; it must lie inside ``<data_dir>/recordings``. Paths are never shown.
"""

from __future__ import annotations

import itertools
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

from broker.auth import Principal
from broker.errors import BrokerError, Forbidden
from broker.recording_keys import public_key_path, recording_key_dir
from broker.services import Services, services
from broker.web import check_csrf, render, require
from sessions.db import session_scope
from sessions.identity import ADMIN, SECURITY, VENDOR
from sessions.models import (
    Asset,
    MaintenanceSession,
    Recording,
    RecordingFormat,
    RecordingIntegrity,
    User,
)
from sessions.recording import (
    KIND_EXTENSIONS,
    RecordingError,
    VerifyStatus,
    iter_chunks,
    load_public_key,
    verify_recording,
)

LIST_LIMIT = 200
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
    await require(request, ADMIN, SECURITY)
    rows = [s.as_dict() for s in services(request).live.list()]
    return render(
        request, "sessions.html", {"sessions": rows, "message": request.query_params.get("message")}
    )


async def kill_session(request: Request) -> Response:
    principal = await require(request, ADMIN)
    await check_csrf(request, principal)
    svc = services(request)
    session_id = request.path_params["id"]
    reason = f"terminated by an administrator ({principal.name or principal.email})"
    if not svc.live.kill(session_id, reason):
        return _done("/sessions", f"Session {session_id} is not live on this broker.")
    await svc.record(
        request,
        "session.killed",
        actor=principal.user_id,
        outcome="ok",
        subject=f"session:{session_id}",
        details={"reason": reason},
    )
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
    user: str
    asset: str
    login: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    size_bytes: int
    finalized: bool
    integrity: str
    path: str  # for the handlers only; templates must not show it


def _sees_all(principal: Principal) -> bool:
    return principal.has(ADMIN, SECURITY)


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
    if not _sees_all(principal):  # a vendor: own sessions only, no user filter
        query = query.where(MaintenanceSession.user_id == principal.user_id)
    elif who := filters.get("user", "").strip().lower():
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


def _load(
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
                user=user.name or user.email or user.sub,
                asset=asset.name,
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
    principal = await require(request, ADMIN, SECURITY, VENDOR)
    keys = ("user", "asset", "kind", "from", "to")
    filters = {k: request.query_params.get(k, "") for k in keys}
    rows, assets = await run_in_threadpool(_load, services(request), principal, filters)
    return render(
        request,
        "recordings.html",
        {
            "recordings": rows,
            "assets": assets,
            "kinds": RecordingFormat.ALL,
            "filters": filters,
            "sees_all": _sees_all(principal),
            "limited": len(rows) == LIST_LIMIT,
        },
    )


async def _recording(request: Request, principal: Principal) -> RecordingRow:
    """The requested recording if ``principal`` may see it: 404 if absent, 403 (audited)."""
    svc = services(request)
    recording_id = request.path_params["id"]
    rows, _ = await run_in_threadpool(_load, svc, principal, {}, recording_id)
    if not rows:
        raise BrokerError(f"recording {recording_id} not found", code="not_found", status=404)
    row = rows[0]
    if not _sees_all(principal) and row.user_id != principal.user_id:
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
    principal = await require(request, ADMIN, SECURITY, VENDOR)
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
    principal = await require(request, ADMIN, SECURITY, VENDOR)
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
        result = verify_recording(_directory(svc, row), key)
    except RecordingError as exc:
        raise BrokerError(f"verifying recording {row.id}: {exc.message}", status=503) from exc
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
    principal = await require(request, ADMIN, SECURITY, VENDOR)
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


routes = [
    Route("/sessions", sessions_page, methods=["GET"]),
    Route("/sessions/{id}/kill", kill_session, methods=["POST"]),
    Route("/recordings", recordings_page, methods=["GET"]),
    Route("/recordings/{id}", recording_page, methods=["GET"]),
    Route("/recordings/{id}/download", download, methods=["GET"]),
    Route("/recordings/{id}/verify", verify, methods=["POST"]),
]
