"""Waiting on conditions, never on the clock: the one poll loop the harness uses."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 20 ms until it holds; returns the seconds it took.

    Fails the test (AssertionError naming ``what``) after ``timeout`` seconds: the bound is
    generous on purpose, since the suite must pass on a loaded machine.
    """
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start
