"""Request pacing shared by the inspectors: a token bucket and a FIFO of allowed requests.

Nothing here reads the wall clock: every call takes ``now`` from the inspector's injected clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sessions.clock import Clock


class TokenBucket:
    """Requests-per-second limiter on the injected clock; share one per asset across relays.

    Holds at most ``burst`` tokens (default 1: requests are spaced by at least 1/rate) and starts
    full.  A clock that steps backwards earns no tokens.
    """

    def __init__(self, rate: float, clock: Clock, burst: float = 1.0) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError("TokenBucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = clock.now()

    def _refill(self, now: datetime) -> None:
        elapsed = (now - self._last).total_seconds()
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now

    def try_take(self, now: datetime) -> bool:
        """Take one token if there is one at ``now``."""
        self._refill(now)
        if self._tokens >= 1 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1)
            return True
        return False

    def available_at(self, now: datetime) -> datetime:
        """The earliest time a token will be there (``now`` if one already is)."""
        self._refill(now)
        missing = 1 - self._tokens
        if missing <= 1e-9:
            return now
        return max(now, self._last) + timedelta(seconds=math.ceil(missing / self.rate * 1e6) / 1e6)


@dataclass(slots=True)
class Queued:
    """One allowed request waiting for a token: its wire bytes, its key and its ops record."""

    wire: bytes
    key: Any
    record: dict[str, Any]


class RequestQueue:
    """Allowed requests in arrival order, released as the bucket allows (no bucket: at once).

    :meth:`push` returns False when ``max_queued`` requests already wait (the caller refuses
    the request as busy); :meth:`release` returns what may go to the server now, in order.
    """

    def __init__(self, limiter: TokenBucket | None, max_queued: int = 64) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be positive")
        self._limiter = limiter
        self._max = max_queued
        self._queue: deque[Queued] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self._max

    def push(self, item: Queued) -> bool:
        if self.full:
            return False
        self._queue.append(item)
        return True

    def release(self, now: datetime) -> list[Queued]:
        out: list[Queued] = []
        while self._queue:
            if self._limiter is not None and not self._limiter.try_take(now):
                break
            out.append(self._queue.popleft())
        return out

    def next_at(self, now: datetime) -> datetime | None:
        """When to poll to release the head of the queue (None: nothing waits)."""
        if not self._queue or self._limiter is None:
            return None
        return self._limiter.available_at(now)

    def discard(self) -> list[Queued]:
        items = list(self._queue)
        self._queue.clear()
        return items


class RequestFlow:
    """The allowed requests of one connection: queued (paced), then pending until answered.

    Shared by the inspectors whose requests are answered one by one under a key (S7: the PDU
    reference; EtherNet/IP: the sender context or the connected sequence count). Records are
    the ops-log dicts; ``result`` is set on them here (``not_sent``, ``no_response``).
    """

    def __init__(
        self, limiter: TokenBucket | None, max_queued: int = 64, timeout_s: float = 5.0
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.queue = RequestQueue(limiter, max_queued)
        self.pending: dict[Any, dict[str, Any]] = {}
        self._timeout = timedelta(seconds=timeout_s)
        self._deadlines: dict[Any, datetime] = {}  # pending key -> when it is given up
        self.closed: str | None = None
        self.closing = False
        # Answers in request order: the broker's refusals wait behind earlier allowed requests
        # (clients such as cpppo's match answers by order); entries are [key, refusal, done].
        self._order: deque[list[Any]] = deque()
        self._entries: dict[Any, list[Any]] = {}

    def push(self, item: Queued) -> bool:
        """Queue an allowed request (False: the queue is full)."""
        if not self.queue.push(item):
            return False
        self._done(item.key)  # a reused key: the older request can no longer be told apart
        entry = [item.key, None, False]
        self._order.append(entry)
        self._entries[item.key] = entry
        return True

    def refuse(self, reply: bytes) -> bytes:
        """The broker's answer to a refused request: now, or held until earlier ones are."""
        if not self._order:
            return reply
        self._order.append([None, reply, True])
        return b""

    def ready(self) -> bytes:
        """Refusals whose earlier requests have all been answered (or given up)."""
        out = bytearray()
        while self._order and self._order[0][2]:
            out += self._order.popleft()[1] or b""
        return bytes(out)

    def _done(self, key: Any) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry[2] = True

    @property
    def accepting(self) -> bool:
        return not self.queue.full and not self.closing

    @property
    def drained(self) -> bool:
        return not self.pending

    def release(self, now: datetime) -> bytes:
        """Wire bytes of the requests due now (they become pending)."""
        if self.closed is not None or self.closing:
            return b""
        out = bytearray()
        for item in self.queue.release(now):
            self.pending[item.key] = item.record
            self._deadlines[item.key] = now + self._timeout
            out += item.wire
        return bytes(out)

    def answered(self, key: Any) -> dict[str, Any] | None:
        self._done(key)
        self._deadlines.pop(key, None)
        return self.pending.pop(key, None)

    def expire(self, now: datetime) -> list[dict[str, Any]]:
        """Give up on requests unanswered past their deadline (logged ``no_response``)."""
        records = []
        for key, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[key]
                self._done(key)
                record = self.pending.pop(key, None)
                if record is not None:
                    record.update(result="no_response", reason="no answer within timeout")
                    records.append(record)
        return records

    def next_at(self, now: datetime) -> datetime | None:
        """When to poll: the head of the queue is due, or a pending request times out."""
        times = [t for t in (self.queue.next_at(now), *self._deadlines.values()) if t]
        return min(times) if times else None

    def discard(self, reason: str) -> list[dict[str, Any]]:
        records = []
        for item in self.queue.discard():
            self._done(item.key)
            item.record.update(result="not_sent", reason=reason)
            records.append(item.record)
        return records

    def finish(self) -> list[dict[str, Any]]:
        self.closing = True
        records = self.discard("connection ended")
        for record in self.pending.values():
            record.update(result="no_response", reason="connection ended before answer")
            records.append(record)
        self.pending.clear()
        self._deadlines.clear()
        self._order.clear()
        self._entries.clear()
        return records
