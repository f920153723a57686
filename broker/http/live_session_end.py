"""Ending a live session for an administrator: shared by the sessions page and the JSON API.

:func:`end_live_session` ends the session through the live registry (the session's own
``end(reason)``: its channels close, the asset-side commands are signalled, the row is closed)
and audits ``session.killed`` with the admin's reason. The caller has checked the admin role.
"""

from __future__ import annotations

from starlette.requests import Request

from broker.auth.auth import Principal
from broker.services import services
from sessions.session_end import EndCode, Ending


async def end_live_session(request: Request, principal: Principal, session_id: str) -> str | None:
    """End a live session for an admin (audited); the reason, or None if it is not live here."""
    svc = services(request)
    reason = f"terminated by an administrator ({principal.name or principal.email})"
    if not svc.live.kill(session_id, Ending(EndCode.ADMIN_KILL, reason)):
        return None
    await svc.record(
        request,
        "session.killed",
        actor=principal.user_id,
        outcome="ok",
        subject=f"session:{session_id}",
        details={"reason": reason},
    )
    return reason
