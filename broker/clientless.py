"""Clientless SSH sign-in: keyboard-interactive shows a URL and a code; a browser approves.

A vendor without a certificate runs plain ``ssh LOGIN@ASSET@broker``. The front door answers
keyboard-interactive with ``Open <url> and approve code ABCD-EFGH, then press Enter``; the
vendor signs in to the broker in a browser (OIDC, MFA as the IdP requires), sees which client
(address), login and asset asked, and approves or denies. Approval binds the SSH connection to
the approving user; the code is single use and expires after ``ssh.clientless_code_ttl_s``.
Pending codes live in this broker's memory only (the SSH connection is here too). The
browser side is :mod:`broker.clientless_pages`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


@dataclass(eq=False)
class Pending:
    code: str
    login: str
    asset: str
    peer: str | None
    expires: float  # monotonic
    done: asyncio.Event = field(default_factory=asyncio.Event)
    user_id: str | None = None
    denied: bool = False


class ClientlessApprovals:
    """Pending clientless sign-ins, keyed by code (event-loop confined)."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._pending: dict[str, Pending] = {}

    def new(self, *, login: str, asset: str, peer: str | None) -> Pending:
        self._expire()
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(8))
        code = f"{raw[:4]}-{raw[4:]}"
        pending = Pending(code, login, asset, peer, time.monotonic() + self._ttl)
        self._pending[code] = pending
        return pending

    def get(self, code: str) -> Pending | None:
        self._expire()
        return self._pending.get(code.strip().upper())

    def decide(self, code: str, *, user_id: str, approve: bool) -> Pending | None:
        pending = self.get(code)
        if pending is None or pending.done.is_set():
            return None
        pending.user_id = user_id if approve else None
        pending.denied = not approve
        pending.done.set()
        del self._pending[pending.code]
        return pending

    async def wait(self, pending: Pending) -> str | None:
        """The approving user's id, or None when denied or expired."""
        left = pending.expires - time.monotonic()
        try:
            await asyncio.wait_for(pending.done.wait(), max(0.0, left))
        except TimeoutError:
            self._pending.pop(pending.code, None)
            return None
        return pending.user_id

    def _expire(self) -> None:
        now = time.monotonic()
        for code in [c for c, p in self._pending.items() if p.expires <= now]:
            del self._pending[code]
