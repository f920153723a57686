"""The protocol a forward session spoke: the declared protocol of the endpoint it reached.

A forward session's stored ``kind`` is ``tcp``; the pages, the JSON API and the CLI show the
protocol instead (``Modbus``, ``S7``, ``EtherNet/IP`` from the plug-in's title). Sessions
recorded before this table existed have no row and keep showing their stored kind.
"""

from __future__ import annotations

from sqlmodel import Field

from sessions.models.base import RESTRICT, TableModel


class SessionProtocol(TableModel, table=True):
    """One forward session's endpoint protocol (``modbus``, ``s7``, ``enip``, ``tcp`` …)."""

    __tablename__ = "session_protocols"

    session_id: str = Field(
        primary_key=True, foreign_key="maintenance_sessions.id", ondelete=RESTRICT
    )
    protocol: str = Field(index=True)
