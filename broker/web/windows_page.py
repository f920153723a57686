"""``/admin/windows``: every site's maintenance windows in its own time zone, with the next opening.

Admins and approvers read it; admins add and remove windows through the plant page's forms
(:func:`broker.web.plant_pages.apply_form`, kinds ``window`` and ``window_remove``): the same
validation, ``plant.*`` audit and policy-data refresh as ``conduit plant apply``. A refused
form shows the message and changes nothing. Windows are listed in the plant document's order,
``window_remove`` names a window by its key (days and times, :func:`window_key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.http.plant_changes import exported
from broker.http.plant_document import window_key
from broker.http.web import render, require
from broker.services import services
from broker.web.plant_pages import apply_form
from sessions.identity import ADMIN, APPROVER
from sessions.windows import DAYS

PAGE = "/admin/windows"


@dataclass(frozen=True)
class Opening:
    """``open_now``: the window is open, ``at`` is when it closes; else ``at`` is the next start."""

    open_now: bool
    at: datetime  # in the site's time zone


def _hhmm(text: str) -> dtime:
    hours, minutes = text.split(":")
    return dtime(int(hours), int(minutes))


def next_opening(days: list[str], start: str, end: str, tz: str, now: datetime) -> Opening | None:
    """The window's state at ``now`` (aware): open until when, or the next start; None if it
    names no day. Times are wall-clock in ``tz``; an end at or before the start is next day."""
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    first, last = _hhmm(start), _hhmm(end)
    upcoming: list[datetime] = []
    for offset in range(-1, 8):  # yesterday's window may still be open past midnight
        day = local.date() + timedelta(days=offset)
        if DAYS[day.weekday()] not in days:
            continue
        opens = datetime.combine(day, first, tzinfo=zone)
        closes = datetime.combine(day + timedelta(days=int(last <= first)), last, tzinfo=zone)
        if opens <= local < closes:
            return Opening(True, closes)
        if opens > local:
            upcoming.append(opens)
    return Opening(False, min(upcoming)) if upcoming else None


def _sites(data: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    out = []
    for site in data["sites"]:
        windows = []
        for index, w in enumerate(site.get("maintenance_windows") or []):
            opening = next_opening(w["days"], w["start"], w["end"], site["timezone"], now)
            windows.append({**w, "index": index, "key": window_key(w), "opening": opening})
        local_now = now.astimezone(ZoneInfo(site["timezone"]))
        out.append({**site, "windows": windows, "now": local_now})
    return out


async def _page(
    request: Request, error: str | None = None, values: dict[str, Any] | None = None
) -> Response:
    svc = services(request)
    data = await exported(request)
    ctx = {
        "sites": _sites(data, svc.clock.now().astimezone(UTC)),
        "days": DAYS,
        "error": error,
        "values": values or {},
        "message": request.query_params.get("message"),
    }
    return render(request, "windows.html", ctx, status=400 if error else 200)


async def windows_page(request: Request) -> Response:
    await require(request, ADMIN, APPROVER)
    return await _page(request)


async def _change(request: Request, kind: str, done: str) -> Response:
    principal = await require(request, ADMIN)
    problem, values = await apply_form(request, principal, kind)
    if problem is not None:
        return await _page(request, str(problem), values)
    return RedirectResponse(f"{PAGE}?message={done}", status_code=303)


async def add_window(request: Request) -> Response:
    return await _change(request, "window", "window+added")


async def remove_window(request: Request) -> Response:
    return await _change(request, "window_remove", "window+removed")


routes = [
    Route(PAGE, windows_page, methods=["GET"]),
    Route(f"{PAGE}/add", add_window, methods=["POST"]),
    Route(f"{PAGE}/remove", remove_window, methods=["POST"]),
]
