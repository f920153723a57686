"""Whether an asset accepts clientless SSH sign-in (a code typed into the broker's page).

Clientless sign-in proves less than a certificate (anyone the vendor is tricked into typing a
code for can bind a connection to their identity), so it is off where the plant is most
sensitive. Per asset:

* the asset label ``clientless`` = ``on`` or ``off`` (case and surrounding spaces ignored)
  decides;
* without that label: on for assets in zones at Purdue level ``min_purdue_level`` (3 by
  default, see ``ssh.clientless_min_purdue_level``) and above, off below;
* any other label value, or an unknown asset: off (fail closed).

The broker's global switch (``ssh.clientless_enabled``) is checked by the broker before this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import col, select

from sessions.db import session_scope
from sessions.models import Asset, Zone

LABEL = "clientless"


@dataclass(frozen=True)
class ClientlessSwitch:
    """The answer for one asset: allowed or not, and why (for the audit log)."""

    allowed: bool
    reason: str


def decide(
    labels: Mapping[str, str], purdue_level: int, *, min_purdue_level: int
) -> ClientlessSwitch:
    """The switch for an asset with ``labels`` in a zone at ``purdue_level``."""
    if LABEL in labels:
        value = str(labels[LABEL]).strip().lower()
        if value == "on":
            return ClientlessSwitch(True, "asset label clientless=on")
        if value == "off":
            return ClientlessSwitch(False, "asset label clientless=off")
        return ClientlessSwitch(False, f"asset label clientless={value[:20]!r} is not on or off")
    if purdue_level >= min_purdue_level:
        return ClientlessSwitch(
            True, f"Purdue level {purdue_level} (default on at {min_purdue_level} and above)"
        )
    return ClientlessSwitch(
        False, f"Purdue level {purdue_level} (default off below {min_purdue_level})"
    )


def clientless_switch(
    engine: Engine, asset_name: str, *, min_purdue_level: int
) -> ClientlessSwitch:
    """Look up ``asset_name`` and decide (see the module docstring)."""
    with session_scope(engine) as db:
        row = db.exec(
            select(Asset.labels, Zone.purdue_level)
            .join(Zone, col(Zone.id) == col(Asset.zone_id))
            .where(Asset.name == asset_name)
        ).first()
    if row is None:
        return ClientlessSwitch(False, "unknown asset")
    labels, level = row
    return decide(labels or {}, level, min_purdue_level=min_purdue_level)
