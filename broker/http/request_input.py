"""Reading what a request sends: a JSON object body, durations, ISO-8601 times.

Used by the JSON API and the pages' forms alike. Bad input raises
:class:`broker.runtime.errors.BadRequest` (400) with a message that quotes at most the start
of what was sent; nothing is changed.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request

from broker.runtime.errors import BadRequest

_DURATION = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*$")
# Far beyond any window policy allows; past it a duration is a typo (or a probe), not a plan.
MAX_DURATION = timedelta(days=366)


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; BadRequest for invalid JSON or any other JSON value."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def parse_duration(text: str) -> timedelta:
    """``2h``, ``90m``, ``1h30m`` → timedelta up to :data:`MAX_DURATION`; raises BadRequest."""
    match = _DURATION.match(text or "")
    if not match or not any(match.groups()):
        raise BadRequest(f"duration {text[:40]!r} is not like 2h, 90m or 1h30m")
    hours, minutes = match[1] or "0", match[2] or "0"
    longest = int(MAX_DURATION.total_seconds() // 3600)
    # Digit count first: int() of thousands of digits is refused (and slow) in itself.
    if max(len(hours), len(minutes)) > 7 or int(hours) * 60 + int(minutes) > longest * 60:
        raise BadRequest(f"duration {text[:40]!r} is longer than the maximum of {longest}h")
    return timedelta(hours=int(hours), minutes=int(minutes))


def add_duration(starts: datetime, text: str) -> datetime:
    """``starts`` plus :func:`parse_duration` of ``text``; raises BadRequest past year 9999."""
    duration = parse_duration(text)
    try:
        return starts + duration
    except OverflowError:
        raise BadRequest(
            f"a window of {text[:40]!r} from {starts.isoformat()} ends after the year 9999"
        ) from None


def parse_time(text: str, what: str) -> datetime:
    """An ISO-8601 time with a zone (``Z`` accepted); ``what`` names the field in the error."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise BadRequest(f"{what} {text!r} is not an ISO-8601 time") from exc
    if value.tzinfo is None:
        raise BadRequest(f"{what} must include a time zone (e.g. ...Z)")
    return value
