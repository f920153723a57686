"""An access request as filed (:class:`RequestSpec`), its checks on its face
(:func:`check_spec`) and what it reaches on its asset (:func:`resolve_scope`).

Both raise :class:`sessions.errors.ValidationError` with a message for the requester; neither
touches the database nor asks policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sessions.authorizer import iso
from sessions.endpoints import describe, logins_for
from sessions.errors import ValidationError
from sessions.models import Asset, AssetEndpoint, EndpointProtocol, OperationClass

START_SKEW = timedelta(seconds=60)  # a window may start this much in the past (clock skew)


@dataclass(frozen=True)
class RequestSpec:
    """A request as filed: no ``ports`` means every declared endpoint of ``asset``."""

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
class Scope:
    """What a request reaches: declared endpoint ports, their protocols and the SSH login."""

    ports: list[int]
    protocols: list[str]
    login: str | None


def resolve_scope(spec: RequestSpec, asset: Asset, endpoints: list[AssetEndpoint]) -> Scope:
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
    return Scope(ports, sorted({e.protocol for e in chosen}), login)


def check_spec(spec: RequestSpec, now: datetime) -> None:
    """Raise ValidationError for a request that is wrong on its face (before any lookup)."""
    if not spec.reason.strip():
        raise ValidationError("a reason is required for every access request")
    if spec.operation_class not in OperationClass.ALL:
        raise ValidationError(f"operation class must be one of {', '.join(OperationClass.ALL)}")
    if spec.ends_at <= spec.starts_at:
        raise ValidationError("the window must end after it starts")
    if spec.starts_at < now - START_SKEW:
        raise ValidationError(f"the window starts in the past ({iso(spec.starts_at)})")
