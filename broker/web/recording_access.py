"""The recording a page asks for, if the user may see it, and where its files are.

* :func:`visible_recording`: the ``{id}`` of the path as a row (:mod:`broker.http.recording_rows`);
  404 if there is none, 403 audited ``recording.access.denied`` if the user may not see it
  (:func:`broker.http.visibility.may_see`).
* :func:`recording_directory`: ``Recording.path`` is the recording directory, absolute or
  relative to ``<data_dir>`` or to ``<data_dir>/recordings``; it must lie inside
  ``<data_dir>/recordings`` (404 ``recording_missing`` otherwise). Paths are never shown.
"""

from __future__ import annotations

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from broker.auth.auth import Principal
from broker.http.recording_rows import RecordingRow, load_recordings
from broker.http.visibility import may_see
from broker.runtime.errors import BrokerError, Forbidden
from broker.services import Services, services


async def visible_recording(request: Request, principal: Principal) -> RecordingRow:
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


def recording_directory(svc: Services, row: RecordingRow) -> Path:
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
