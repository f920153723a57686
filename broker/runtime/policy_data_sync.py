"""Keeps the policy engine's ``data.plant`` in step with the database.

:class:`PolicyDataSync` owns one task. It pushes the plant data (rebuilt from the database in
a worker thread) to the engine at start-up, within ``debounce_s`` of :meth:`changed` (callable
from any thread: a burst of changes becomes one push) and every ``interval_s`` as a backstop
(changes made by other processes, an OPA server that restarted and lost its data). Pushes are
serialised, so data built later is never overwritten by data built earlier. A push the
engine refuses (an OPA server down) is logged every time and reported through ``on_status``
when the state changes: the problem on the first failure, None on the next success.

``on_change`` hears about data that differs from the last data the engine took: called with
None after it was pushed, and with the problem after the first failed push of it (the grant
re-check, :mod:`broker.runtime.grant_recheck`, runs then; it trusts no deny while the push
fails). A backstop push of unchanged data calls nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from policies.canonical import canonical_bytes
from policies.engine import Engine as PolicyEngine
from policies.errors import PolicyError

log = logging.getLogger("conduit.policy")

DEBOUNCE_S = 0.05

StatusHandler = Callable[[str | None], Awaitable[None]]
ChangeHandler = Callable[[str | None], None]


class PolicyDataSync:
    def __init__(
        self,
        build: Callable[[], dict[str, Any]],
        engine: PolicyEngine,
        *,
        interval_s: float,
        debounce_s: float = DEBOUNCE_S,
    ) -> None:
        self._build, self._engine = build, engine
        self._interval_s, self._debounce_s = interval_s, debounce_s
        self.on_status: StatusHandler | None = None
        self.on_change: ChangeHandler | None = None
        self._pushed: str | None = None  # digest of the data the engine last took
        self._tried: str | None = None  # digest of the data last attempted
        self.problem: str | None = None  # the last push's failure, None after a success
        self.pushes = 0  # successful pushes
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the sync runs on (None before :meth:`start`)."""
        return self._loop

    async def start(self) -> None:
        """Push once now, then keep pushing on changes and every ``interval_s``."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="policy-data-sync")

    def changed(self) -> None:
        """Plant data changed: push within ``debounce_s``. Safe from any thread; never raises."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not started: start() pushes the current data anyway
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to refresh
            loop.call_soon_threadsafe(wake.set)

    async def refresh(self) -> bool:
        """Rebuild the data and push it now. False when the engine refused it (reported).

        Database errors propagate (the caller's request fails, the task logs and retries).
        """
        async with self._lock:
            data = await asyncio.to_thread(self._build)
            digest = hashlib.sha256(canonical_bytes(data)).hexdigest()
            tried, self._tried = self._tried, digest
            try:
                await self._engine.push_data(data)
            except PolicyError as exc:
                log.warning("policy data not pushed: %s", exc.message)
                await self._report(exc.message)
                if digest not in (self._pushed, tried):  # a change, first failure: say so once
                    self._changed(exc.message)
                return False
            self.pushes += 1
            pushed, self._pushed = self._pushed, digest
            await self._report(None)
            if digest != pushed:
                self._changed(None)
            return True

    def _changed(self, problem: str | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(problem)
        except Exception:  # a listener must not stop the pushes
            log.exception("announcing changed policy data failed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _report(self, problem: str | None) -> None:
        before, self.problem = self.problem, problem
        if (before is None) == (problem is None) or self.on_status is None:
            return
        try:
            await self.on_status(problem)
        except Exception:  # reporting must not stop the pushes
            log.exception("reporting the policy data push status failed")

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await wake.wait()
            if wake.is_set():
                await asyncio.sleep(self._debounce_s)  # let a burst of changes coalesce
            wake.clear()  # a change from here on triggers the next round
            try:
                await self.refresh()
            except Exception:  # keep the last good data; the next round retries
                log.exception("refreshing policy data failed")
