"""The embedded decision point: regorus evaluating a loaded bundle inside the broker process.

A decision takes tens of microseconds, and regorus holds the GIL while it evaluates, so
decisions run inline (a thread would not free the event loop). Runaway policies are kept out
by validation before activation (:mod:`policies.validate` runs the bundle's tests in a
subprocess with a deadline); at run time a decision slower than ``budget_ms`` is turned into
a deny, so a policy that degrades fails closed and is visible in the audit log.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import regorus

from policies.bundle import Bundle, compile_bundle, engine_error, load_bundle
from policies.decision import (
    DECISION_QUERY,
    Decision,
    canonical_json,
    deny,
    input_hash,
    parse_decision,
)

DEFAULT_BUDGET_MS = 50.0


# regorus engines are "unsendable": usable and droppable only on the thread that made them.
# So each thread compiles its own copy, cached here, keyed by (engine object, data generation);
# a stale copy is replaced (and so dropped) on its own thread. The module-level local lives
# as long as the process, so no copy is ever dropped from another thread.
_PER_THREAD = threading.local()
_PER_THREAD_CACHE = 4
_TOKENS = itertools.count(1)  # unlike id(), never reused by a later engine


class EmbeddedEngine:
    """Evaluates ``data.conduit.access.decision`` of one bundle. Safe to use from any thread.

    The constructor compiles the bundle once (raising BundleError) to prove it loads; each
    thread that decides compiles its own copy on first use and after each data change.
    """

    name = "embedded"

    def __init__(self, bundle: Bundle, *, budget_ms: float = DEFAULT_BUDGET_MS) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self._budget_ns = int(budget_ms * 1_000_000)
        compile_bundle(bundle)  # fail now, on the caller's thread, if it does not compile
        self._data: dict[str, Any] = {}
        self._data_hash = ""
        self._generation = 0
        self._token = next(_TOKENS)

    @classmethod
    def from_directory(cls, root: Path, **kwargs: Any) -> EmbeddedEngine:
        """Load and compile a bundle directory (raises BundleError)."""
        return cls(load_bundle(root), **kwargs)

    @property
    def data(self) -> dict[str, Any]:
        return self._data

    def set_data(self, data: Mapping[str, Any]) -> None:
        """Replace the pushed data (e.g. ``{"plant": {...}}``) for later decisions.

        Unchanged data is a no-op, so periodic refreshes cost nothing.
        """
        digest = input_hash(data)
        if digest == self._data_hash:
            return
        self._data, self._data_hash = dict(data), digest
        self._generation += 1

    def _thread_engine(self) -> regorus.Engine:
        cache: dict[tuple[int, int], regorus.Engine] | None = getattr(_PER_THREAD, "cache", None)
        if cache is None:
            cache = _PER_THREAD.cache = {}
        key = (self._token, self._generation)
        engine = cache.get(key)
        if engine is None:
            engine = compile_bundle(self.bundle)
            if self._data:
                engine.add_data(self._data)
            for stale in [k for k in cache if k[0] == self._token] + list(cache)[
                : -_PER_THREAD_CACHE + 1
            ]:
                cache.pop(stale, None)
            cache[key] = engine
        return engine

    def clone_engine(self) -> regorus.Engine:
        """A private copy of this thread's engine (policies + data), e.g. to explain a decision."""
        return self._thread_engine().clone()

    def decide_sync(self, document: Mapping[str, Any]) -> Decision:
        """Evaluate one decision; never raises (errors become denies with the reason)."""
        stamps: dict[str, Any] = {"engine": self.name, "bundle_version": self.version}
        try:
            text = canonical_json(document)  # hashed for the audit log and fed to the engine
        except (TypeError, ValueError) as exc:
            return deny(f"policy input is not a JSON document: {exc}", **stamps)
        stamps["input_hash"] = hashlib.sha256(text.encode()).hexdigest()
        error: str | None = None
        try:
            # Not timed: compiling this thread's engine after a data change is set-up, not
            # evaluation (a data refresh must not make the next decision miss its budget).
            engine = self._thread_engine()
        except (RuntimeError, ValueError, TypeError) as exc:
            return deny(f"policy engine could not be built: {engine_error(exc)}", **stamps)
        # The budget is CPU time of this thread: a loaded machine (other threads holding the
        # GIL, preemption) must not turn a 0.3 ms decision into a deny; a looping policy still
        # burns CPU and is cut.
        start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
        try:
            engine.set_input_json(text)
            raw = engine.eval_rule(DECISION_QUERY)
        except (RuntimeError, ValueError, TypeError) as exc:
            raw, error = None, f"policy evaluation failed: {engine_error(exc)}"
        else:
            error = None if raw is not None else "policy returned no decision (undefined)"
        elapsed = time.perf_counter_ns() - start
        cpu = time.thread_time_ns() - cpu_start
        stamps["elapsed_ms"] = elapsed / 1e6
        if cpu > self._budget_ns:
            error = (
                f"policy evaluation took {cpu / 1e6:.1f} ms of CPU, over its "
                f"{self._budget_ns / 1e6:.0f} ms budget"
            )
        if error is not None:
            return deny(error, **stamps)
        return parse_decision(raw, **stamps)

    async def decide(self, document: Mapping[str, Any]) -> Decision:
        return self.decide_sync(document)

    async def aclose(self) -> None:
        return None
