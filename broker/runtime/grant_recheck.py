"""When the broker re-checks live grants: after a plant change, a policy bundle reload, and
periodically as the backstop.

:class:`GrantRecheckRunner` owns one task that runs ``recheck(trigger, data_problem)``
(:meth:`sessions.access.recheck.GrantRecheck.recheck`) one at a time:

* ``plant change`` at once when :meth:`plant_changed` is called (wired to
  :attr:`broker.runtime.policy_data_sync.PolicyDataSync.on_change`: after changed plant data
  reached the engine, or with the problem when it could not be pushed, so nothing is revoked
  on stale data and the next successful push re-checks again);
* ``policy bundle <version>`` within ``poll_s`` of the embedded engine activating another
  bundle (``version()`` changed; an OPA server's bundle is covered by the backstop);
* ``periodic`` every ``interval_s`` (changes policy sees only through time or through the
  user's record: a contract's end passing, a user disabled or demoted at sign-in);
* ``retry`` after a re-check some of whose decisions failed (the engine erred): after
  ``retry_s``, doubling while it keeps failing, at most ``interval_s``.

Every re-check is told the plant data's push problem (``data_problem()``, or the one a plant
change came with), so no deny is trusted while the engine may hold stale data. A re-check that
raises is logged and the next trigger retries; the task never stops on an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sessions.access.recheck import RecheckReport

log = logging.getLogger("conduit.access")

RECHECK_INTERVAL_S = 60.0
RETRY_S = 5.0
Recheck = Callable[[str, str | None], Awaitable[RecheckReport]]


class GrantRecheckRunner:
    """Owns the re-check task (see the module); :meth:`start` and :meth:`aclose` on the loop,
    :meth:`plant_changed` from any thread (ignored before start and after the loop closed)."""

    def __init__(
        self,
        recheck: Recheck,
        version: Callable[[], str | None],
        data_problem: Callable[[], str | None],
        *,
        interval_s: float = RECHECK_INTERVAL_S,
        retry_s: float = RETRY_S,
        poll_s: float = 0.25,
    ) -> None:
        self._recheck, self._version, self._data_problem = recheck, version, data_problem
        self._interval_s, self._retry_s, self._poll_s = interval_s, retry_s, poll_s
        self._pending: tuple[str | None] | None = None  # a plant change: (data problem,)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="grant-recheck")

    def plant_changed(self, problem: str | None = None) -> None:
        """The plant data changed (``problem``: it could not be pushed). Any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        self._pending = (problem,)  # the latest word wins
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(wake.set)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop, wake = self._loop, self._wake
        assert loop is not None
        assert wake is not None
        seen, due = self._version(), loop.time() + self._interval_s
        retry, backoff = False, self._retry_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await wake.wait()
            wake.clear()
            pending, self._pending = self._pending, None
            version = self._version()
            problem = self._data_problem()
            if pending is not None:
                trigger, problem = "plant change", pending[0] or problem
            elif version != seen:
                trigger = f"policy bundle {version}"
            elif loop.time() >= due:
                trigger = "retry" if retry else "periodic"
            else:
                continue
            seen = version
            try:
                report = await self._recheck(trigger, problem)
            except Exception:  # the next trigger retries
                log.exception("re-checking grants (%s) failed", trigger)
                report = None
            retry = report is None or bool(report.failed)
            if retry:  # sooner than the backstop, backing off while the engine stays down
                due, backoff = loop.time() + backoff, min(backoff * 2, self._interval_s)
            else:
                due, backoff = loop.time() + self._interval_s, self._retry_s
