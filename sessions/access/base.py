"""What every part of the access service shares: its dependencies, its write transaction whose
audit events are written once it has committed, and the grant-ended callbacks.

The service itself is :class:`sessions.access.service.AccessService`; the parts (filing,
approvals, grant lifecycle, lockout) are mixins over :class:`AccessCore`, so one object keeps
one set of listeners and callbacks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from policies.decision import Decision
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer
from sessions.clock import Clock
from sessions.db import session_scope
from sessions.errors import SessionsError
from sessions.models import GrantState, PlantFlag
from sessions.policy_data import LOCKOUT_FLAG

LIVE_GRANT_STATES = (GrantState.APPROVED, GrantState.ACTIVE)

# Called with (grant_id, reason) when a grant stops being usable, so live sessions can be cut.
GrantEnded = Callable[[str, str], None]


class AccessDenied(SessionsError):
    """Policy said no; ``reasons`` are the policy's."""

    code = "access_denied"

    def __init__(self, message: str, reasons: tuple[str, ...]) -> None:
        super().__init__(message)
        self.reasons = reasons


class AccessCore:
    """The engine, policy, audit log and clock, and the audited write transaction."""

    def __init__(
        self, engine: Engine, authorizer: Authorizer, audit: AuditLog, clock: Clock
    ) -> None:
        self._engine, self._authorizer, self._audit, self._clock = engine, authorizer, audit, clock
        self.on_grant_ended: list[GrantEnded] = []
        # Called (from any thread) after each committed state change: (kind, subject, details).
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        self._buffer = threading.local()

    def _record(self, kind: str, actor: str, outcome: str, subject: str, **details: Any) -> None:
        event = (kind, actor, outcome, subject, details)
        pending: list[Any] | None = getattr(self._buffer, "events", None)
        if pending is not None:
            pending.append(event)  # written after the transaction (see _tx)
        else:
            self._append(*event)

    def _append(self, kind: str, actor: str, outcome: str, subject: str, details: Any) -> None:
        self._audit.append(kind, actor=actor, outcome=outcome, subject=subject, details=details)
        if outcome == "ok":
            for listener in self.listeners:
                listener(kind, subject, {"actor": actor, **details})

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction whose audit events are appended once it has committed.

        Why: the audit log takes the database write lock itself, which this transaction holds.
        If the transaction fails, only the refusals it recorded are written (no false "ok").
        """
        events: list[tuple[str, str, str, str, Any]] = []
        self._buffer.events = events
        failed = False
        try:
            with session_scope(self._engine, write=True) as db:
                yield db
        except BaseException:
            failed = True
            raise
        finally:
            self._buffer.events = None
            for event in events:
                if not failed or event[2] != "ok":
                    self._append(*event)

    async def _ask(self, document: dict[str, Any], actor: str, purpose: str) -> Decision:
        return await self._authorizer.decide(document, actor=actor, purpose=purpose)

    def _ended(self, grant_id: str, reason: str) -> None:
        for callback in self.on_grant_ended:
            callback(grant_id, reason)

    def lockout_active(self) -> bool:
        """Whether the emergency vendor lockout is on (the database flag is the truth)."""
        with session_scope(self._engine) as db:
            return self._locked(db)

    @staticmethod
    def _locked(db: Session) -> bool:
        flag = db.get(PlantFlag, LOCKOUT_FLAG)
        return bool(flag and flag.value.get("vendors"))
