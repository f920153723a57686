"""Access requests, approvals and time-limited grants: no vendor has standing access.

State machines (constants in :mod:`sessions.models`):

* request: ``pending`` → ``approved`` | ``denied`` | ``cancelled`` | ``expired``;
* grant: created ``approved`` when a request has the approvals policy requires →
  ``active`` at window start if policy still finds the requester eligible (else ``revoked``)
  → ``expired`` at window end; ``approved``/``active`` → ``revoked`` (one grant). The vendor
  lockout suspends vendor grants without changing their state (see :meth:`set_lockout`).

Policy is asked on every request (kind ``request``: role, contract, Purdue level, lockout;
its obligations bound the window and name how many approvals are needed), on every approval
(kind ``approve``: owner group, never one's own request, each person once) and again at
activation. Every step is an audit event. Time comes from the injected clock; :meth:`tick`
moves grants along and is called by the broker's scheduler (and by tests, with a manual
clock). ``on_grant_ended`` callbacks receive ``(grant_id, reason)`` so live sessions can be cut.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from policies.decision import Decision
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer, build_input, iso, user_document
from sessions.clock import Clock
from sessions.credentials import NO_AUTH, AuthContext
from sessions.db import is_sqlite, session_scope
from sessions.endpoints import describe, endpoints_of, logins_for
from sessions.errors import ConflictError, NotFoundError, SessionsError, ValidationError
from sessions.identity import ADMIN, VENDOR
from sessions.models import (
    AccessRequest,
    AccessRequestState,
    Approval,
    ApprovalVerdict,
    Asset,
    AssetEndpoint,
    EndpointProtocol,
    Grant,
    GrantState,
    OperationClass,
    PlantFlag,
    User,
)
from sessions.policy_data import LOCKOUT_FLAG

START_SKEW = timedelta(seconds=60)  # a window may start this much in the past (clock skew)
LIVE_GRANT_STATES = (GrantState.APPROVED, GrantState.ACTIVE)


class AccessDenied(SessionsError):
    """Policy said no; ``reasons`` are the policy's."""

    code = "access_denied"

    def __init__(self, message: str, reasons: tuple[str, ...]) -> None:
        super().__init__(message)
        self.reasons = reasons


@dataclass(frozen=True)
class RequestSpec:
    asset: str
    operation_class: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    ticket: str | None = None
    protocols: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    maintenance_window_only: bool = False
    login: str | None = None


@dataclass(frozen=True)
class _Scope:
    """What a request reaches: declared endpoint ports, their protocols and the SSH login."""

    ports: list[int]
    protocols: list[str]
    login: str | None


def _scope(spec: RequestSpec, asset: Asset, endpoints: list[AssetEndpoint]) -> _Scope:
    """Resolve a request against the asset's declared endpoints; ValidationError if it strays.

    No ports named means every declared endpoint. The login must be one the asset's SSH
    endpoints allow for the operation class (the only one, when there is exactly one).
    """
    if not endpoints:
        raise ValidationError(
            f"{asset.name} declares no endpoints; an admin must declare them before access "
            "can be requested",
            code="no_endpoints",
        )
    declared = {e.port for e in endpoints}
    ports = sorted(set(spec.ports)) or sorted(declared)
    stray = [p for p in ports if p not in declared]
    if stray:
        listed = ", ".join(describe(e) for e in endpoints)
        raise ValidationError(
            f"port(s) {', '.join(map(str, stray))} are not declared endpoints of {asset.name} "
            f"(declared: {listed})",
            code="undeclared_port",
        )
    chosen = [e for e in endpoints if e.port in ports]
    login = spec.login or None
    if any(e.protocol == EndpointProtocol.SSH for e in chosen):
        allowed = logins_for(chosen, spec.operation_class)
        if not allowed:
            raise ValidationError(
                f"{asset.name} declares no SSH login for {spec.operation_class}",
                code="no_login",
            )
        if login is None and len(allowed) == 1:
            login = allowed[0]
        if login not in allowed:
            raise ValidationError(
                f"name a login: {asset.name} allows {', '.join(allowed)} for "
                f"{spec.operation_class}" + (f" (not {login!r})" if login else ""),
                code="login_not_allowed",
            )
    elif login is not None:
        raise ValidationError(
            f"a login applies only to SSH endpoints; ports {', '.join(map(str, ports))} of "
            f"{asset.name} have none",
            code="login_not_allowed",
        )
    return _Scope(ports, sorted({e.protocol for e in chosen}), login)


GrantEnded = Callable[[str, str], None]


class AccessService:
    def __init__(
        self, engine: Engine, authorizer: Authorizer, audit: AuditLog, clock: Clock
    ) -> None:
        self._engine, self._authorizer, self._audit, self._clock = engine, authorizer, audit, clock
        self.on_grant_ended: list[GrantEnded] = []
        # Called (from any thread) after each committed state change: (kind, subject, details).
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        self._buffer = threading.local()

    # ---- helpers ------------------------------------------------------------------------

    def _record(self, kind: str, actor: str, outcome: str, subject: str, **details: Any) -> None:
        event = (kind, actor, outcome, subject, details)
        pending: list[Any] | None = getattr(self._buffer, "events", None)
        if pending is not None:
            pending.append(event)  # written after the transaction (see _tx)
        else:
            self._append(*event)

    def _append(self, kind: str, actor: str, outcome: str, subject: str, details: Any) -> None:
        self._audit.append(kind, actor=actor, outcome=outcome, subject=subject, details=details)
        if outcome == "ok":
            for listener in self.listeners:
                listener(kind, subject, {"actor": actor, **details})

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction whose audit events are appended once it has committed.

        Why: the audit log takes the database write lock itself, which this transaction holds.
        If the transaction fails, only the refusals it recorded are written (no false "ok").
        """
        events: list[tuple[str, str, str, str, Any]] = []
        self._buffer.events = events
        failed = False
        try:
            with session_scope(self._engine, write=True) as db:
                yield db
        except BaseException:
            failed = True
            raise
        finally:
            self._buffer.events = None
            for event in events:
                if not failed or event[2] != "ok":
                    self._append(*event)

    async def _ask(self, document: dict[str, Any], actor: str, purpose: str) -> Decision:
        return await self._authorizer.decide(document, actor=actor, purpose=purpose)

    def _ended(self, grant_id: str, reason: str) -> None:
        for callback in self.on_grant_ended:
            callback(grant_id, reason)

    # ---- request ------------------------------------------------------------------------

    async def request(
        self, user_id: str, spec: RequestSpec, *, auth: AuthContext = NO_AUTH
    ) -> AccessRequest:
        """File a request. Raises ValidationError (bad window, no reason, duplicate),
        NotFoundError (unknown asset) or AccessDenied (policy).

        ``auth``: how the credential filing it was authenticated (policy's ``user.amr``/``acr``),
        kept on the request for the check at the window start."""
        now = self._clock.now()
        _check_spec(spec, now)
        try:
            document, asset_id, scope = await asyncio.to_thread(
                self._request_document, user_id, spec, auth, now
            )
        except ValidationError as exc:
            self._record(
                "access.request", user_id, "rejected", spec.asset, reasons=[exc.message],
                ports=list(spec.ports), login=spec.login,
            )  # fmt: skip
            raise
        if VENDOR in document["user"]["roles"] and await asyncio.to_thread(self.lockout_active):
            # Do not wait for the policy data refresh: the flag in the database is the truth.
            self._record(
                "access.request", user_id, "deny", spec.asset, reasons=["emergency lockout"]
            )
            raise AccessDenied(
                "emergency lockout: vendor access is disabled", ("emergency lockout",)
            )
        decision = await self._ask(document, user_id, "request")
        if not decision.allow:
            self._record(
                "access.request", user_id, "deny", spec.asset, reasons=list(decision.reasons)
            )
            raise AccessDenied("the access policy refuses this request", decision.reasons)
        limit = decision.obligations.max_duration_s
        if limit is not None and (spec.ends_at - spec.starts_at).total_seconds() > limit:
            raise ValidationError(
                f"the window is longer than policy allows for {spec.operation_class} "
                f"({limit // 3600} h {limit % 3600 // 60} min at most)"
            )
        filed = _Filed(user_id, asset_id, spec, scope, decision, auth, now)
        return await asyncio.to_thread(self._store_request, filed)

    def _request_document(
        self, user_id: str, spec: RequestSpec, auth: AuthContext, now: datetime
    ) -> tuple[dict[str, Any], str, _Scope]:
        """The policy input for a request, its asset's id and what it reaches (worker thread)."""
        with session_scope(self._engine) as db:
            user, asset = db.get(User, user_id), self._asset(db, spec.asset)
            if user is None:
                raise NotFoundError("unknown user")
            if asset.archived_at is not None:
                raise ValidationError(
                    f"asset {asset.name!r} is archived: it takes no new access requests",
                    code="asset_archived",
                )
            scope = _scope(spec, asset, endpoints_of(db, asset.id))
            doc = build_input(
                db,
                user=user_document(db, user, auth),
                asset=asset,
                grant=None,
                action={
                    "kind": "request",
                    "operation_class": spec.operation_class,
                    "ports": scope.ports,
                    "login": scope.login,
                },
                now=now,
            )
            return doc, asset.id, scope

    def _store_request(self, f: _Filed) -> AccessRequest:
        """Store an allowed request (refused if the user has one pending for the asset)."""
        spec, scope, obligations = f.spec, f.scope, f.decision.obligations
        with self._tx() as db:
            duplicate = db.exec(
                select(AccessRequest).where(
                    AccessRequest.requester_id == f.user_id,
                    AccessRequest.asset_id == f.asset_id,
                    AccessRequest.state == AccessRequestState.PENDING,
                )
            ).first()
            if duplicate is not None:
                raise ConflictError(f"you already have a pending request for {spec.asset}")
            row = AccessRequest(
                requester_id=f.user_id,
                asset_id=f.asset_id,
                operation_class=spec.operation_class,
                protocols=scope.protocols,
                ports=scope.ports,
                login=scope.login,
                starts_at=spec.starts_at,
                ends_at=spec.ends_at,
                reason=spec.reason.strip(),
                ticket=spec.ticket,
                maintenance_window_only=spec.maintenance_window_only,
                decision_reasons=list(f.decision.reasons),
                created_at=f.now,
                auth_amr=list(f.auth.amr),
                auth_acr=f.auth.acr,
            )
            db.add(row)
            db.flush()
            self._record(
                "access.request", f.user_id, "ok", row.id, asset=spec.asset,
                operation_class=spec.operation_class, ports=scope.ports, login=scope.login,
                starts_at=iso(spec.starts_at), ends_at=iso(spec.ends_at), ticket=spec.ticket,
                approvals_required=obligations.approvals_required,
            )  # fmt: skip
            return row

    @staticmethod
    def _asset(db: Session, name: str) -> Asset:
        asset = db.exec(select(Asset).where(Asset.name == name)).first()
        if asset is None:
            raise NotFoundError(f"unknown asset {name!r}")
        return asset

    # ---- approve / deny / cancel --------------------------------------------------------

    def _pending_grant_doc(self, db: Session, req: AccessRequest) -> dict[str, Any]:
        requester = db.get(User, req.requester_id)
        approvers = db.exec(
            select(User.sub)
            .join(Approval, col(Approval.approver_id) == col(User.id))
            .where(Approval.request_id == req.id, Approval.verdict == ApprovalVerdict.APPROVE)
        ).all()
        return {
            "id": req.id,
            "requester": requester.sub if requester else "",
            "approvers": list(approvers),
            "starts_at": iso(req.starts_at),
            "ends_at": iso(req.ends_at),
            "ticket": req.ticket,
            "state": req.state,
            "maintenance_window_only": req.maintenance_window_only,
            "operation_class": req.operation_class,
            "ports": list(req.ports),
            "login": req.login,
        }

    async def approve(
        self, request_id: str, approver_id: str, *, auth: AuthContext = NO_AUTH
    ) -> Grant | None:
        """Record an approval; returns the grant once enough distinct approvers agreed.

        ``auth``: how the approver's credential in use was authenticated.

        Raises NotFoundError, AccessDenied (policy: own request, not an owner, ...) or
        ConflictError (request no longer pending). Safe under concurrency: one grant at most.
        """
        now = self._clock.now()
        document = await asyncio.to_thread(
            self._approval_document, request_id, approver_id, auth, now
        )
        decision = await self._ask(document, approver_id, "approve")
        if not decision.allow:
            self._record(
                "access.approve", approver_id, "deny", request_id, reasons=list(decision.reasons)
            )
            raise AccessDenied("the access policy refuses this approval", decision.reasons)
        return await asyncio.to_thread(self._apply_approval, request_id, approver_id, decision, now)

    def _approval_document(
        self, request_id: str, approver_id: str, auth: AuthContext, now: datetime
    ) -> dict[str, Any]:
        """The policy input for an approval (worker thread); NotFoundError if either is gone."""
        with session_scope(self._engine) as db:
            req, approver = db.get(AccessRequest, request_id), db.get(User, approver_id)
            if req is None or approver is None:
                raise NotFoundError("unknown request")
            asset = db.get(Asset, req.asset_id)
            assert asset is not None
            return build_input(
                db,
                user=user_document(db, approver, auth),
                asset=asset,
                grant=self._pending_grant_doc(db, req),
                now=now,
                action={
                    "kind": "approve",
                    "operation_class": req.operation_class,
                    "ports": list(req.ports),
                    "login": req.login,
                },
            )

    def _apply_approval(
        self, request_id: str, approver_id: str, decision: Decision, now: datetime
    ) -> Grant | None:
        """Count the approval (each approver once, the request locked); the grant when enough."""
        required = max(1, decision.obligations.approvals_required)
        with self._tx() as db:
            query = select(AccessRequest).where(AccessRequest.id == request_id)
            if not is_sqlite(self._engine):
                query = query.with_for_update()
            req = db.exec(query).one()
            if req.state != AccessRequestState.PENDING:
                raise ConflictError(
                    f"request is {req.state}; only pending requests can be approved"
                )
            if db.exec(
                select(Approval).where(
                    Approval.request_id == request_id, Approval.approver_id == approver_id
                )
            ).first():
                raise ConflictError("you already decided this request")  # counts once
            db.add(Approval(request_id=request_id, approver_id=approver_id,
                            verdict=ApprovalVerdict.APPROVE, created_at=now))  # fmt: skip
            db.flush()
            count = len(
                db.exec(
                    select(Approval.id).where(
                        Approval.request_id == request_id,
                        Approval.verdict == ApprovalVerdict.APPROVE,
                    )
                ).all()
            )
            self._record(
                "access.approve", approver_id, "ok", request_id, approvals=count, required=required
            )
            if count < required:
                return None
            return self._grant(db, req, approver_id, decision, now)

    def _grant(
        self, db: Session, req: AccessRequest, approver_id: str, decision: Decision, now: datetime
    ) -> Grant:
        """The request is approved: its grant (obligations from the approving decision)."""
        req.state, req.decided_at = AccessRequestState.APPROVED, now
        db.add(req)
        grant = Grant(
            request_id=req.id,
            user_id=req.requester_id,
            asset_id=req.asset_id,
            operation_class=req.operation_class,
            starts_at=req.starts_at,
            ends_at=req.ends_at,
            state=GrantState.APPROVED,
            obligations={
                **decision.obligations.as_dict(),
                "maintenance_window_only": req.maintenance_window_only,
            },
            created_at=now,
        )
        db.add(grant)
        db.flush()
        self._record(
            "grant.created", approver_id, "ok", grant.id, request=req.id,
            starts_at=iso(grant.starts_at), ends_at=iso(grant.ends_at),
        )  # fmt: skip
        return grant

    def deny(self, request_id: str, approver_id: str, reason: str) -> AccessRequest:
        """Any approver of the asset (owner group) or an admin denies, with a reason."""
        if not reason.strip():
            raise ValidationError("a reason is required to deny a request")
        now = self._clock.now()
        with self._tx() as db:
            req, approver = db.get(AccessRequest, request_id), db.get(User, approver_id)
            if req is None or approver is None:
                raise NotFoundError("unknown request")
            asset = db.get(Asset, req.asset_id)
            allowed = ADMIN in approver.roles or (
                "approver" in approver.roles
                and asset is not None
                and asset.owner_group in approver.groups
            )
            if not allowed or approver_id == req.requester_id:
                self._record(
                    "access.deny", approver_id, "rejected", request_id, why="not an approver"
                )
                raise AccessDenied(
                    "only an approver of this asset may deny it", ("not an approver",)
                )
            if req.state != AccessRequestState.PENDING:
                raise ConflictError(f"request is {req.state}; only pending requests can be denied")
            db.add(
                Approval(
                    request_id=request_id,
                    approver_id=approver_id,
                    verdict=ApprovalVerdict.DENY,
                    reason=reason.strip(),
                    created_at=now,
                )
            )
            req.state, req.decided_at = AccessRequestState.DENIED, now
            db.add(req)
            self._record("access.deny", approver_id, "ok", request_id, reason=reason.strip())
            return req

    def cancel(self, request_id: str, user_id: str) -> AccessRequest:
        now = self._clock.now()
        with self._tx() as db:
            req = db.get(AccessRequest, request_id)
            if req is None or req.requester_id != user_id:
                raise NotFoundError("unknown request")
            if req.state != AccessRequestState.PENDING:
                raise ConflictError(
                    f"request is {req.state}; only pending requests can be cancelled"
                )
            req.state, req.decided_at = AccessRequestState.CANCELLED, now
            db.add(req)
            self._record("access.cancel", user_id, "ok", request_id)
            return req

    # ---- time ---------------------------------------------------------------------------

    async def tick(self) -> dict[str, list[str]]:
        """Expire stale requests and grants; activate grants whose window opened (after
        re-checking eligibility with policy). Returns the ids that changed, by new state."""
        now = self._clock.now()
        changed: dict[str, list[str]] = {"expired": [], "active": [], "revoked": []}

        def _due() -> list[tuple[str, dict[str, Any], str]]:
            with self._tx() as db:
                for req in db.exec(
                    select(AccessRequest).where(
                        AccessRequest.state == AccessRequestState.PENDING,
                        col(AccessRequest.ends_at) <= now,
                    )
                ).all():
                    req.state, req.decided_at = AccessRequestState.EXPIRED, now
                    db.add(req)
                    self._record("access.expired", "system", "ok", req.id)
                for grant in db.exec(
                    select(Grant).where(
                        col(Grant.state).in_(LIVE_GRANT_STATES), col(Grant.ends_at) <= now
                    )
                ).all():
                    grant.state = GrantState.EXPIRED
                    db.add(grant)
                    changed["expired"].append(grant.id)
                    self._record("grant.expired", "system", "ok", grant.id)
                due = []
                flag = db.get(PlantFlag, LOCKOUT_FLAG)
                locked = bool(flag and flag.value.get("vendors"))
                for grant in db.exec(
                    select(Grant).where(
                        Grant.state == GrantState.APPROVED, col(Grant.starts_at) <= now
                    )
                ).all():
                    user, asset = db.get(User, grant.user_id), db.get(Asset, grant.asset_id)
                    grant_req = db.get(AccessRequest, grant.request_id)
                    assert user is not None
                    assert asset is not None
                    if locked and VENDOR in user.roles:
                        continue  # suspended: activated (policy asked) once the lockout ends
                    # The request's own credential context: how the requester signed in then.
                    filed = AuthContext(
                        tuple(grant_req.auth_amr) if grant_req else (),
                        grant_req.auth_acr if grant_req else None,
                    )
                    doc = build_input(
                        db,
                        user=user_document(db, user, filed),
                        asset=asset,
                        grant=None,
                        action={
                            "kind": "request",
                            "operation_class": grant.operation_class,
                            "ports": list(grant_req.ports) if grant_req else [],
                            "login": grant_req.login if grant_req else None,
                        },
                        now=now,
                    )
                    due.append((grant.id, doc, user.id))
                return due

        for grant_id, document, user_id in await asyncio.to_thread(_due):
            decision = await self._ask(document, user_id, "activate")
            state = GrantState.ACTIVE if decision.allow else GrantState.REVOKED
            if await asyncio.to_thread(self._activate, grant_id, state, decision):
                changed["active" if decision.allow else "revoked"].append(grant_id)
        for grant_id in changed["expired"]:
            self._ended(grant_id, "grant expired")
        for grant_id in changed["revoked"]:
            self._ended(grant_id, "eligibility lost before the window opened")
        return changed

    def _activate(self, grant_id: str, state: str, decision: Decision) -> bool:
        with self._tx() as db:
            grant = db.get(Grant, grant_id)
            if grant is None or grant.state != GrantState.APPROVED:
                return False  # revoked meanwhile
            grant.state = state
            if state == GrantState.REVOKED:
                grant.revoked_at, grant.revoked_by = self._clock.now(), "system"
                grant.revoke_reason = "eligibility lost: " + "; ".join(decision.reasons)
            db.add(grant)
            kind = "grant.activated" if state == GrantState.ACTIVE else "grant.revoked"
            self._record(kind, "system", "ok", grant_id, reasons=list(decision.reasons))
            return True

    # ---- revoke and lockout -------------------------------------------------------------

    def revoke(self, grant_id: str, by: str, reason: str) -> Grant:
        """End one approved or active grant now (approver of the asset, or admin)."""
        if not reason.strip():
            raise ValidationError("a reason is required to revoke a grant")
        with self._tx() as db:
            grant, actor = db.get(Grant, grant_id), db.get(User, by)
            if grant is None or actor is None:
                raise NotFoundError("unknown grant")
            asset = db.get(Asset, grant.asset_id)
            if not (
                ADMIN in actor.roles
                or (
                    "approver" in actor.roles
                    and asset is not None
                    and asset.owner_group in actor.groups
                )
            ):
                self._record("grant.revoke", by, "rejected", grant_id, why="not an approver")
                raise AccessDenied("only an approver of this asset or an admin may revoke", ())
            if grant.state not in LIVE_GRANT_STATES:
                raise ConflictError(f"grant is {grant.state}; nothing to revoke")
            self._revoke_row(grant, by, reason.strip())
            db.add(grant)
        self._ended(grant_id, f"grant revoked: {reason.strip()}")
        return grant

    def _revoke_row(self, grant: Grant, by: str, reason: str) -> None:
        grant.state, grant.revoked_at = GrantState.REVOKED, self._clock.now()
        grant.revoked_by, grant.revoke_reason = by, reason
        self._record("grant.revoked", by, "ok", grant.id, reason=reason)

    def set_lockout(self, on: bool, by: str, reason: str) -> int:
        """Switch the emergency vendor lockout on (suspend) or off (resume); returns how many
        vendor grants were suspended or resumed.

        Suspend, not revoke: while it is on, policy denies every vendor action (no new request,
        session or connection), live vendor sessions are cut now, and grants keep their state
        (one not yet started stays ``approved``). Off: the vendor grants still inside their
        window work again; those whose window ended meanwhile were expired by :meth:`tick` and
        stay expired. Audited: ``lockout.on|off`` and one ``grant.suspended|resumed`` per grant.
        """
        now = self._clock.now()
        touched: list[str] = []
        with self._tx() as db:
            flag = db.get(PlantFlag, LOCKOUT_FLAG) or PlantFlag(key=LOCKOUT_FLAG)
            before = {
                "vendors": bool((flag.value or {}).get("vendors", False)),
                "reason": str((flag.value or {}).get("reason", "")),
            }
            flag.value = {"vendors": on, "reason": reason.strip()}
            flag.updated_at, flag.updated_by = now, by
            db.add(flag)
            for grant in self.vendor_grants(db, now):
                touched.append(grant.id)
                kind = "grant.suspended" if on else "grant.resumed"
                self._record(kind, by, "ok", grant.id, reason=f"emergency lockout: {reason}")
            self._record(
                "lockout.on" if on else "lockout.off",
                by,
                "ok",
                LOCKOUT_FLAG,
                reason=reason.strip(),
                before=before,
                after=dict(flag.value),
                **{"suspended_grants" if on else "resumed_grants": len(touched)},
            )
        if on:
            for grant_id in touched:
                self._ended(grant_id, "emergency lockout: vendor access is suspended")
        return len(touched)

    @staticmethod
    def vendor_grants(db: Session, now: datetime) -> list[Grant]:
        """Vendors' approved or active grants whose window has not ended (what the lockout
        suspends while it is on)."""
        found = []
        for grant in db.exec(
            select(Grant).where(col(Grant.state).in_(LIVE_GRANT_STATES), col(Grant.ends_at) > now)
        ).all():
            user = db.get(User, grant.user_id)
            if user is not None and VENDOR in user.roles:
                found.append(grant)
        return found

    def vendor_grants_live(self) -> int:
        """How many vendor grants the lockout would suspend (or resume) now."""
        with session_scope(self._engine) as db:
            return len(self.vendor_grants(db, self._clock.now()))

    def lockout_active(self) -> bool:
        with session_scope(self._engine) as db:
            flag = db.get(PlantFlag, LOCKOUT_FLAG)
            return bool(flag and flag.value.get("vendors"))


def _check_spec(spec: RequestSpec, now: datetime) -> None:
    """Raise ValidationError for a request that is wrong on its face (before any lookup)."""
    if not spec.reason.strip():
        raise ValidationError("a reason is required for every access request")
    if spec.operation_class not in OperationClass.ALL:
        raise ValidationError(f"operation class must be one of {', '.join(OperationClass.ALL)}")
    if spec.ends_at <= spec.starts_at:
        raise ValidationError("the window must end after it starts")
    if spec.starts_at < now - START_SKEW:
        raise ValidationError(f"the window starts in the past ({iso(spec.starts_at)})")


@dataclass(frozen=True)
class _Filed:
    """A request policy allowed, ready to be stored."""

    user_id: str
    asset_id: str
    spec: RequestSpec
    scope: _Scope
    decision: Decision
    auth: AuthContext
    now: datetime
