"""Recurring maintenance windows per site ("Tue 22:00-02:00 Europe/Berlin").

Times are wall-clock in the site's time zone; ``days`` name the day each window starts on;
an end at or before the start runs past midnight. Policy reads them from ``data.plant`` and
grants may be limited to them (``maintenance_window_only``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlmodel import Session, col, select

from sessions.errors import NotFoundError, ValidationError
from sessions.models import MaintenanceWindow, Site

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def add_window(
    db: Session, site: str, days: Sequence[str], start: str, end: str, description: str = ""
) -> MaintenanceWindow:
    """Validate and store a window; raises NotFoundError (site) or ValidationError."""
    row = db.exec(select(Site).where(Site.name == site)).first()
    if row is None:
        raise NotFoundError(f"unknown site {site!r}")
    norm = [d.strip().lower()[:3] for d in days]
    if not norm or any(d not in DAYS for d in norm):
        raise ValidationError(f"days must be among {', '.join(DAYS)}")
    for value, what in ((start, "start"), (end, "end")):
        if not _HHMM.match(value):
            raise ValidationError(f"{what} {value!r} is not HH:MM (24 h)")
    if start == end:
        raise ValidationError("a window cannot start and end at the same time")
    window = MaintenanceWindow(
        site_id=row.id,
        days=sorted(set(norm), key=DAYS.index),
        start=start,
        end=end,
        description=description,
    )
    db.add(window)
    db.flush()
    return window


def list_windows(db: Session) -> list[tuple[MaintenanceWindow, str]]:
    query = select(MaintenanceWindow, Site.name).join(
        Site, col(Site.id) == col(MaintenanceWindow.site_id)
    )
    return [(w, s) for w, s in db.exec(query).all()]


def remove_window(db: Session, window_id: str) -> None:
    row = db.get(MaintenanceWindow, window_id)
    if row is None:
        raise NotFoundError("unknown maintenance window")
    db.delete(row)
