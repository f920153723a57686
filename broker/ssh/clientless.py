"""Clientless SSH sign-in: the vendor *types* the code from their terminal into the broker's page.

A vendor without a certificate runs plain ``ssh LOGIN@ASSET@broker``. Keyboard-interactive
shows the address of the approval page (never with the code in it) and a code; the vendor signs
in to the broker in a browser, types the code, checks what the page shows (the connecting
address, the asset, the login, when it asked, and a plain warning) and approves or denies.
Approval binds that one SSH connection to the approving user.

Why typed and never linked: a code in a link proves nothing. Anyone could start a connection
and send a signed-in colleague "open this link, click Approve", binding the attacker's
connection to the colleague's identity and grants. A link that carries a code is refused, the
code it carries is cancelled (so the connection that asked is refused), and both are audited.

Rules (state in this broker's memory only; the SSH connection is here too):

* a code lives ``ssh.clientless_code_ttl_s`` (at most 120 s) on the injected clock and is used
  once: approval, denial, expiry, cancellation (the connection went away, the code arrived in a
  link, a second person typed it, the asset was switched off meanwhile) all end it;
* one code per SSH connection; pending codes are capped per source address (IPv6 per /64) and
  overall (``ssh.clientless_max_pending_per_ip``, ``ssh.clientless_max_pending``);
* typed codes are compared in constant time; a user who types :data:`WRONG_CODE_LIMIT` wrong
  codes within :data:`WRONG_CODE_WINDOW_S` is refused (even a right code) until the oldest
  failure leaves the window;
* refusals to anonymous SSH clients are audited at most once per reason and source address per
  code lifetime (an unauthenticated client must not be able to flood the audit chain).

The switches: ``ssh.clientless_enabled`` (global) and :mod:`sessions.clientless` (per asset:
label ``clientless``, default by Purdue level). The browser side is
:mod:`broker.web.clientless_pages`; the SSH side is the keyboard-interactive methods of
:mod:`broker.ssh.front`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, NoReturn

from broker.runtime.errors import BrokerError
from broker.runtime.settings import SshSettings
from sessions.audit import AuditLog
from sessions.clientless import ClientlessSwitch
from sessions.clock import Clock
from sessions.models import AuditOutcome

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: 8 characters = 40 bits
WRONG_CODE_LIMIT = 5
WRONG_CODE_WINDOW_S = 600
POLL_S = 0.25  # how often a waiting SSH connection re-reads the (injected) clock
ANONYMOUS = "anonymous"


class PendingState:
    """Where one code is in its life; every state but PENDING is final."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # the SSH connection went away
    REFUSED = "refused"  # arrived in a link, typed by two people, asset switched off
    ALL: ClassVar[tuple[str, ...]] = (PENDING, APPROVED, DENIED, EXPIRED, CANCELLED, REFUSED)


class ClientlessRefused(BrokerError):
    """Clientless sign-in refused; ``message`` is shown to the person (vendor or approver)."""

    code = "clientless_refused"
    status = 403


class CodeRejected(BrokerError):
    """A typed code, or a review, that matches nothing pending for this user."""

    code = "clientless_code_rejected"
    status = 404

    def __init__(self, message: str, *, reason: str, pending: Pending | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # for the audit log
        self.pending = pending


class TooManyWrongCodes(BrokerError):
    """The user typed too many wrong codes recently."""

    code = "clientless_rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after_s: int, first: bool) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.first = first  # the first refusal of this lock-out (audit it once)


@dataclass(eq=False)
class Pending:
    """One code, issued to one SSH connection."""

    ref: str  # public reference for the audit log and the review form; never the code
    code: str
    login: str
    asset: str
    peer: str | None
    started: datetime
    expires: datetime
    state: str = PendingState.PENDING
    user_id: str | None = None
    claimed_by: str | None = None  # the signed-in user who typed the code
    why: str = ""  # for the vendor, when refused
    alive: Callable[[], bool] = lambda: True  # is the SSH connection still open?
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def details(self) -> dict[str, Any]:
        """What the audit log keeps about it (no code)."""
        return {
            "ref": self.ref,
            "login": self.login,
            "asset": self.asset,
            "client": self.peer,
            "started": self.started,
        }


def normalize(typed: str) -> str:
    """``abcd efgh`` / ``ABCD-EFGH`` / ``abcdefgh`` → ``ABCD-EFGH``; "" if it cannot be a code."""
    raw = "".join(ch for ch in typed[:64].upper() if ch not in " -\t")
    if len(raw) != 8 or any(ch not in _ALPHABET for ch in raw):
        return ""
    return f"{raw[:4]}-{raw[4:]}"


def source_key(peer: str | None) -> str:
    """What the per-source cap counts by: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(peer or "")
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ClientlessApprovals:
    """Pending clientless sign-ins (event-loop confined: the SSH front door and the pages
    run on the broker's one loop)."""

    def __init__(
        self,
        settings: SshSettings,
        clock: Clock,
        audit: AuditLog,
        switch: Callable[[str], ClientlessSwitch],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._audit = audit
        self._switch = switch
        self._ttl = timedelta(seconds=settings.clientless_code_ttl_s)
        self._pending: dict[str, Pending] = {}  # ref -> pending code
        self._wrong: dict[str, deque[datetime]] = {}  # user id -> times of wrong codes
        self._locked_audited: dict[str, datetime] = {}  # user id -> lock-out audited until
        self._refusals_audited: dict[tuple[str, str], datetime] = {}

    @property
    def ttl_s(self) -> int:
        return self._settings.clientless_code_ttl_s

    # ---- the SSH side ---------------------------------------------------------------------

    async def open(
        self,
        *,
        login: str,
        asset: str,
        peer: str | None,
        alive: Callable[[], bool] = lambda: True,
    ) -> Pending:
        """A new code for one SSH connection; :class:`ClientlessRefused` if not allowed.

        ``alive`` tells whether that connection is still open: a code whose connection has
        gone is cancelled at the next look (it neither counts against the caps nor works).
        """
        s = self._settings
        if not s.clientless_enabled:
            await self._refuse(
                "clientless sign-in is switched off on this broker; "
                "use a certificate (conduit ssh-cert)",
                reason="switched off on this broker",
                login=login, asset=asset, peer=peer,
            )  # fmt: skip
        full = self._over_cap(peer)
        if full is not None:
            await self._refuse(full[0], reason=full[1], login=login, asset=asset, peer=peer)
        switch = await asyncio.to_thread(self._switch, asset)
        if not switch.allowed:
            await self._refuse(  # the same words for unknown and switched-off assets
                f"clientless sign-in is not available for {asset}; "
                "use a certificate (conduit ssh-cert)",
                reason=switch.reason,
                login=login, asset=asset, peer=peer,
            )  # fmt: skip
        full = self._over_cap(peer)  # again: other connections may have taken the last slot
        if full is not None:
            await self._refuse(full[0], reason=full[1], login=login, asset=asset, peer=peer)
        now = self._clock.now()
        codes = {p.code for p in self._pending.values()}
        code = ""
        while not code or code in codes:
            raw = "".join(secrets.choice(_ALPHABET) for _ in range(8))
            code = f"{raw[:4]}-{raw[4:]}"
        pending = Pending(
            secrets.token_hex(8), code, login, asset, peer, now, now + self._ttl, alive=alive
        )
        self._pending[pending.ref] = pending
        return pending

    def instructions(self, pending: Pending, approve_url: str) -> str:
        """What the vendor's terminal shows (the page address carries no code)."""
        return (
            f"No Conduit certificate was offered. To connect to {pending.asset} as "
            f"{pending.login}:\r\n"
            f"  1. open {approve_url} in your browser and sign in\r\n"
            f"  2. type this code there: {pending.code}\r\n"
            f"  3. check that the page shows {pending.asset} and {pending.login}, approve,\r\n"
            "     then press Enter here.\r\n"
            f"The code works once, for {self.ttl_s} seconds. Type it yourself; never send it "
            "to anyone, and never approve a code you did not get in your own terminal."
        )

    async def wait(self, pending: Pending) -> str:
        """The approving user's id; :class:`ClientlessRefused` (with the reason for the vendor)
        when denied, expired or refused. Cancelled if the connection goes away meanwhile."""
        try:
            while pending.state == PendingState.PENDING:
                left = (pending.expires - self._clock.now()).total_seconds()
                if left <= 0:
                    self._finish(pending, PendingState.EXPIRED)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.done.wait(), min(left, POLL_S))
        finally:
            if pending.state == PendingState.PENDING:  # cancelled: the connection went away
                self._finish(pending, PendingState.CANCELLED)
        if pending.state == PendingState.APPROVED and pending.user_id is not None:
            return pending.user_id
        if pending.state == PendingState.EXPIRED:
            await asyncio.to_thread(
                self._audit.append,
                "ssh.clientless.expired",
                actor=ANONYMOUS,
                outcome=AuditOutcome.REJECTED,
                subject=f"asset:{pending.asset}",
                source_ip=pending.peer,
                details=pending.details(),
            )
            raise ClientlessRefused(
                f"the sign-in code expired after {self.ttl_s} seconds; connect again for a new one"
            )
        if pending.state == PendingState.DENIED:
            raise ClientlessRefused("the sign-in was denied in the browser")
        raise ClientlessRefused(f"sign-in refused: {pending.why or pending.state}")

    # ---- the browser side -----------------------------------------------------------------

    def lookup(self, typed: str, *, user_id: str) -> Pending:
        """The pending code ``user_id`` typed, now claimed by them for review.

        Raises :class:`TooManyWrongCodes` while the user is locked out (even for a right code)
        and :class:`CodeRejected` for anything that is not a live code (counted as wrong).
        """
        self._sweep()
        now = self._clock.now()
        locked = self._locked_for(user_id, now)
        if locked is not None:
            until = self._locked_audited.get(user_id)
            first = until is None or until <= now
            if first:
                self._locked_audited[user_id] = now + timedelta(seconds=locked)
            raise TooManyWrongCodes(
                f"too many wrong codes; try again in {locked} seconds",
                retry_after_s=locked,
                first=first,
            )
        pending = self._find(typed)
        if pending is None:
            self._wrong.setdefault(user_id, deque()).append(now)
            raise CodeRejected(
                "That code is unknown, used or expired. Type the code your own terminal shows, "
                "or connect again to get a new one.",
                reason="unknown, used or expired code",
            )
        if pending.claimed_by not in (None, user_id):
            self._finish(
                pending, PendingState.REFUSED, "the code was typed by more than one person"
            )
            raise CodeRejected(
                "That code was already typed by someone else, so it no longer works. "
                "Connect again to get a new one.",
                reason="typed by a second person; code cancelled",
                pending=pending,
            )
        pending.claimed_by = user_id
        return pending

    def from_link(self, typed: str) -> Pending | None:
        """A code arrived in a link: cancel it (if live) so the connection that asked is refused."""
        self._sweep()
        pending = self._find(typed)
        if pending is not None:
            self._finish(
                pending, PendingState.REFUSED, "the code was opened from a link, not typed"
            )
        return pending

    async def decide(self, ref: str, *, user_id: str, approve: bool) -> Pending:
        """Approve or deny the code ``user_id`` reviewed (:meth:`lookup`); used once.

        Approval re-checks the asset's switch (an admin may have turned it off meanwhile).
        """
        pending = self._reviewed(ref, user_id)
        if approve:
            switch = await asyncio.to_thread(self._switch, pending.asset)
            pending = self._reviewed(ref, user_id)
            if not switch.allowed:
                why = f"clientless sign-in is not available for {pending.asset}"
                self._finish(pending, PendingState.REFUSED, why)
                raise ClientlessRefused(f"{why} ({switch.reason}); nothing was approved")
            pending.user_id = user_id
        self._finish(pending, PendingState.APPROVED if approve else PendingState.DENIED)
        return pending

    def pending_count(self) -> int:
        self._sweep()
        return len(self._pending)

    # ---- internals ------------------------------------------------------------------------

    def _reviewed(self, ref: str, user_id: str) -> Pending:
        self._sweep()
        pending = self._pending.get(ref[:64])
        if pending is None or pending.claimed_by != user_id:
            raise CodeRejected(
                "That sign-in is no longer pending (used, expired or cancelled).",
                reason="review of a code that is not pending for this user",
            )
        return pending

    def _find(self, typed: str) -> Pending | None:
        """Constant time in the code: every pending code is compared, no early exit."""
        wanted = normalize(typed).encode() or b"-" * 10
        found: Pending | None = None
        for pending in list(self._pending.values()):
            if hmac.compare_digest(pending.code.encode(), wanted) and found is None:
                found = pending
        return found

    def _finish(self, pending: Pending, state: str, why: str = "") -> None:
        if pending.state != PendingState.PENDING:
            return
        pending.state, pending.why = state, why
        pending.done.set()
        self._pending.pop(pending.ref, None)

    def _sweep(self) -> None:
        now = self._clock.now()
        for pending in list(self._pending.values()):
            if pending.expires <= now:
                self._finish(pending, PendingState.EXPIRED)
            elif not pending.alive():
                self._finish(pending, PendingState.CANCELLED)
        window = timedelta(seconds=WRONG_CODE_WINDOW_S)
        for user_id, times in list(self._wrong.items()):
            while times and times[0] <= now - window:
                times.popleft()
            if not times:
                del self._wrong[user_id]
        for key, until in list(self._refusals_audited.items()):
            if until <= now:
                del self._refusals_audited[key]
        for user_id, until in list(self._locked_audited.items()):
            if until <= now:
                del self._locked_audited[user_id]

    def _locked_for(self, user_id: str, now: datetime) -> int | None:
        times = self._wrong.get(user_id)
        if not times or len(times) < WRONG_CODE_LIMIT:
            return None
        free_at = times[-WRONG_CODE_LIMIT] + timedelta(seconds=WRONG_CODE_WINDOW_S)
        return max(1, int((free_at - now).total_seconds() + 0.999))

    def _over_cap(self, peer: str | None) -> tuple[str, str] | None:
        """(message for the vendor, reason for the audit log) when a cap is reached."""
        self._sweep()
        s = self._settings
        if len(self._pending) >= s.clientless_max_pending:
            return (
                "too many clientless sign-ins are pending on this broker; try again shortly",
                "too many pending codes on this broker",
            )
        key = source_key(peer)
        mine = sum(1 for p in self._pending.values() if source_key(p.peer) == key)
        if mine >= s.clientless_max_pending_per_ip:
            return (
                "too many clientless sign-ins are pending from your address; finish one or "
                f"wait up to {self.ttl_s} seconds",
                "too many pending codes from this address",
            )
        return None

    async def _refuse(
        self, message: str, *, reason: str, login: str, asset: str, peer: str | None
    ) -> NoReturn:
        """Audit (throttled per reason and source) and raise the refusal for the vendor."""
        now = self._clock.now()
        key = (reason, source_key(peer))
        if self._refusals_audited.get(key, now) <= now:
            self._refusals_audited[key] = now + self._ttl
            await asyncio.to_thread(
                self._audit.append,
                "ssh.clientless.refused",
                actor=ANONYMOUS,
                outcome=AuditOutcome.REJECTED,
                subject=f"asset:{asset}",
                source_ip=peer,
                details={"login": login, "asset": asset, "client": peer, "reason": reason},
            )
        raise ClientlessRefused(message)
