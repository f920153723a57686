"""Maintenance sessions: authorizing a connection to an asset, and the session records.

:meth:`MaintenanceService.authorize` is asked before every connection and every channel
(shell, exec, subsystem, port forward): the user's current grant for the asset (state
``active``, window open by the injected clock) goes into a policy decision of the channel's
kind; a deny raises :class:`sessions.access.AccessDenied` with the policy's reasons (audited as
``session.denied``). Every connection reaches one *declared endpoint* of the asset and runs
under exactly one grant, which must cover that endpoint's port and (for ssh/sftp) the login.

Session lifecycle (:class:`sessions.models.SessionState`): ``active`` when opened →
``closed`` (with an end reason and byte counts) or ``failed``. Every step is audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from policies.decision import Decision
from sessions.access import AccessDenied
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer, build_input, grant_document, user_document
from sessions.clock import Clock
from sessions.credentials import NO_AUTH, AuthContext
from sessions.db import session_scope
from sessions.endpoints import describe, endpoints_of, ssh_endpoint
from sessions.errors import NotFoundError
from sessions.models import (
    AccessRequest,
    Asset,
    AssetEndpoint,
    AuditOutcome,
    Grant,
    GrantState,
    MaintenanceSession,
    OperationClass,
    Recording,
    RecordingIntegrity,
    SessionKind,
    SessionProtocol,
    SessionState,
    User,
    route_agent,
)
from sessions.session_end import SESSION_ENDED, Ending, ended_details


@dataclass(frozen=True)
class Authorization:
    """A policy allow for one connection or channel, with what the enforcer needs.

    ``endpoint`` is the declared endpoint the connection reaches (the asset's SSH endpoint for
    shell, exec and sftp channels); ``grant`` is the one grant it runs under (None only for an
    admin's standing access, which policy allows without a grant).
    """

    decision: Decision
    user: User
    asset: Asset
    grant: Grant | None
    deadline: datetime  # grant end or max duration, whichever is first
    endpoint: AssetEndpoint
    auth: AuthContext = NO_AUTH  # how the credential in use was authenticated
    credential: str | None = None  # which credential (``cert:<serial>``, ``session:<hash>``)

    @property
    def obligations(self) -> dict[str, object]:
        return self.decision.obligations.as_dict()


_SELF = frozenset({"localhost", "127.0.0.1", "::1"})  # the asset itself, from the vendor's view
_RANK = {name: rank for rank, name in enumerate(OperationClass.ALL)}


def _suits(request: AccessRequest | None, kind: str, login: str | None, port: int) -> str | None:
    """Why a grant's request does not cover this connection, or None if it does."""
    if request is None:
        return "its request is missing"
    if port not in request.ports:
        return f"port {port} is not in it (ports {', '.join(map(str, request.ports))})"
    if kind in ("ssh", "sftp") and request.login != login:
        return f"it allows login {request.login!r}, not {login!r}"
    return None


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
        auth: AuthContext,
        credential: str | None = None,
        host: str | None = None,
        bound: bool = False,
        grant_id: str | None = None,
        grant_prefix: str | None = None,
    ) -> Authorization:
        """Ask policy whether ``user_id`` may open a ``kind`` channel to ``asset_name`` now.

        ``host``/``port`` name the endpoint of a ``tcp`` connection (ssh/sftp use the asset's
        SSH endpoint): ``host`` is the endpoint's host or name, the asset's name, or
        ``localhost``/``127.0.0.1`` meaning the asset itself; a host:port that another asset
        also declares is refused. The connection runs under exactly one grant: when
        ``bound``, the session's ``grant_id`` (None: an admin's standing access, no grant);
        else the grant whose id starts with ``grant_prefix``; else the user's current grant
        on the asset that covers this endpoint and login (the least privileged when several
        do). ``auth`` is how the credential in use (``credential``, for the record) was
        authenticated: policy sees its ``amr``/``acr``/``auth_time``. Raises
        :class:`AccessDenied` (audited) with human-readable reasons when not.
        """
        now = self._clock.now()
        document, user, asset, grant, endpoint = await asyncio.to_thread(
            self._prepare,
            user_id,
            asset_name,
            kind,
            login,
            (host, port),
            source_ip,
            agent_online,
            (bound, grant_id, grant_prefix),
            now,
            auth,
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
        return Authorization(decision, user, asset, grant, deadline, endpoint, auth, credential)

    def _endpoint(
        self,
        db: Session,
        user_id: str,
        asset: Asset,
        kind: str,
        target: tuple[str | None, int | None],
    ) -> AssetEndpoint:
        endpoints = endpoints_of(db, asset.id)
        if kind == "tcp":
            host, port = target
            found = [e for e in endpoints if e.port == port]
            if host is not None and host.lower() not in _SELF:
                found = [e for e in found if host in (e.host, e.name, asset.name)]
            if len(found) != 1:
                why = (
                    f"{host}:{port} is not a declared endpoint of {asset.name}"
                    if not found
                    else f"port {port} of {asset.name} is ambiguous: name the endpoint's host"
                )
                self._deny(user_id, asset.name, kind, [why])
            others = db.exec(
                select(Asset.name)
                .join(AssetEndpoint, col(AssetEndpoint.asset_id) == col(Asset.id))
                .where(
                    AssetEndpoint.host == found[0].host,
                    AssetEndpoint.port == found[0].port,
                    Asset.id != asset.id,
                )
            ).all()
            if others:
                self._deny(
                    user_id, asset.name, kind,
                    [f"{found[0].host}:{found[0].port} is also an endpoint of "
                     f"{', '.join(sorted(others))}: refusing a target another asset declares"],
                )  # fmt: skip
            return found[0]
        ssh = ssh_endpoint(endpoints)
        if ssh is None:
            self._deny(user_id, asset.name, kind, [f"{asset.name} declares no SSH endpoint"])
        return ssh

    def _grant(
        self,
        db: Session,
        user_id: str,
        asset: Asset,
        kind: str,
        login: str | None,
        port: int,
        binding: tuple[bool, str | None, str | None],
        now: datetime,
    ) -> Grant | None:
        is_bound, grant_id, grant_prefix = binding
        query = select(Grant).where(Grant.user_id == user_id, Grant.asset_id == asset.id)
        if is_bound and grant_id is None:
            return None  # the session runs on an admin's standing access, under no grant
        if grant_id is not None:
            bound = db.exec(query.where(Grant.id == grant_id)).first()
            if (
                bound is None
                or bound.state != GrantState.ACTIVE
                or not (bound.starts_at <= now < bound.ends_at)
            ):
                state = bound.state if bound is not None else "unknown"
                self._deny(
                    user_id, asset.name, kind,
                    [f"grant {grant_id} of this session is {state}, not active"],
                )  # fmt: skip
            candidates = [bound]
        else:
            candidates = list(
                db.exec(
                    query.where(
                        Grant.state == GrantState.ACTIVE,
                        col(Grant.starts_at) <= now,
                        col(Grant.ends_at) > now,
                    )
                )
            )
            if grant_prefix is not None:
                candidates = [g for g in candidates if g.id.startswith(grant_prefix)]
                if len(candidates) != 1:
                    found = "no" if not candidates else "more than one"
                    self._deny(
                        user_id, asset.name, kind,
                        [f"{found} active grant on {asset.name} starts with {grant_prefix!r}"],
                    )  # fmt: skip
        if not candidates:
            return None  # policy decides (an admin's standing access needs no grant)
        misfits: list[str] = []
        suitable: list[Grant] = []
        for grant in candidates:
            why = _suits(db.get(AccessRequest, grant.request_id), kind, login, port)
            if why is None:
                suitable.append(grant)
            else:
                misfits.append(f"grant {grant.id} does not cover this connection: {why}")
        if not suitable:
            self._deny(user_id, asset.name, kind, sorted(misfits))
        suitable.sort(key=lambda g: (_RANK.get(g.operation_class, 99), -g.ends_at.timestamp()))
        return suitable[0]

    def _prepare(
        self,
        user_id: str,
        asset_name: str,
        kind: str,
        login: str | None,
        target: tuple[str | None, int | None],
        source_ip: str | None,
        agent_online: Callable[[str | None], bool],
        binding: tuple[bool, str | None, str | None],
        now: datetime,
        auth: AuthContext,
    ) -> tuple[dict[str, Any], User, Asset, Grant | None, AssetEndpoint]:
        with session_scope(self._engine) as db:
            user = db.get(User, user_id)
            asset = db.exec(select(Asset).where(Asset.name == asset_name)).first()
            if user is None or user.disabled:
                self._deny(user_id, asset_name, kind, ["unknown or disabled user"])
            if asset is None:
                self._deny(user_id, asset_name, kind, [f"unknown asset {asset_name!r}"])
            endpoint = self._endpoint(db, user_id, asset, kind, target)
            grant = self._grant(db, user_id, asset, kind, login, endpoint.port, binding, now)
            document = build_input(
                db,
                user=user_document(db, user, auth),
                asset=asset,
                action={
                    "kind": kind,
                    "port": endpoint.port,
                    "protocol": endpoint.protocol,
                    "login": login,
                    "operation_class": grant.operation_class if grant else "read_only",
                },
                grant=grant_document(db, grant) if grant else None,
                now=now,
                source_ip=source_ip,
                agent_online=agent_online(route_agent(asset, endpoint)),
            )
            for obj in (user, asset, endpoint, *([grant] if grant else [])):
                db.expunge(obj)
        return document, user, asset, grant, endpoint

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
            if kind == SessionKind.TCP:  # shown as the endpoint's protocol (Modbus, S7 …)
                db.add(SessionProtocol(session_id=session_id, protocol=auth.endpoint.protocol))
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
                "operation_class": auth.grant.operation_class if auth.grant else None,
                "endpoint": describe(auth.endpoint),
                "deadline": auth.deadline.isoformat(),
                "credential": auth.credential,
                "amr": list(auth.auth.amr),
            },
        )
        return session_id

    def close(
        self,
        session_id: str,
        ending: Ending,
        *,
        bytes_up: int,
        bytes_down: int,
        recordings: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Mark the session ended and audit ``session.ended`` with the ending's outcome, its
        reason code and the recordings it produced (:func:`sessions.session_end.ended_details`).
        Idempotent: a closed session stays as it was. An ``error`` or ``refused`` ending leaves
        the row ``failed``."""
        failed = ending.outcome in (AuditOutcome.ERROR, AuditOutcome.REFUSED)
        with session_scope(self._engine, write=True) as db:
            row = db.get(MaintenanceSession, session_id)
            if row is None:
                raise NotFoundError(f"session {session_id} not found")
            if row.state in (SessionState.CLOSED, SessionState.FAILED):
                return
            row.state = SessionState.FAILED if failed else SessionState.CLOSED
            row.ended_at = self._clock.now()
            row.end_reason = ending.text[:500]
            row.bytes_up, row.bytes_down = bytes_up, bytes_down
            user_id = row.user_id
        self._audit.append(
            SESSION_ENDED,
            actor=user_id,
            outcome=ending.outcome,
            subject=f"session:{session_id}",
            details=ended_details(
                ending, bytes_up=bytes_up, bytes_down=bytes_down, recordings=recordings
            ),
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
