"""Background tasks owned by the gateway object that started them: kept in one set, failures
logged, and at :meth:`OwnedTasks.aclose` cancelled and awaited (none outlives its owner)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("conduit.gateway")


class OwnedTasks:
    """A set of running tasks with one owner."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background until it ends or :meth:`aclose`."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def aclose(self) -> None:
        """Cancel every task and wait for each to finish. Never raises."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task failed: %r", self._what, task.exception())
