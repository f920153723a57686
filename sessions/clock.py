"""Time as a dependency.

Code that needs "now" takes a :class:`Clock` instead of calling :func:`datetime.now`, so tests
can drive expiry, windows and timestamps deterministically (see
:class:`sessions.testing.ManualClock`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime:
        """Return the current time as a timezone-aware datetime in UTC."""
        ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        """Return ``datetime.now(UTC)``."""
        return datetime.now(UTC)
