"""The active embedded policy, and its hot reload with validation.

:class:`PolicyManager` is an :class:`~policies.engine.Engine`. It holds at most one active
:class:`~policies.embedded.EmbeddedEngine`. ``reload()`` validates a bundle directory in a
subprocess (compile + its tests, with a deadline) and swaps it in only if everything passes;
otherwise the previous bundle stays active and the failure is reported through ``on_event``
(the broker audits it). With no valid bundle at all, every decision is a deny.

``watch()`` polls the directory (file names, sizes and modification times) and reloads on
change; it is a background task owned by whoever starts it (``start_watching``/``aclose``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from policies.clock import Clock, SystemClock
from policies.decision import Decision, deny
from policies.embedded import DEFAULT_BUDGET_MS, EmbeddedEngine
from policies.errors import BundleError
from policies.rvm import EvaluatorStatus
from policies.validate import DEFAULT_TIMEOUT_S, validate_bundle

EventSink = Callable[[str, dict[str, Any]], None]


def _fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(
            sorted(
                (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                for p in root.rglob("*")
                if p.is_file() and (p.suffix == ".rego" or p.name == "data.json")
            )
        )
    except OSError:
        return ()


@dataclass(frozen=True)
class PolicyStatus:
    bundle_dir: str
    active_version: str | None
    activated_at: datetime | None
    last_error: str | None
    last_problems: tuple[str, ...]
    # Which evaluator decides (rvm or interpreter) and why; None without an active bundle.
    evaluator: EvaluatorStatus | None = None


class PolicyManager:
    name = "embedded"

    def __init__(
        self,
        bundle_dir: Path,
        *,
        on_event: EventSink | None = None,
        validate_timeout_s: float = DEFAULT_TIMEOUT_S,
        budget_ms: float = DEFAULT_BUDGET_MS,
        rvm: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self._clock = clock or SystemClock()  # stamps activated_at
        self._rvm = rvm  # True: the compiled VM decides once verified (policies.embedded)
        self._on_event = on_event or (lambda kind, details: None)
        self._timeout = validate_timeout_s
        self._budget = budget_ms
        self._active: EmbeddedEngine | None = None
        self._activated_at: datetime | None = None
        self._last_error: str | None = None
        self._last_problems: tuple[str, ...] = ()
        self._data: dict[str, Any] = {}
        self._reload_lock = threading.Lock()
        self._seen: tuple[tuple[str, int, int], ...] = ()
        self._task: asyncio.Task[None] | None = None

    @property
    def version(self) -> str | None:
        return self._active.version if self._active else None

    def status(self) -> PolicyStatus:
        return PolicyStatus(
            str(self.bundle_dir),
            self.version,
            self._activated_at,
            self._last_error,
            self._last_problems,
            self._active.evaluator_status() if self._active else None,
        )

    def reload(self) -> str:
        """Validate and activate the bundle directory; returns the active version.

        Raises BundleError (after reporting ``policy.rejected``) if the bundle is invalid;
        the previously active bundle, if any, stays active.
        """
        with self._reload_lock:
            self._seen = _fingerprint(self.bundle_dir)
            result = validate_bundle(self.bundle_dir, timeout_s=self._timeout)
            if result.ok:
                try:
                    engine = EmbeddedEngine.from_directory(
                        self.bundle_dir, budget_ms=self._budget, rvm=self._rvm
                    )
                except BundleError as exc:  # changed between validation and load
                    result = type(result)(False, None, exc.message, exc.problems)
                else:
                    if engine.version != result.version:
                        result = type(result)(
                            False, engine.version, "bundle changed while it was validated", []
                        )
            if not result.ok:
                self._last_error = result.summary
                self._last_problems = tuple(result.problems)
                self._on_event(
                    "policy.rejected",
                    {
                        "bundle_dir": str(self.bundle_dir),
                        "candidate_version": result.version,
                        "summary": result.summary,
                        "problems": result.problems[:20],
                        "active_version": self.version,
                    },
                )
                raise BundleError(f"policy bundle rejected: {result.summary}", result.problems)
            previous = self.version
            if self._data:
                engine.set_data(self._data)
            self._active, self._activated_at = engine, self._clock.now()
            self._last_error, self._last_problems = None, ()
            self._on_event(
                "policy.activated",
                {
                    "bundle_dir": str(self.bundle_dir),
                    "version": engine.version,
                    "previous_version": previous,
                    "tests": result.summary,
                },
            )
            return engine.version

    def set_data(self, data: Mapping[str, Any]) -> None:
        """Push new data (``{"plant": ...}``); kept across reloads."""
        self._data = dict(data)
        if self._active is not None:
            self._active.set_data(self._data)

    async def push_data(self, data: Mapping[str, Any]) -> None:
        """:meth:`set_data` for the :class:`~policies.engine.Engine` protocol; never fails."""
        self.set_data(data)

    @property
    def data(self) -> dict[str, Any]:
        return self._data

    def decide_sync(self, document: Mapping[str, Any]) -> Decision:
        engine = self._active
        if engine is None:
            return deny("no valid policy bundle is loaded", engine=self.name)
        return engine.decide_sync(document)

    async def decide(self, document: Mapping[str, Any]) -> Decision:
        return self.decide_sync(document)

    def changed(self) -> bool:
        return _fingerprint(self.bundle_dir) != self._seen

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload whenever the directory changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                with contextlib.suppress(BundleError):
                    await asyncio.to_thread(self.reload)

    def start_watching(self, interval_s: float = 1.0) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.watch(interval_s))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
