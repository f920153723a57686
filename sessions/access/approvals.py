"""Deciding a pending request: approvals (policy kind ``approve``; the grant once enough
distinct approvers agreed), denials and the requester's cancel. Every step is audited.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from policies.decision import Decision
from sessions.access.base import AccessCore, AccessDenied
from sessions.authorizer import build_input, iso, user_document
from sessions.credentials import NO_AUTH, AuthContext
from sessions.db import is_sqlite, session_scope
from sessions.errors import ConflictError, NotFoundError, ValidationError
from sessions.identity import ADMIN
from sessions.models import (
    AccessRequest,
    AccessRequestState,
    Approval,
    ApprovalVerdict,
    Asset,
    Grant,
    GrantState,
    User,
)


class RequestDecisions(AccessCore):
    """Approve, deny or cancel a pending request."""

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
