"""A user's status: disabling (offboarding) and enabling again, by an administrator.

:meth:`UserStatus.disable` first revokes the user's approved and active grants through
:meth:`AccessService.revoke` with the reason ``user disabled: <reason>``, so live sessions on
them end at once (``on_grant_ended``) with that one line; then sets ``User.disabled`` (from then
on sign-in, the browser cookie, CLI tokens and SSH certificates of the user are refused, and so
every new request), denies their pending requests (:meth:`AccessService.deny`, same reason),
revokes every credential of the user (:meth:`CredentialService.revoke_user`) and sweeps the
grants once more (one approved in between).
:meth:`UserStatus.enable` clears the flag only: no grant or credential comes back.

Failures: :class:`ValidationError` when the reason is empty or an admin names themselves,
:class:`NotFoundError` for an unknown user; nothing is changed then. Auditing is the caller's,
which knows the request (``user.disabled`` / ``user.enabled``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from sessions.access import AccessService
from sessions.access.base import LIVE_GRANT_STATES
from sessions.credentials import CredentialService, Revoked
from sessions.db import session_scope
from sessions.errors import ConflictError, NotFoundError, ValidationError
from sessions.models import AccessRequest, AccessRequestState, Grant, User

REASON_MAX = 200


@dataclass(frozen=True)
class StatusChange:
    """What a disable or enable did: ``changed`` is False when the user already was so."""

    user_id: str
    disabled: bool
    changed: bool
    revoked: Revoked = field(default_factory=Revoked)
    grants: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "disabled": self.disabled,
            "changed": self.changed,
            "revoked": self.revoked.as_dict(),
            "grants": list(self.grants),
            "requests": list(self.requests),
        }


class UserStatus:
    """Disable and enable users (the caller has checked the actor is an admin)."""

    def __init__(self, engine: Engine, credentials: CredentialService, access: AccessService):
        self._engine, self._credentials, self._access = engine, credentials, access

    def disable(self, user_id: str, *, by: str, reason: str) -> StatusChange:
        """Disable ``user_id`` and end everything they hold (see the module docstring)."""
        why = _reason(reason)
        if user_id == by:
            raise ValidationError("you cannot disable your own account; ask another admin")
        self._exists(user_id)
        # Grants first: a live session then ends with the grant's reason (the one line the
        # vendor sees) before the credential watch notices the flag or the revocations.
        ended = self._end_grants(user_id, by, f"user disabled: {why}")
        changed = self._set(user_id, True)
        denied = self._deny_pending(user_id, by, f"user disabled: {why}")
        revoked = self._credentials.revoke_user(user_id, by=by, reason=f"user disabled: {why}")
        ended += self._end_grants(user_id, by, f"user disabled: {why}")  # approved meanwhile
        return StatusChange(user_id, True, changed, revoked, tuple(ended), tuple(denied))

    def enable(self, user_id: str, *, by: str, reason: str) -> StatusChange:
        """Clear the flag; the user may sign in again but has no grant or credential back."""
        _reason(reason)
        return StatusChange(user_id, False, self._set(user_id, False))

    def _end_grants(self, user_id: str, by: str, reason: str) -> list[str]:
        ended: list[str] = []
        for grant_id in self._live_grants(user_id):
            try:
                self._access.revoke(grant_id, by, reason)
            except ConflictError:  # ended meanwhile (expired, revoked by someone else)
                continue
            ended.append(grant_id)
        return ended

    def _deny_pending(self, user_id: str, by: str, reason: str) -> list[str]:
        with session_scope(self._engine) as db:
            query = select(AccessRequest.id).where(
                AccessRequest.requester_id == user_id,
                AccessRequest.state == AccessRequestState.PENDING,
            )
            pending = list(db.exec(query))
        denied: list[str] = []
        for request_id in pending:
            try:
                self._access.deny(request_id, by, reason)
            except ConflictError:  # decided meanwhile; an approval is caught by the sweep
                continue
            denied.append(request_id)
        return denied

    def _exists(self, user_id: str) -> None:
        with session_scope(self._engine) as db:
            if db.get(User, user_id) is None:
                raise NotFoundError(f"no user {user_id}")

    def _set(self, user_id: str, disabled: bool) -> bool:
        with session_scope(self._engine, write=True) as db:
            user = db.get(User, user_id)
            if user is None:
                raise NotFoundError(f"no user {user_id}")
            changed = user.disabled != disabled
            user.disabled = disabled
            db.add(user)
            return changed

    def _live_grants(self, user_id: str) -> list[str]:
        with session_scope(self._engine) as db:
            query = select(Grant.id).where(
                Grant.user_id == user_id, col(Grant.state).in_(LIVE_GRANT_STATES)
            )
            return list(db.exec(query))


def _reason(reason: str) -> str:
    why = reason.strip()[:REASON_MAX]
    if not why:
        raise ValidationError("a reason is required to disable or enable a user")
    return why
