"""Before ``conduit forward`` listens: does the caller hold a grant that covers ASSET:PORT now?

The broker decides every forwarded connection again (policy, grant, agent); this check only
spares the vendor a listener whose every connection would be reset. It asks the broker for the
caller's own grants on the asset (``GET /api/grants?mine=1&asset=...``) and for the vendor
lockout, and raises :class:`BrokerError` ``no_grant`` with the reason when none covers the port:
no grant at all, not yet started, ended (expired, revoked, denied), the port not in the grant,
or the vendor lockout.
"""

from __future__ import annotations

from typing import Any

from broker.cli.api_client import call
from broker.runtime.errors import BrokerError

_ENDED = {"expired": "expired at {ends_at}", "revoked": "was revoked", "denied": "was denied"}


def _reaches(grant: dict[str, Any]) -> str:
    ports = sorted({int(p) for p in grant.get("ports") or []})
    return ", ".join(str(p) for p in ports) or "no ports"


def _why_not(asset: str, port: int, grants: list[dict[str, Any]], lockout: bool) -> str:
    active = [g for g in grants if g["state"] == "active"]
    if active:
        listed = "; ".join(f"{g['id'][:8]} reaches port(s) {_reaches(g)}" for g in active)
        return (
            f"port {port} is not in your grant on {asset} ({listed}): request access to it "
            f"with `conduit request {asset} --port {port} --reason ...`"
        )
    lock = " The vendor lockout is ON: all vendor access is disabled." if lockout else ""
    waiting = [g for g in grants if g["state"] in {"pending", "approved"}]
    if waiting:
        g = waiting[0]
        starts = g["starts_at"]
        return f"your grant {g['id'][:8]} on {asset} is not active yet (starts {starts}).{lock}"
    if grants:
        g = grants[0]  # the newest
        what = _ENDED.get(g["state"], g["state"]).format(ends_at=g["ends_at"])
        reason = f" ({g['revoke_reason']})" if g.get("revoke_reason") else ""
        return (
            f"your grant {g['id'][:8]} on {asset} {what}{reason}: request access again with "
            f"`conduit request {asset} --port {port} --reason ...`.{lock}"
        )
    if lockout:
        return lock.strip()
    return (
        f"you have no grant on {asset}: request one with "
        f"`conduit request {asset} --port {port} --reason ...` and wait for its approval"
    )


def check_forward(asset: str, port: int, grant: str | None) -> dict[str, Any]:
    """The caller's active grant on ``asset`` covering ``port`` (the one named by the ``grant``
    id prefix if given); :class:`BrokerError` ``no_grant`` saying why there is none."""
    grants: list[dict[str, Any]] = call("GET", "/api/grants", params={"mine": "1", "asset": asset})
    if grant is not None:
        grants = [g for g in grants if g["id"].lower().startswith(grant.lower())]
        if not grants:
            raise BrokerError(
                f"you have no grant on {asset} whose id starts with {grant!r}: "
                "see `conduit grants`",
                code="no_grant",
            )
    for g in grants:
        if g["state"] == "active" and port in (g.get("ports") or []):
            return g
    lockout = bool(call("GET", "/api/lockout").get("vendor_lockout"))
    raise BrokerError(f"not forwarding: {_why_not(asset, port, grants, lockout)}", code="no_grant")
