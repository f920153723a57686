"""Compatibility name for :func:`tests.harness.wait.wait_until` (positional timeout)."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness.wait import wait_until


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """:func:`tests.harness.wait.wait_until` with the timeout first (older call sites)."""
    wait_until(predicate, what, timeout=timeout)
