"""Filing an access request: checked on its face, resolved against the asset's declared
endpoints, asked of policy (kind ``request``), then stored as ``pending`` together with that
decision's obligations and bundle version (what approvers are shown; the grant takes the
approving decision's); every refusal is audited (``access.request`` with outcome ``rejected``
or ``deny``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from policies.decision import Decision
from sessions.access.base import AccessCore, AccessDenied
from sessions.access.request_spec import RequestSpec, Scope, check_spec, resolve_scope
from sessions.authorizer import build_input, iso, user_document
from sessions.credentials import NO_AUTH, AuthContext
from sessions.db import session_scope
from sessions.endpoints import endpoints_of
from sessions.errors import ConflictError, NotFoundError, ValidationError
from sessions.identity import VENDOR
from sessions.models import AccessRequest, AccessRequestState, Asset, User


@dataclass(frozen=True)
class _Filed:
    """A request policy allowed, ready to be stored."""

    user_id: str
    asset_id: str
    spec: RequestSpec
    scope: Scope
    decision: Decision
    auth: AuthContext
    now: datetime


class RequestFiling(AccessCore):
    """Files access requests (see :meth:`request`)."""

    async def request(
        self, user_id: str, spec: RequestSpec, *, auth: AuthContext = NO_AUTH
    ) -> AccessRequest:
        """File a request. Raises ValidationError (bad window, no reason, duplicate),
        NotFoundError (unknown asset) or AccessDenied (policy).

        ``auth``: how the credential filing it was authenticated (policy's ``user.amr``/``acr``),
        kept on the request for the check at the window start."""
        now = self._clock.now()
        check_spec(spec, now)
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
    ) -> tuple[dict[str, Any], str, Scope]:
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
            scope = resolve_scope(spec, asset, endpoints_of(db, asset.id))
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
                obligations=obligations.as_dict(),
                policy_version=f.decision.bundle_version,
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
