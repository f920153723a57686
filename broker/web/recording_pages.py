"""Web pages for recordings: the list, one recording with playback, download, verify.

* ``/recordings`` (the same visibility as ``/sessions``): filters by user, asset, date range
  (session start, UTC) and kind (recording format); the stored integrity
  (:mod:`broker.http.recording_rows`).
* ``/recordings/{id}``: facts and, for asciicast, playback with the asciinema-player served
  from ``/static/vendor`` (``broker/frontend``) and started by ``/static/player.js`` from a data
  attribute. The player compiles WebAssembly, so this one page's CSP adds
  ``'wasm-unsafe-eval'`` (no ``'unsafe-eval'``, no inline script).
* ``/recordings/{id}/download``: the chunks concatenated in chain order (streamed, unverified;
  the stored integrity is sent as ``X-Conduit-Integrity``), audited ``recording.downloaded``.
* ``POST /recordings/{id}/verify``: :func:`sessions.recording.verify_recording` with the
  broker's public recording key; the result is stored and audited ``recording.verified``.

The operations timeline of a forwarded connection is :mod:`broker.web.operations_page`.
Asking for a recording one may not see gets 403, audited ``recording.access.denied``
(:mod:`broker.web.recording_access`). Paths are never shown.
"""

from __future__ import annotations

import itertools
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from broker.http.recording_rows import LIST_LIMIT, RecordingRow, load_recordings
from broker.http.visibility import owns_assets, sees_all
from broker.http.web import check_csrf, render, require
from broker.keys.recording import public_key_path, recording_key_dir
from broker.runtime.errors import BrokerError
from broker.services import Services, services
from broker.web.recording_access import recording_directory, visible_recording
from sessions.db import session_scope
from sessions.identity import ADMIN, APPROVER, SECURITY, VENDOR
from sessions.models import Recording, RecordingFormat, RecordingIntegrity
from sessions.ot.registry import registered
from sessions.recording import (
    KIND_EXTENSIONS,
    RecordingError,
    VerifyStatus,
    iter_chunks,
    load_public_key,
    verify_recording,
)
from sessions.recording_end import (
    RECORDING_CLOSED,
    AuditedEnd,
    SessionBinding,
    check_end,
    check_session_end,
)
from sessions.recording_end import subject as end_subject
from sessions.session_end import SESSION_ENDED

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
            "kinds": [  # (value, label): the recording formats, then the OT protocols
                *((f, f) for f in RecordingFormat.ALL),
                *((name, plugin.title) for name, plugin in registered().items()),
            ],
            "filters": filters,
            "sees_all": sees_all(principal) or owns_assets(principal),
            "limited": len(rows) == LIST_LIMIT,
        },
    )


async def recording_page(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    row = await visible_recording(request, principal)
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
    row = await visible_recording(request, principal)
    svc = services(request)
    directory = await run_in_threadpool(recording_directory, svc, row)
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
        directory = recording_directory(svc, row)
        result = verify_recording(directory, key)
    except RecordingError as exc:
        raise BrokerError(f"verifying recording {row.id}: {exc.message}", status=503) from exc
    ends = [  # the clean end the audit log records: a truncated recording is BROKEN
        end
        for event in svc.audit.find(RECORDING_CLOSED, end_subject(directory.name))
        if (end := AuditedEnd.from_event(event.seq, event.details)) is not None
    ]
    result = check_end(result, ends, source="the audit log")
    session = f"session:{row.session_id}"
    bindings = [  # the session's end names the recording's final chain hash
        bound
        for event in svc.audit.find(SESSION_ENDED, session)
        if (bound := SessionBinding.from_event(event.seq, session, event.details, {directory.name}))
        is not None
    ]
    result = check_session_end(result, bindings, source="the audit log")
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
    row = await visible_recording(request, principal)
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
    Route("/recordings", recordings_page, methods=["GET"]),
    Route("/recordings/{id}", recording_page, methods=["GET"]),
    Route("/recordings/{id}/download", download, methods=["GET"]),
    Route("/recordings/{id}/verify", verify, methods=["POST"]),
]
