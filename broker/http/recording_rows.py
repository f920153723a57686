"""Which recordings a principal sees, as rows: one query for ``/recordings``, the recording
pages' access checks and ``GET /api/recordings``.

Visibility is :mod:`broker.http.visibility` (admins and security all, approvers their own and
those on assets their groups own, vendors their own). Filters: ``user`` (name or e-mail,
ignored for vendors), ``asset`` (exact name), ``kind`` (a recording format, ``pcap``, or a
forward's protocol, ``modbus``; case-insensitive), ``from`` and ``to``
(``YYYY-MM-DD``, session start, UTC; a malformed date is ignored). Newest session first, at
most :data:`LIST_LIMIT` rows. A row never carries anything secret; its ``path`` is for the
handlers only and is never shown or sent.

A row's ``session_kind`` is what people read: a forward's endpoint protocol by its plug-in's
title (``Modbus``, ``S7``, ``EtherNet/IP``; :mod:`sessions.models.session_protocol`), else the
stored kind (``ssh``, ``sftp``, ``tcp``: also every session from before protocols were stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from broker.auth.auth import Principal
from broker.http.visibility import owns_assets, sees_all, session_filter
from broker.runtime.people import Person, person_of
from broker.services import Services
from sessions.db import session_scope
from sessions.models import Asset, MaintenanceSession, Recording, SessionProtocol, User
from sessions.ot.registry import plugin_for

LIST_LIMIT = 200


@dataclass(frozen=True)
class RecordingRow:
    """One recording as the pages show it (no file system path, nothing secret)."""

    id: str
    format: str
    session_id: str
    session_kind: str  # for people: the protocol's title for an inspected forward
    protocol: str | None  # a forward's endpoint protocol (None: ssh/sftp, or an older session)
    user_id: str
    user: Person
    asset: str
    owner_group: str | None
    login: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    session_state: str  # active, closed, or failed (its end was an error or a refusal)
    size_bytes: int
    finalized: bool
    integrity: str
    path: str  # for the handlers only; templates must not show it


def kind_label(kind: str, protocol: str | None) -> str:
    """A session's kind as people read it: an inspected forward's protocol title, another
    declared protocol by name, else the stored kind."""
    if not protocol or protocol == kind:
        return kind
    plugin = plugin_for(protocol)
    return plugin.title if plugin is not None else protocol


def _day(value: str | None, *, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` as the start of that day (or of the next one for ``end``), UTC."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def _query(principal: Principal, filters: dict[str, str], recording_id: str | None) -> Any:
    """The list query; with ``recording_id`` that one recording, whoever owns it (the caller
    checks :func:`broker.http.visibility.may_see` and audits a refusal)."""
    query = (
        sa.select(Recording, MaintenanceSession, User, Asset, SessionProtocol)
        .join(MaintenanceSession, col(MaintenanceSession.id) == col(Recording.session_id))
        .outerjoin(SessionProtocol, col(SessionProtocol.session_id) == col(MaintenanceSession.id))
        .join(User, col(User.id) == col(MaintenanceSession.user_id))
        .join(Asset, col(Asset.id) == col(MaintenanceSession.asset_id))
        .order_by(col(MaintenanceSession.started_at).desc(), col(Recording.id))
    )
    if recording_id is not None:
        return query.where(col(Recording.id) == recording_id)
    query = query.where(session_filter(principal))
    others = sees_all(principal) or owns_assets(principal)  # vendors: no user filter
    if others and (who := filters.get("user", "").strip().lower()):
        query = query.where(
            sa.or_(
                sa.func.lower(col(User.name)).contains(who, autoescape=True),
                sa.func.lower(col(User.email)).contains(who, autoescape=True),
            )
        )
    if asset := filters.get("asset", "").strip():
        query = query.where(col(Asset.name) == asset)
    if kind := filters.get("kind", "").strip().lower():
        query = query.where(
            sa.or_(
                col(Recording.format) == kind, sa.func.lower(col(SessionProtocol.protocol)) == kind
            )
        )
    if (since := _day(filters.get("from"))) is not None:
        query = query.where(col(MaintenanceSession.started_at) >= since)
    if (until := _day(filters.get("to"), end=True)) is not None:
        query = query.where(col(MaintenanceSession.started_at) < until)
    return query.limit(LIST_LIMIT)


def load_recordings(
    svc: Services, principal: Principal, filters: dict[str, str], recording_id: str | None = None
) -> tuple[list[RecordingRow], list[str]]:
    """Matching recordings (newest session first) and the asset names for the filter."""
    with session_scope(svc.engine) as db:
        rows = [
            RecordingRow(
                id=rec.id,
                format=rec.format,
                session_id=ms.id,
                session_kind=kind_label(ms.kind, proto.protocol if proto else None),
                protocol=proto.protocol if proto else None,
                user_id=user.id,
                user=person_of(user),
                asset=asset.name,
                owner_group=asset.owner_group,
                login=ms.login,
                started_at=ms.started_at,
                ended_at=ms.ended_at,
                end_reason=ms.end_reason,
                session_state=ms.state,
                size_bytes=rec.size_bytes,
                finalized=rec.finalized_at is not None,
                integrity=rec.integrity,
                path=rec.path,
            )
            for rec, ms, user, asset, proto in db.exec(
                _query(principal, filters, recording_id)
            ).all()
        ]
        assets = [] if recording_id else list(db.exec(select(Asset.name).order_by(Asset.name)))
    return rows, assets
