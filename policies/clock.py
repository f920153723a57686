"""Time as a dependency: the project's one clock.

Code that needs "now" takes a :class:`Clock` instead of reading the system time, so tests can
drive expiry, windows and timestamps deterministically (see
:class:`sessions.testing.ManualClock`). It is defined here, in the leaf package every layer
may import, so the policy engines can take the same clock; everything else imports it as
:mod:`sessions.clock`. :class:`SystemClock` holds the project's only read of the wall clock
(``tests/test_clock_reads.py`` checks that).
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
