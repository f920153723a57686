"""``GET /api/recordings``: the recordings list of ``/recordings`` as JSON, for scripts.

Same query (:mod:`broker.http.recording_rows`), filters (``user``, ``asset``, ``kind``: a
format or a forward's protocol; ``from``, ``to``: session start, UTC) and visibility
(``broker/http/visibility.py``) as the page: admins and security reviewers all, approvers
their own and those on assets their groups own, vendors their own. ``session_kind`` is what
people read (a forward's protocol title: ``Modbus``), ``protocol`` the endpoint's declared
protocol (None for terminal sessions and older forwards). No file system path is ever
included. Newest session first, at most ``LIST_LIMIT`` rows.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.http.recording_rows import RecordingRow, load_recordings
from broker.http.web import require
from broker.services import services
from sessions.authorizer import iso
from sessions.identity import ADMIN, APPROVER, SECURITY, VENDOR

FILTERS = ("user", "asset", "kind", "from", "to")


def recording_json(row: RecordingRow) -> dict[str, object]:
    return {
        "id": row.id,
        "format": row.format,
        "session_id": row.session_id,
        "session_kind": row.session_kind,
        "protocol": row.protocol,
        "user": row.user.name,
        "user_id": row.user_id,
        "asset": row.asset,
        "login": row.login,
        "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at) if row.ended_at else None,
        "end_reason": row.end_reason,
        "session_state": row.session_state,
        "size_bytes": row.size_bytes,
        "finalized": row.finalized,
        "integrity": row.integrity,
    }


async def list_recordings(request: Request) -> Response:
    principal = await require(request, ADMIN, SECURITY, APPROVER, VENDOR)
    filters = {k: request.query_params.get(k, "") for k in FILTERS}
    rows, _ = await run_in_threadpool(load_recordings, services(request), principal, filters)
    return JSONResponse({"recordings": [recording_json(r) for r in rows]})


routes = [Route("/api/recordings", list_recordings, methods=["GET"])]
