"""Is recording storage usable? Probed on a timer, checked before each strict session, and told
by every recorder that fails.

``check()`` creates the recordings directory if needed, requires ``min_free_bytes`` free (never
less than one probe's worth) and writes, fsyncs and removes a small probe file: a full, read-only
or vanished filesystem fails it. The state (:attr:`RecordingStorage.problem`) is what ``/healthz``
reports for readiness; each change between healthy and failing is passed to ``on_change``
(the broker logs it, audits it and sends it to the webhook). A recorder's own failure marks
storage failing at once; the next probe that passes marks it healthy again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from sessions.files import write_all
from sessions.recording import RecordingError

log = logging.getLogger("conduit.recording")
PROBE_NAME = ".conduit-storage-probe"
PROBE_BYTES = 4096


class RecordingStorage:
    """One per broker; :meth:`start`/:meth:`aclose` own the probe task."""

    def __init__(
        self,
        root: Path,
        *,
        min_free_bytes: int,
        probe_interval_s: float,
        on_change: Callable[[str | None], None] | None = None,
    ) -> None:
        self.root = root
        self._min_free = max(min_free_bytes, PROBE_BYTES)
        self._interval = probe_interval_s
        self.on_change = on_change  # called on each change, from any thread
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def problem(self) -> str | None:
        """Why storage is failing, or None while it is healthy."""
        return self._problem

    def check(self) -> str | None:
        """Probe now (blocking disk I/O): update the state and return the problem, if any."""
        problem = self._probe()
        self._set(problem)
        return problem

    def require(self) -> None:
        """Probe now; raise :class:`RecordingError` (``storage_failing``) if storage fails."""
        problem = self.check()
        if problem is not None:
            raise RecordingError(f"recording storage: {problem}", code="storage_failing")

    def failed(self, reason: str) -> None:
        """A recorder could not write: storage is failing until a probe passes (any thread)."""
        self._set(reason[:300])

    def _probe(self) -> str | None:
        """The problem in a few words (no paths: the vendor may be told), or None."""
        probe = self.root / PROBE_NAME
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            stat = os.statvfs(self.root)
            free = stat.f_bavail * stat.f_frsize
            if free < self._min_free:
                return f"{free} bytes free, below the minimum of {self._min_free}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, b"\0" * PROBE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            return f"not writable: {exc.strerror or exc}"
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return None

    def _set(self, problem: str | None) -> None:
        with self._lock:
            changed = (problem is None) != (self._problem is None)
            self._problem = problem
        if not changed:
            return
        if problem is None:
            log.warning("recording storage %s is healthy again", self.root)
        else:
            log.error(
                "recording storage %s failing: %s; strict sessions are refused", self.root, problem
            )
        if self.on_change is not None:
            self.on_change(problem)

    def start(self) -> None:
        """Start probing every ``probe_interval_s`` on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="storage probe")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.check)
            await asyncio.sleep(self._interval)
