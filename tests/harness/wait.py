"""Waiting for an observable outcome, never for a fixed time.

Tests synchronise on conditions (a row in the audit log, a closed connection, a file on disk),
polled until a deadline that is generous on purpose: a loaded CI machine is slow, not wrong.
How *fast* something happens is measured in bench/, not asserted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_S = 30.0  # generous: only a real hang should ever reach it
INTERVAL_S = 0.02


def wait_until(
    predicate: Callable[[], T],
    what: str,
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that.

    Raises :class:`AssertionError` naming ``what`` (and the last value seen) after ``timeout``
    seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({value!r})")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
) -> T:
    """:func:`wait_until` for the event loop: ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({value!r})")
        await asyncio.sleep(interval)
