"""Which credential an SSH front-door connection runs on, checked per channel and watched live.

A connection signs in with a certificate from the user CA (principal ``c:<serial>`` names its
``ssh_certificates`` row) or clientless, approved in a browser session. Either way that
credential is looked up on every channel (:meth:`FrontCredentials.certificate`,
:meth:`FrontCredentials.approval`): revoked, its token or web session gone, its user disabled
or without a role it was issued under, and the channel is refused. Its ``amr``/``acr``/
``auth_time`` are what policy sees.

:class:`CredentialWatch` ends live sessions whose credential is revoked meanwhile (checked
every ``interval_s`` against the database, so revocations made through any broker count).
Owner: the app's lifespan (``start``/``aclose``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from broker.auth.auth import CURRENT_PRINCIPAL
from broker.runtime.live_sessions import LiveSessions
from broker.runtime.periodic import Periodic
from broker.ssh.clientless import ClientlessApprovals, Pending
from sessions.credentials import AuthContext, CredentialRef, CredentialRefused, CredentialService
from sessions.session_end import EndCode, Ending

log = logging.getLogger("conduit.credentials")


class ApprovingSessions(ClientlessApprovals):
    """Clientless approvals that also remember which browser session approved each code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._approved_by: weakref.WeakKeyDictionary[Pending, CredentialRef] = (
            weakref.WeakKeyDictionary()
        )

    async def decide(self, ref: str, *, user_id: str, approve: bool) -> Pending:
        principal = CURRENT_PRINCIPAL.get()  # the request deciding (broker.web.clientless_pages)
        pending = await super().decide(ref, user_id=user_id, approve=approve)
        if (
            approve
            and principal is not None
            and principal.user_id == user_id
            and principal.credential is not None
        ):
            self._approved_by[pending] = principal.credential
        return pending

    def approved_by(self, pending: Pending) -> CredentialRef | None:
        return self._approved_by.get(pending)


class FrontCredentials:
    """Credential look-ups for the front door (blocking: call in a worker thread)."""

    def __init__(self, credentials: CredentialService, approvals: ApprovingSessions) -> None:
        self._credentials, self._approvals = credentials, approvals

    def certificate(self, serial: int | None, user_id: str) -> tuple[AuthContext, CredentialRef]:
        if serial is None:
            raise CredentialRefused(
                "this certificate names no Conduit serial (issued before certificates were "
                "tracked); run `conduit ssh-cert` again"
            )
        cert = self._credentials.certificate(serial, user_id)
        return cert.auth, CredentialRef("cert", str(serial))

    def approval(self, pending: Pending) -> tuple[AuthContext, CredentialRef]:
        ref = self._approvals.approved_by(pending)
        if ref is None or ref.kind != "session":
            raise CredentialRefused("the clientless sign-in was not approved in a browser session")
        return self._credentials.session_context(ref.key), ref

    def revoked(self, refs: dict[str, CredentialRef]) -> dict[str, str]:
        return self._credentials.revoked(refs)


class CredentialWatch:
    """Ends live sessions whose credential was revoked (or whose user lost access)."""

    def __init__(
        self, live: LiveSessions, credentials: FrontCredentials, interval_s: float = 0.5
    ) -> None:
        self._live, self._credentials = live, credentials
        self._tracked: dict[str, CredentialRef] = {}
        self._periodic = Periodic(self.check, interval_s, "credential watch round", log)

    def track(self, session_id: str, credential: CredentialRef) -> None:
        self._tracked[session_id] = credential

    async def check(self) -> None:
        """One round: look every tracked live session's credential up, end the dead ones."""
        for session_id in [s for s in self._tracked if self._live.get(s) is None]:
            del self._tracked[session_id]
        if not self._tracked:
            return
        dead = await asyncio.to_thread(self._credentials.revoked, dict(self._tracked))
        for session_id, why in dead.items():
            self._tracked.pop(session_id, None)
            self._live.kill(
                session_id, Ending(EndCode.CREDENTIAL_REVOKED, f"credential revoked: {why}")
            )

    def start(self) -> None:
        self._periodic.start()

    async def aclose(self) -> None:
        await self._periodic.aclose()
