"""Asking the policy engine about people, assets and actions — and auditing every answer.

:func:`build_input` turns domain records into the policy input document (the contract in
docs/policy.md); :class:`Authorizer` asks the engine and appends a ``policy.decision`` audit
event carrying the input's SHA-256, the outcome, the reasons, the engine and bundle version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from policies.decision import Decision
from policies.engine import Engine
from sessions.audit import AuditLog
from sessions.credentials import NO_AUTH, AuthContext
from sessions.endpoints import endpoint_document, endpoints_of
from sessions.models import (
    AccessRequest,
    Approval,
    Asset,
    Grant,
    PlantFlag,
    Site,
    User,
    VendorOrg,
    Zone,
)

ACTION_KINDS = ("ssh", "sftp", "tcp", "web_terminal", "request", "approve")


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def user_document(db: Session, user: User, auth: AuthContext = NO_AUTH) -> dict[str, Any]:
    """The user as policy sees it. ``amr``/``acr``/``auth_time`` come from ``auth``, the
    credential actually used (web session, CLI token, SSH certificate), never from the user's
    latest sign-in: an old password-only credential gets no MFA credit from a newer sign-in."""
    org = db.get(VendorOrg, user.vendor_org_id) if user.vendor_org_id else None
    return {
        "sub": user.sub,
        "email": user.email,
        "name": user.name,
        "groups": list(user.groups),
        "roles": list(user.roles),
        "amr": list(auth.amr),
        "acr": auth.acr,
        "auth_time": iso(auth.auth_time) if auth.auth_time else None,
        "idp": user.issuer,
        "vendor_org": org.slug if org else None,
    }


def asset_document(db: Session, asset: Asset) -> dict[str, Any]:
    """The asset as policy sees it; ``protocols`` are those of its declared ``endpoints``."""
    site, zone = db.get(Site, asset.site_id), db.get(Zone, asset.zone_id)
    endpoints = endpoints_of(db, asset.id)
    return {
        "name": asset.name,
        "site": site.name if site else "",
        "zone": zone.name if zone else "",
        "purdue_level": zone.purdue_level if zone else 0,
        "criticality": asset.criticality,
        "owner_group": asset.owner_group,
        "labels": dict(asset.labels),
        "protocols": sorted({e.protocol for e in endpoints}),
        "endpoints": [endpoint_document(e) for e in endpoints],
    }


def grant_document(db: Session, grant: Grant) -> dict[str, Any]:
    request = db.get(AccessRequest, grant.request_id)
    requester = db.get(User, grant.user_id)
    approver_ids = db.exec(
        select(Approval.approver_id).where(
            Approval.request_id == grant.request_id, Approval.verdict == "approve"
        )
    ).all()
    approvers = [u.sub for u in (db.get(User, i) for i in approver_ids) if u is not None]
    return {
        "id": grant.id,
        "requester": requester.sub if requester else "",
        "approvers": approvers,
        "starts_at": iso(grant.starts_at),
        "ends_at": iso(grant.ends_at),
        "ticket": request.ticket if request else None,
        "state": grant.state,
        "maintenance_window_only": bool(grant.obligations.get("maintenance_window_only", False)),
        "operation_class": grant.operation_class,
        "ports": list(request.ports) if request else [],
        "login": request.login if request else None,
    }


def build_input(
    db: Session,
    *,
    user: Mapping[str, Any],
    asset: Asset,
    action: Mapping[str, Any],
    grant: Mapping[str, Any] | None,
    now: datetime,
    source_ip: str | None = None,
    agent_online: bool = False,
) -> dict[str, Any]:
    """The policy input document for one question.

    ``action`` keys: ``kind``, ``port`` (one connection's endpoint port), ``ports`` (the
    endpoint ports a request names), ``protocol`` (the connection's endpoint protocol),
    ``operation_class`` and ``login``.
    """
    plant_state = db.get(PlantFlag, "plant_state")
    return {
        "user": dict(user),
        "asset": asset_document(db, asset),
        "action": {
            "kind": action.get("kind"),
            "port": action.get("port"),
            "ports": list(action.get("ports") or []),
            "protocol": action.get("protocol"),
            "operation_class": action.get("operation_class", "read_only"),
            "login": action.get("login"),
        },
        "grant": dict(grant) if grant is not None else None,
        "context": {
            "now": iso(now),
            "source_ip": source_ip,
            "agent_online": agent_online,
            "plant_state": plant_state.value.get("state") if plant_state else None,
        },
    }


class Authorizer:
    """Decides through ``engine`` and audits each decision (fails closed on audit failure)."""

    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self.engine = engine
        self._audit = audit

    async def decide(
        self, document: Mapping[str, Any], *, actor: str, purpose: str, source_ip: str | None = None
    ) -> Decision:
        decision = await self.engine.decide(document)
        asset = document.get("asset") if isinstance(document.get("asset"), Mapping) else {}
        action = document.get("action") if isinstance(document.get("action"), Mapping) else {}
        details: dict[str, Any] = {
            "purpose": purpose,
            "input_hash": decision.input_hash,
            "reasons": list(decision.reasons),
            "engine": decision.engine,
            "bundle_version": decision.bundle_version,
            "action": action.get("kind") if isinstance(action, Mapping) else None,
        }
        if decision.allow:
            details["obligations"] = decision.obligations.as_dict()
        subject = (
            str(asset.get("name")) if isinstance(asset, Mapping) and asset.get("name") else None
        )
        await asyncio.to_thread(
            self._audit.append,
            "policy.decision",
            actor=actor,
            outcome="allow" if decision.allow else "deny",
            subject=subject,
            source_ip=source_ip,
            details=details,
        )
        return decision
