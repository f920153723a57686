"""People: roles, the identity asserted by the IdP, and the user record it maps to.

Roles come only from IdP groups through the configured mapping; a user whose groups map to
nothing is signed in with no roles and therefore no access (deny by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlmodel import Session, select

from sessions.clock import Clock
from sessions.models import User, VendorOrg

VENDOR = "vendor"
APPROVER = "approver"
ADMIN = "admin"
SECURITY = "security"
ROLES: tuple[str, ...] = (VENDOR, APPROVER, ADMIN, SECURITY)


def map_roles(groups: Iterable[str], mapping: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the Conduit roles (in :data:`ROLES` order) granted by ``groups``."""
    have = set(groups)
    return [role for role in ROLES if have.intersection(mapping.get(role, ()))]


@dataclass(frozen=True)
class Identity:
    """What a validated ID token (plus userinfo) says about a person."""

    issuer: str
    sub: str
    email: str | None
    name: str | None
    groups: tuple[str, ...] = ()
    vendor_org: str | None = None
    amr: tuple[str, ...] = ()
    acr: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


def upsert_user(db: Session, identity: Identity, roles: Sequence[str], clock: Clock) -> User:
    """Create or refresh the user for ``identity``; groups, roles and amr follow the IdP.

    A ``vendor_org`` claim links the user to the vendor organisation with that slug, or with
    that value among its ``idp_values`` (set by the plant file), creating one (with no
    contracts, hence no access) when none matches.
    """
    now = clock.now()
    user = db.exec(
        select(User).where(User.issuer == identity.issuer, User.sub == identity.sub)
    ).first()
    org_id = None
    if identity.vendor_org:
        org = db.exec(select(VendorOrg).where(VendorOrg.slug == identity.vendor_org)).first()
        if org is None:  # another claim value the plant maps to an organisation (idp_values)
            org = next(
                (o for o in db.exec(select(VendorOrg)) if identity.vendor_org in o.idp_values),
                None,
            )
        if org is None:
            org = VendorOrg(slug=identity.vendor_org, name=identity.vendor_org, created_at=now)
            db.add(org)
            db.flush()
        org_id = org.id
    if user is None:
        user = User(issuer=identity.issuer, sub=identity.sub, created_at=now)
    user.email = identity.email or ""
    user.name = identity.name or identity.email or identity.sub
    user.groups = list(identity.groups)
    user.roles = list(roles)
    user.amr = list(identity.amr)
    user.vendor_org_id = org_id
    user.last_login_at = now
    db.add(user)
    db.flush()
    return user
