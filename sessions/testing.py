"""Fakes for unit tests of code that depends on the sessions package.

Nothing here touches the network or the wall clock; real databases are used through
:func:`sessions.db.create_db_engine` (``sqlite://`` for fast unit tests).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sessions.errors import ValidationError


def _require_aware(dt: datetime, what: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValidationError(f"{what}: datetime must be timezone-aware", code="naive_datetime")
    return dt.astimezone(UTC)


class ManualClock:
    """A :class:`sessions.clock.Clock` that only moves when told to.

    ``start`` must be timezone-aware; it is normalised to UTC.  ``now()`` always returns UTC.
    Moving backwards is allowed through :meth:`set` (to test clock skew) but not :meth:`advance`.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _require_aware(
            start if start is not None else datetime(2025, 1, 1, tzinfo=UTC), "ManualClock start"
        )

    def now(self) -> datetime:
        """Return the current fake time (aware, UTC)."""
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds`` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValidationError("ManualClock.advance: seconds must be >= 0")
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, dt: datetime) -> None:
        """Jump to ``dt`` (timezone-aware; may be earlier than now)."""
        self._now = _require_aware(dt, "ManualClock.set")
