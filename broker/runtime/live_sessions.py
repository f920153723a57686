"""Live maintenance sessions on this broker, and the watchdog that ends them on time.

A session ends (its ``kill(reason)`` runs once) when:

* its deadline passes (grant window end or the policy's max duration) — checked by the
  watchdog every ``interval_s`` against the injected clock, so it ends within that interval;
* it has been idle (no byte either way) for its idle timeout;
* its grant ended for any other reason (revoke, lockout, eligibility): :meth:`end_grant`,
  wired to ``AccessService.on_grant_ended`` and safe to call from any thread;
* an admin kills it (:meth:`kill`).

Owner: the app's lifespan (``start``/``aclose``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sessions.clock import Clock
from sessions.session_end import EndCode, Ending, grant_ending

log = logging.getLogger("conduit.sessions")
ENDED_GRANTS_KEPT = 4096  # far more than can end while one session is being authorized


@dataclass(eq=False)
class LiveSession:
    id: str
    kind: str
    user_id: str
    user: str
    asset: str
    login: str | None
    grant_id: str | None
    source_ip: str | None
    started_at: datetime
    deadline: datetime
    deadline_reason: Ending  # grant window ended, or the policy's maximum duration
    idle_timeout_s: float
    last_activity: datetime
    kill: Callable[[Ending], None] = field(repr=False)
    bytes_up: int = 0
    bytes_down: int = 0
    ended: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "user": self.user,
            "asset": self.asset,
            "login": self.login,
            "grant": self.grant_id,
            "source_ip": self.source_ip,
            "started_at": self.started_at.isoformat(),
            "expires_at": self.deadline.isoformat(),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


class LiveSessions:
    """Registry of this broker's live sessions (event-loop confined, except end_grant)."""

    def __init__(self, clock: Clock, interval_s: float = 0.25) -> None:
        self._clock, self._interval = clock, interval_s
        self._sessions: dict[str, LiveSession] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Grants ended lately -> (sequence number of the end, why): a session authorized under
        # one just before it ended is ended as it is added (the end could not reach it then).
        self._ended_grants: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._grant_ends = 0

    def mark(self) -> int:
        """Taken before authorizing a session; pass it to :meth:`add`."""
        return self._grant_ends

    def add(self, session: LiveSession, since: int | None = None) -> None:
        """List a session. With ``since`` (a :meth:`mark` taken before it was authorized):
        if its grant ended after that mark, end it at once. A grant suspended and resumed
        before the mark (lockout) does not count."""
        self._sessions[session.id] = session
        ended = self._ended_grants.get(session.grant_id) if session.grant_id else None
        if ended is not None and since is not None and ended[0] > since:
            self._end(session, grant_ending(ended[1]))

    def remove(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def list(self) -> list[LiveSession]:
        return sorted(self._sessions.values(), key=lambda s: s.started_at)

    def kill(self, session_id: str, ending: Ending) -> bool:
        """End one live session; False if it is not live here."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        self._end(session, ending)
        return True

    def end_grant(self, grant_id: str, reason: str) -> None:
        """End every session of ``grant_id``; callable from any thread. ``reason`` is
        ``AccessService``'s text; its reason code is derived from it
        (:func:`sessions.session_end.grant_ending`)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._end_grant(grant_id, reason)
        else:
            loop.call_soon_threadsafe(self._end_grant, grant_id, reason)

    def _end_grant(self, grant_id: str, reason: str) -> None:
        self._grant_ends += 1
        self._ended_grants[grant_id] = (self._grant_ends, reason)
        self._ended_grants.move_to_end(grant_id)
        while len(self._ended_grants) > ENDED_GRANTS_KEPT:
            self._ended_grants.popitem(last=False)
        ending = grant_ending(reason)
        for session in [s for s in self._sessions.values() if s.grant_id == grant_id]:
            self._end(session, ending)

    def _end(self, session: LiveSession, reason: Ending) -> None:
        if session.ended:
            return
        session.ended = True
        self._sessions.pop(session.id, None)
        try:
            session.kill(reason)
        except Exception:  # one broken session must not stop the others from ending
            log.exception("ending session %s failed", session.id)

    def check(self) -> None:
        """One watchdog round: end sessions past their deadline or idle timeout."""
        now = self._clock.now()
        for session in list(self._sessions.values()):
            if now >= session.deadline:
                self._end(session, session.deadline_reason)
            elif (now - session.last_activity).total_seconds() >= session.idle_timeout_s:
                idle = f"idle for {int(session.idle_timeout_s)} s"
                self._end(session, Ending(EndCode.IDLE_TIMEOUT, idle))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._watch())

    async def aclose(self, reason: str = "broker shutting down") -> None:
        for session in list(self._sessions.values()):
            self._end(session, Ending(EndCode.BROKER_SHUTDOWN, reason))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
