"""One background task that runs a round every few seconds, owned by whoever starts it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Periodic:
    """Run ``round_`` every ``interval_s`` on the event loop until :meth:`aclose`.

    A failing round is logged (``what`` names it) and the next one runs: the task never stops
    on an error. ``start`` and ``aclose`` are idempotent in the obvious way.
    """

    def __init__(
        self,
        round_: Callable[[], Awaitable[None]],
        interval_s: float,
        what: str,
        log: logging.Logger,
    ) -> None:
        self._round, self._interval, self._what, self._log = round_, interval_s, what, log
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._round()
            except Exception:  # the next round retries
                self._log.exception("%s failed", self._what)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
