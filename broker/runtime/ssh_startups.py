"""Unauthenticated connections to the SSH front door: capped overall and per source address.

Like OpenSSH's ``MaxStartups start:rate:full``: while fewer than ``start`` connections are
unauthenticated every new one is taken; from ``start`` on a new one is refused with probability
``rate`` % rising linearly to 100 % at ``full``. On top of that no single source address may
hold more than ``per_source`` unauthenticated connections (OpenSSH's ``PerSourceMaxStartups``);
with ``per_source`` below ``start`` (the defaults, 8 and 10) one host alone can never push the
door into refusing anybody else. A connection stops counting once it has authenticated (asked
lazily, at the next admission: no hook in the authentication path is needed).

:class:`StartupGate` decides and counts. :class:`StartupListener` is the front door's TCP
listener (handed to ``asyncssh.listen`` as its ``tunnel``, the hook asyncssh offers for
supplying connections): it asks the gate about every accepted connection *before* asyncssh sees
it, so a refused one costs no key exchange. It gets the SSH version line and a disconnect
message naming the reason, then the door half-closes and reads until the client hangs up (at
most :data:`REFUSAL_LINGER_S`), so that the client reads the reason instead of a reset (OpenSSH
prints ``Received disconnect ...: conduit: too many unauthenticated connections ...``).
:class:`AuditThrottle` keeps a flood of refusals from becoming a flood of audit events: one
event per source and kind per minute, carrying how many were left out since the previous one.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

_SPEC = re.compile(r"^(\d{1,6})(?::(\d{1,3}):(\d{1,6}))?$")
REFUSAL_LINGER_S = 2.0
DISC_TOO_MANY_CONNECTIONS = 12  # RFC 4253 section 11.1

PER_SOURCE = "max_startups_per_source"
OVERALL = "max_startups"


@dataclass(frozen=True)
class StartupLimits:
    start: int
    rate: int  # percent refused at ``start``
    full: int
    per_source: int

    @classmethod
    def parse(cls, spec: str, per_source: int) -> StartupLimits:
        """``"10:30:100"`` or ``"N"`` (a hard limit: ``N:100:N``); raises ValueError."""
        match = _SPEC.fullmatch(spec.strip())
        if match is None:
            raise ValueError(f"max_startups {spec!r} is not start:rate:full (e.g. 10:30:100) or N")
        start = int(match[1])
        rate, full = (int(match[2]), int(match[3])) if match[2] else (100, start)
        if not 1 <= start <= full or not 0 <= rate <= 100:
            raise ValueError(
                f"max_startups {spec!r}: need 1 <= start <= full and a rate of 0-100 (percent)"
            )
        if per_source < 1:
            raise ValueError("max_startups_per_source must be at least 1")
        return cls(start, rate, full, per_source)


class StartupGate:
    """Counts unauthenticated connections (keyed by any hashable) and decides admissions."""

    def __init__(
        self,
        limits: StartupLimits,
        authenticated: Callable[[Hashable], bool],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.limits = limits
        self._authenticated = authenticated
        self._rng = rng
        self._open: dict[Hashable, str] = {}  # connection -> source address
        self._per_source: dict[str, int] = {}

    @property
    def unauthenticated(self) -> int:
        self._purge()
        return len(self._open)

    def admit(self, key: Hashable, source: str) -> str | None:
        """Count ``key`` (from ``source``) and return None, or return why it is refused."""
        self._purge()
        limits, startups = self.limits, len(self._open)
        if self._per_source.get(source, 0) >= limits.per_source:
            return PER_SOURCE
        if startups >= limits.full:
            return OVERALL
        if startups >= limits.start:
            share = (startups - limits.start) / max(1, limits.full - limits.start)
            chance = (limits.rate + (100 - limits.rate) * share) / 100
            if self._rng() < chance:
                return OVERALL
        self._open[key] = source
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return None

    def release(self, key: Hashable) -> None:
        """``key`` authenticated or went away (idempotent)."""
        source = self._open.pop(key, None)
        if source is None:
            return
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]

    def _purge(self) -> None:
        for key in [k for k in self._open if self._authenticated(k)]:
            self.release(key)


class AuditThrottle:
    """At most one audit event per (kind, source) per ``window_s``; counts the rest."""

    def __init__(self, clock: Callable[[], float], window_s: float = 60.0, limit: int = 4096):
        self._clock, self._window, self._limit = clock, window_s, limit
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (last event, left out)

    def allow(self, kind: str, source: str) -> int | None:
        """None: leave this one out; else record it, with how many were left out before it."""
        now = self._clock()
        key = (kind, source)
        last = self._last.get(key)
        if last is not None and now - last[0] < self._window:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self._limit:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self._window}
            if len(self._last) >= self._limit:
                return None  # that many sources within a window: the log still has each one
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0


# --------------------------------------------------------------------------- the listener


def disconnect_packet(code: int, message: str) -> bytes:
    """An unencrypted SSH_MSG_DISCONNECT binary packet (RFC 4253 sections 6 and 11.1)."""
    text = message.encode()
    payload = b"\x01" + struct.pack(">II", code, len(text)) + text + struct.pack(">I", 0)
    padding = 8 - (len(payload) + 5) % 8
    padding += 8 if padding < 4 else 0
    body = bytes([padding]) + payload + os.urandom(padding)
    return struct.pack(">I", len(body)) + body


class _Inner(Protocol):
    """The asyncssh connection (an asyncio protocol) a gate hands an admitted socket to."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class _Gate(asyncio.Protocol):
    """One accepted TCP connection: handed to asyncssh if admitted, else told why and closed."""

    def __init__(self, listener: StartupListener, factory: Callable[[], _Inner]) -> None:
        self._listener, self._factory = listener, factory
        self.inner: _Inner | None = None
        self._transport: asyncio.Transport | None = None
        self._linger: asyncio.TimerHandle | None = None

    def authenticated(self) -> bool:
        return self.inner is not None and self.inner.get_extra_info("username") is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._listener.gates.add(self)
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        why = self._listener.gate.admit(self, source)
        if why is None:
            self.inner = self._factory()
            self.inner.connection_made(transport)
            return
        message = self._listener.refused(source, why)
        transport.write(
            self._listener.version + disconnect_packet(DISC_TOO_MANY_CONNECTIONS, message)
        )
        if transport.can_write_eof():
            transport.write_eof()  # the client reads the reason, then hangs up itself
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(REFUSAL_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)  # a refused client's bytes are read and dropped

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        if self._transport is not None:
            self._transport.close()
        return False

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.gates.discard(self)
        self._listener.gate.release(self)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.inner is not None:
            self.inner.connection_lost(exc)


def _authenticated(key: Hashable) -> bool:
    return isinstance(key, _Gate) and key.authenticated()


class StartupListener:
    """The front door's listener: ``asyncssh.listen(..., tunnel=StartupListener(...))``.

    asyncssh calls :meth:`create_server` with its per-connection protocol factory; every
    accepted connection passes the gate first. ``refused(source, reason)`` is told about each
    refusal and returns the message the client gets.
    """

    def __init__(
        self,
        limits: StartupLimits,
        refused: Callable[[str, str], str],
        *,
        version: bytes = b"SSH-2.0-Conduit\r\n",
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.gate = StartupGate(limits, _authenticated, rng)
        self.refused = refused
        self.version = version
        self.gates: set[_Gate] = set()  # every open connection

    def abort_unauthenticated(self) -> None:
        """Shutting down: drop connections that never signed in (refused ones included)."""
        for gate in [g for g in self.gates if not g.authenticated()]:
            gate.abort()

    async def create_server(
        self, session_factory: Callable[[str, int], Any], listen_host: str, listen_port: int
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: _Gate(self, lambda: session_factory("", 0)),
            listen_host,
            listen_port,
            reuse_address=True,
        )

    def close(self) -> None:
        """Nothing of its own to close (asyncssh closes the server it got)."""

    async def wait_closed(self) -> None:
        """See :meth:`close`."""
