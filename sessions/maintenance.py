"""Maintenance sessions: authorizing a connection to an asset, and the session records.

:meth:`MaintenanceService.authorize` is asked before every connection and every channel
(shell, exec, subsystem, port forward): the user's current grant for the asset (state
``active``, window open by the injected clock) goes into a policy decision of the channel's
kind; a deny raises :class:`sessions.access.AccessDenied` with the policy's reasons (audited as
``session.denied``). Port forwards (kind ``tcp``) also need the port in the grant: the ports the
request named, or by default the ports of the asset's protocols.

Session lifecycle (:class:`sessions.models.SessionState`): ``active`` when opened →
``closed`` (with an end reason and byte counts) or ``failed``. Every step is audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Engine
from sqlmodel import col, select

from policies.decision import Decision
from sessions.access import AccessDenied
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer, build_input, grant_document, user_document
from sessions.clock import Clock
from sessions.db import session_scope
from sessions.errors import NotFoundError
from sessions.models import (
    AccessRequest,
    Asset,
    Grant,
    GrantState,
    MaintenanceSession,
    Recording,
    RecordingIntegrity,
    SessionState,
    User,
)

DEFAULT_PORTS: dict[str, tuple[int, ...]] = {
    "ssh": (22,),
    "modbus": (502,),
    "opcua": (4840,),
    "s7": (102,),
    "vnc": (5900,),
    "rdp": (3389,),
    "dnp3": (20000,),
    "enip": (44818,),
    "http": (80,),
    "https": (443,),
}


@dataclass(frozen=True)
class Authorization:
    """A policy allow for one connection or channel, with what the enforcer needs."""

    decision: Decision
    user: User
    asset: Asset
    grant: Grant | None
    deadline: datetime  # grant end or max duration, whichever is first

    @property
    def obligations(self) -> dict[str, object]:
        return self.decision.obligations.as_dict()


def allowed_ports(asset: Asset, request: AccessRequest | None) -> set[int]:
    """Ports a grant covers: those the request named, else the asset's protocols' ports."""
    if request is not None and request.ports:
        return set(request.ports)
    ports = {p for proto in asset.protocols for p in DEFAULT_PORTS.get(proto, ())}
    ports.add(asset.endpoint_port)
    return ports


class MaintenanceService:
    """Authorization and records of maintenance sessions. Thread-safe; DB work in threads."""

    def __init__(
        self, engine: Engine, authorizer: Authorizer, audit: AuditLog, clock: Clock
    ) -> None:
        self._engine, self._authorizer, self._audit, self._clock = engine, authorizer, audit, clock

    async def authorize(
        self,
        *,
        user_id: str,
        asset_name: str,
        kind: str,
        login: str | None,
        port: int | None,
        source_ip: str | None,
        agent_online: Callable[[str | None], bool],
        operation_class: str | None = None,
    ) -> Authorization:
        """Ask policy whether ``user_id`` may open a ``kind`` channel to ``asset_name`` now.

        Raises :class:`AccessDenied` (audited) with human-readable reasons when not.
        """
        now = self._clock.now()
        document, user, asset, grant = await asyncio.to_thread(
            self._prepare,
            user_id,
            asset_name,
            kind,
            login,
            port,
            source_ip,
            agent_online,
            operation_class,
            now,
        )
        decision = await self._authorizer.decide(
            document, actor=user_id, purpose=f"connect:{kind}", source_ip=source_ip
        )
        if not decision.allow:
            self._deny(user_id, asset_name, kind, list(decision.reasons), audit=False)
        deadline = grant.ends_at if grant else now + timedelta(hours=8)
        max_s = decision.obligations.max_duration_s
        if max_s:
            deadline = min(deadline, now + timedelta(seconds=max_s))
        return Authorization(decision, user, asset, grant, deadline)

    def _prepare(
        self,
        user_id: str,
        asset_name: str,
        kind: str,
        login: str | None,
        port: int | None,
        source_ip: str | None,
        agent_online: Callable[[str | None], bool],
        operation_class: str | None,
        now: datetime,
    ) -> tuple[dict[str, Any], User, Asset, Grant | None]:
        with session_scope(self._engine) as db:
            user = db.get(User, user_id)
            asset = db.exec(select(Asset).where(Asset.name == asset_name)).first()
            if user is None or user.disabled:
                self._deny(user_id, asset_name, kind, ["unknown or disabled user"])
            if asset is None:
                self._deny(user_id, asset_name, kind, [f"unknown asset {asset_name!r}"])
            grant = db.exec(
                select(Grant)
                .where(
                    Grant.user_id == user_id,
                    Grant.asset_id == asset.id,
                    Grant.state == GrantState.ACTIVE,
                    col(Grant.starts_at) <= now,
                    col(Grant.ends_at) > now,
                )
                .order_by(col(Grant.ends_at).desc())
            ).first()
            request = db.get(AccessRequest, grant.request_id) if grant else None
            if kind == "tcp" and grant is not None and port not in allowed_ports(asset, request):
                self._deny(user_id, asset_name, kind, [f"port {port} is not in grant {grant.id}"])
            document = build_input(
                db,
                user=user_document(db, user),
                asset=asset,
                action={
                    "kind": kind,
                    "port": port,
                    "login": login,
                    "operation_class": operation_class
                    or (grant.operation_class if grant else "read_only"),
                },
                grant=grant_document(db, grant) if grant else None,
                now=now,
                source_ip=source_ip,
                agent_online=agent_online(asset.agent_id),
            )
            for obj in (user, asset, *([grant] if grant else [])):
                db.expunge(obj)
        return document, user, asset, grant

    def _deny(
        self, user_id: str, asset: str, kind: str, reasons: list[str], *, audit: bool = True
    ) -> NoReturn:
        if audit:  # policy denials are already audited as policy.decision
            self._audit.append(
                "session.denied",
                actor=user_id,
                outcome="deny",
                subject=f"asset:{asset}",
                details={"kind": kind, "reasons": reasons},
            )
        raise AccessDenied(f"{kind} to {asset} denied: {'; '.join(reasons)}", tuple(reasons))

    # ---- records ------------------------------------------------------------------------

    def open(
        self, auth: Authorization, *, kind: str, login: str | None, source_ip: str | None
    ) -> str:
        """Record a new active session; returns its id."""
        now = self._clock.now()
        with session_scope(self._engine, write=True) as db:
            row = MaintenanceSession(
                grant_id=auth.grant.id if auth.grant else None,
                user_id=auth.user.id,
                asset_id=auth.asset.id,
                kind=kind,
                login=login,
                state=SessionState.ACTIVE,
                source_ip=source_ip,
                started_at=now,
            )
            db.add(row)
            db.flush()
            session_id = row.id
        self._audit.append(
            "session.started",
            actor=auth.user.id,
            outcome="ok",
            subject=f"session:{session_id}",
            source_ip=source_ip,
            details={
                "asset": auth.asset.name,
                "kind": kind,
                "login": login,
                "grant": auth.grant.id if auth.grant else None,
                "deadline": auth.deadline.isoformat(),
            },
        )
        return session_id

    def close(
        self, session_id: str, *, reason: str, bytes_up: int, bytes_down: int, failed: bool = False
    ) -> None:
        """Mark the session ended (idempotent: a closed session stays as it was)."""
        with session_scope(self._engine, write=True) as db:
            row = db.get(MaintenanceSession, session_id)
            if row is None:
                raise NotFoundError(f"session {session_id} not found")
            if row.state in (SessionState.CLOSED, SessionState.FAILED):
                return
            row.state = SessionState.FAILED if failed else SessionState.CLOSED
            row.ended_at = self._clock.now()
            row.end_reason = reason[:500]
            row.bytes_up, row.bytes_down = bytes_up, bytes_down
            user_id = row.user_id
        self._audit.append(
            "session.ended",
            actor=user_id,
            outcome="error" if failed else "ok",
            subject=f"session:{session_id}",
            details={"reason": reason[:500], "bytes_up": bytes_up, "bytes_down": bytes_down},
        )

    def add_recording(self, session_id: str, *, fmt: str, path: str) -> str:
        with session_scope(self._engine, write=True) as db:
            row = Recording(
                session_id=session_id, format=fmt, path=path, created_at=self._clock.now()
            )
            db.add(row)
            db.flush()
            return row.id

    def finish_recording(
        self, recording_id: str, *, manifest_path: str | None, chain_head: str | None, size: int
    ) -> None:
        with session_scope(self._engine, write=True) as db:
            row = db.get(Recording, recording_id)
            if row is None:
                raise NotFoundError(f"recording {recording_id} not found")
            row.manifest_path, row.chain_head, row.size_bytes = manifest_path, chain_head, size
            row.finalized_at = self._clock.now()
            row.integrity = RecordingIntegrity.UNKNOWN

    def pin_host_key(self, asset_name: str, host_key: str) -> None:
        """Trust on first use: remember an asset's SSH host key (audited); never overwrite."""
        with session_scope(self._engine, write=True) as db:
            asset = db.exec(select(Asset).where(Asset.name == asset_name)).first()
            if asset is None or asset.labels.get("ssh_host_key"):
                return
            asset.labels = {**asset.labels, "ssh_host_key": host_key}
        self._audit.append(
            "asset.host_key.pinned",
            actor="system",
            outcome="ok",
            subject=f"asset:{asset_name}",
            details={"host_key": host_key},
        )

    def live(self) -> list[MaintenanceSession]:
        with session_scope(self._engine) as db:
            rows = list(
                db.exec(
                    select(MaintenanceSession)
                    .where(MaintenanceSession.state == SessionState.ACTIVE)
                    .order_by(col(MaintenanceSession.started_at))
                )
            )
            for row in rows:
                db.expunge(row)
        return rows
