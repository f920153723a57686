"""What every table shares: the metadata and its naming convention, ``TableModel``, ids,
timestamps and the column helpers (see :mod:`sessions.models` for the contracts)."""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Any, Literal
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from sessions.clock import SystemClock
from sessions.errors import ValidationError
from sessions.types import JSONDocument, UTCDateTime

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Why a private registry: deterministic constraint names (so migrations can name them) without
# mutating the process-global SQLModel.metadata other code may use.
metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
table_registry = registry(metadata=metadata)

OnDelete = Literal["RESTRICT", "CASCADE", "SET NULL"]
RESTRICT: OnDelete = "RESTRICT"
CASCADE: OnDelete = "CASCADE"
SET_NULL: OnDelete = "SET NULL"


class TableModel(SQLModel, registry=table_registry):
    """Base class of every sessions table (binds them to :data:`metadata`)."""


def new_id() -> str:
    """Return a fresh UUID4 string (the default primary key)."""
    return str(uuid4())


_SYSTEM_CLOCK = SystemClock()


def utc_now() -> datetime:
    """Wall-clock fallback for ``created_at``; domain code should pass ``clock.now()``."""
    return _SYSTEM_CLOCK.now()


def check_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA timezone; raise :class:`ValidationError` if not."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValidationError(
            f"site timezone: {name!r} is not an IANA timezone name", code="invalid_timezone"
        ) from exc
    return name


def one_of(column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    # Values are the constants below, never user input, so inlining them is safe.
    allowed = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=column)


def id_field() -> Any:
    return Field(default_factory=new_id, primary_key=True)


def created_field() -> Any:
    return Field(default_factory=utc_now, sa_type=UTCDateTime)


def maybe_when() -> Any:
    return Field(default=None, sa_type=UTCDateTime)


def optional_fk(target: str, *, ondelete: OnDelete = RESTRICT) -> Any:
    return Field(default=None, foreign_key=target, ondelete=ondelete, index=True)


def added_list() -> Any:
    """A non-null JSON list column added to an existing table (existing rows get ``[]``)."""
    return Field(
        default_factory=list,
        sa_type=JSONDocument,
        nullable=False,
        sa_column_kwargs={"server_default": "[]"},
    )
