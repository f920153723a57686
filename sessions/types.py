"""Column types shared by the sessions tables.

* :class:`UTCDateTime` — every timestamp column.  The database stores naive UTC (``TIMESTAMP
  WITHOUT TIME ZONE`` on PostgreSQL, ISO text on SQLite) so both back ends hold the same value;
  Python always sees aware UTC datetimes.
* :data:`JSONDocument` / :func:`json_field` — JSON lists and dicts.  Plain ``JSON`` (text on
  both back ends) rather than ``JSONB``: it keeps the document text exactly as written, which the
  audit chain relies on to re-hash stored events.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime stored as a naive UTC ``DATETIME``.

    Binding a naive datetime raises :class:`ValueError` (wrapped by SQLAlchemy in a
    ``StatementError``): a naive value is ambiguous and would silently shift by the host's
    offset.  Aware values in any zone are converted to UTC.  Results are returned aware in UTC.
    """

    impl = sa.DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise ValueError(f"UTCDateTime: expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("UTCDateTime: naive datetime rejected; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:  # a driver that returns aware values: normalise only
            return value.astimezone(UTC)
        return value.replace(tzinfo=UTC)


# One declaration for every JSON column; the migration spells the same type as sa.JSON().
JSONDocument = sa.JSON()


def json_field(default_factory: Callable[[], Any]) -> Any:
    """A ``sqlmodel.Field`` for a non-null JSON column (a list or dict).

    Usage: ``labels: dict[str, str] = json_field(dict)``.  Mutating a loaded list/dict in place
    is *not* tracked by the ORM: assign a new value to persist a change.
    """
    return Field(default_factory=default_factory, sa_type=JSONDocument, nullable=False)
