"""The embedded decision point: regorus evaluating a loaded bundle inside the broker process.

Two evaluators, one reference. The interpreter (``regorus.Engine``) is the reference and
decides whenever the other cannot. The compiled VM (``regorus.Rvm``, :mod:`policies.rvm`)
decides the default policy about three times faster, but only once a check in the
background has found it giving the interpreter's answers on a corpus of inputs, for this
bundle and this data (until then, and whenever the check fails, the interpreter decides;
:meth:`EmbeddedEngine.evaluator_status` says which and why). A decision the VM cannot give —
an error, an undefined result, an answer that is not a valid decision, a budget overrun — is
taken again by the interpreter: an RVM problem alone never denies, and nothing is allowed
unless a valid decision came back.

regorus holds the GIL while it evaluates, so decisions run inline (a thread would not free
the event loop). Runaway policies are kept out by validation before activation
(:mod:`policies.validate` runs the bundle's tests in a subprocess with a deadline); at run
time a decision slower than ``budget_ms`` is turned into a deny, so a policy that degrades
fails closed and is visible in the audit log.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import regorus

from policies.bundle import Bundle, compile_bundle, engine_error, load_bundle
from policies.canonical import canonical_json
from policies.corpus import contract_corpus, data_corpus
from policies.decision import (
    DECISION_QUERY,
    Decision,
    decision_from,
    deny,
    input_hash,
)
from policies.rvm import (
    MARKER,
    EvaluatorStatus,
    RvmUnavailable,
    Verdict,
    compile_program,
    load_vm,
    merge_data,
    verify,
)

DEFAULT_BUDGET_MS = 50.0
log = logging.getLogger(__name__)


# regorus engines, programs and VMs are "unsendable": usable and droppable only on the thread
# that made them. So each thread builds its own copies, cached here, keyed by (engine object,
# data generation); a stale copy is replaced (and so dropped) on its own thread. The
# module-level local lives as long as the process, so no copy is ever dropped from another
# thread.
_PER_THREAD = threading.local()
_PER_THREAD_CACHE = 4
_TOKENS = itertools.count(1)  # unlike id(), never reused by a later engine


class _ThreadState:
    """One thread's evaluators for one (engine, data generation)."""

    __slots__ = ("engine", "generation", "vm", "vm_tried")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.engine: Any = None  # regorus.Engine, built on first use
        self.vm: Any = None  # regorus.Rvm, once the RVM is verified for this generation
        self.vm_tried = False


@dataclass(frozen=True)
class _Ready:
    """The RVM program and data verified for one data generation."""

    generation: int
    program: bytes
    data_json: str


# ---- the background check ---------------------------------------------------------------------

# Checks run one at a time on one daemon thread (the RVM and interpreter objects they build
# stay on it). Verdicts are pure functions of (bundle version, data), so they are kept.
_JOBS: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_WORKER: threading.Thread | None = None
_WORKER_LOCK = threading.Lock()
_VERDICTS: dict[tuple[str, ...], Verdict] = {}
_PROGRAMS: dict[str, bytes | str] = {}  # bundle version -> program, or why there is none
_CACHE_MAX = 64


def _worker() -> None:
    while True:
        job = _JOBS.get()
        try:
            job()
        except Exception:  # a check must never take the worker down
            log.exception("policy evaluator check failed")


def _submit(job: Callable[[], None]) -> None:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None or not _WORKER.is_alive():
            _WORKER = threading.Thread(target=_worker, name="policy-rvm-check", daemon=True)
            _WORKER.start()
    _JOBS.put(job)


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_MAX:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def _program(bundle: Bundle) -> bytes:
    """The bundle's RVM program (compiled once per bundle version)."""
    program = _PROGRAMS.get(bundle.version)
    if program is None:
        try:
            program = compile_program(bundle)
        except RvmUnavailable as exc:
            program = str(exc)
        _remember(_PROGRAMS, bundle.version, program)
    if isinstance(program, str):
        raise RvmUnavailable(program)
    return program


def _verdict(key: tuple[str, ...], check: Callable[[], Verdict]) -> Verdict:
    verdict = _VERDICTS.get(key)
    if verdict is None:
        verdict = check()
        if "did not finish" not in verdict.reason:  # a slow machine may do better next time
            _remember(_VERDICTS, key, verdict)
    return verdict


class EmbeddedEngine:
    """Evaluates ``data.conduit.access.decision`` of one bundle. Safe to use from any thread.

    The constructor compiles the bundle once (raising BundleError) to prove it loads; each
    thread that decides builds its own evaluators on first use and after each data change.
    The interpreter decides everything unless ``rvm=True`` (opt-in: ``[policy] evaluator =
    "rvm"``): the compiled VM is young, see docs/policy.md.
    """

    name = "embedded"

    def __init__(
        self, bundle: Bundle, *, budget_ms: float = DEFAULT_BUDGET_MS, rvm: bool = False
    ) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self._budget_ns = int(budget_ms * 1_000_000)
        compile_bundle(bundle)  # fail now, on the caller's thread, if it does not compile
        self._data: dict[str, Any] = {}
        self._data_hash = ""
        self._generation = 0
        self._token = next(_TOKENS)
        self._rvm = rvm
        self._ready: _Ready | None = None
        self._changed = threading.Condition()
        self._fallbacks = 0
        self._last_fallback: str | None = None
        if rvm:
            self._status = EvaluatorStatus("interpreter", "checking", "checking the rvm")
            self._schedule_check()
        else:
            self._status = EvaluatorStatus("interpreter", "disabled", "rvm disabled")

    @classmethod
    def from_directory(cls, root: Path, **kwargs: Any) -> EmbeddedEngine:
        """Load and compile a bundle directory (raises BundleError)."""
        return cls(load_bundle(root), **kwargs)

    @property
    def data(self) -> dict[str, Any]:
        return self._data

    def set_data(self, data: Mapping[str, Any]) -> None:
        """Replace the pushed data (e.g. ``{"plant": {...}}``) for later decisions.

        Unchanged data is a no-op, so periodic refreshes cost nothing. Changed data is
        decided by the interpreter until the RVM has been checked with it.
        """
        digest = input_hash(data)
        if digest == self._data_hash:
            return
        with self._changed:
            self._data, self._data_hash = dict(data), digest
            self._generation += 1
            self._ready = None
            if self._rvm:
                self._status = EvaluatorStatus("interpreter", "checking", "checking the rvm")
        if self._rvm:
            self._schedule_check()

    async def push_data(self, data: Mapping[str, Any]) -> None:
        """:meth:`set_data` for the :class:`~policies.engine.Engine` protocol; never fails."""
        self.set_data(data)

    # ---- evaluator status -----------------------------------------------------------------

    @property
    def evaluator(self) -> str:
        """The evaluator new decisions go to: ``"rvm"`` or ``"interpreter"``."""
        ready = self._ready
        return (
            "rvm" if ready is not None and ready.generation == self._generation else "interpreter"
        )

    def evaluator_status(self) -> EvaluatorStatus:
        """Which evaluator decides and why (e.g. ``interpreter (rvm disagreed on input …)``)."""
        return self._status

    @property
    def rvm_fallbacks(self) -> tuple[int, str | None]:
        """Decisions the interpreter took over from the RVM, and the last one's reason."""
        return self._fallbacks, self._last_fallback

    def wait_for_evaluator(self, timeout: float = 60.0) -> EvaluatorStatus:
        """Wait until the check of the current data has ended (or ``timeout`` passed)."""
        with self._changed:
            self._changed.wait_for(lambda: self._status.state != "checking", timeout)
            return self._status

    def _schedule_check(self) -> None:
        with self._changed:
            generation, data, digest = self._generation, self._data, self._data_hash
        _submit(lambda: self._check(generation, data, digest))

    def _check(self, generation: int, data: dict[str, Any], digest: str) -> None:
        if generation != self._generation:
            return  # superseded by newer data: its own check is queued
        bundle = self.bundle
        program: bytes | None = None
        data_json = ""
        try:
            data_json = json.dumps(merge_data(bundle.data, data))
            program = prog = _program(bundle)
            checked = verdict = _verdict(
                ("contract", bundle.version),
                lambda: verify(bundle, prog, contract_corpus(), base_data=bundle.data),
            )
            if verdict.ok:
                plant = _verdict(
                    ("data", bundle.version, digest),
                    lambda: verify(bundle, prog, data_corpus(data), base_data=bundle.data),
                )
                checked = Verdict(
                    plant.ok,
                    f"agreed with the interpreter on {verdict.checked + plant.checked} decisions"
                    if plant.ok
                    else plant.reason,
                    verdict.checked + plant.checked,
                    verdict.seconds + plant.seconds,
                )
        except (RvmUnavailable, ValueError, TypeError) as exc:
            checked = Verdict(False, str(exc) or type(exc).__name__, 0, 0.0)
        except Exception as exc:  # whatever else fails, the interpreter decides
            log.exception("policy evaluator check failed")
            checked = Verdict(False, f"the rvm check failed: {exc!r}", 0, 0.0)
        with self._changed:
            if generation != self._generation:
                return
            if checked.ok and program is not None:
                self._ready = _Ready(generation, program, data_json)
                self._status = EvaluatorStatus(
                    "rvm", "verified", checked.reason, checked.checked, checked.seconds
                )
            else:
                self._ready = None
                self._status = EvaluatorStatus(
                    "interpreter", "rejected", checked.reason, checked.checked, checked.seconds
                )
                log.warning(
                    "policy %s decided by the interpreter: %s", self.version, checked.reason
                )
            self._changed.notify_all()

    # ---- per-thread evaluators ------------------------------------------------------------

    def _thread_state(self) -> _ThreadState:
        cache: dict[tuple[int, int], _ThreadState] | None = getattr(_PER_THREAD, "cache", None)
        if cache is None:
            cache = _PER_THREAD.cache = {}
        key = (self._token, self._generation)
        state = cache.get(key)
        if state is None:
            state = _ThreadState(key[1])
            for stale in [k for k in cache if k[0] == self._token] + list(cache)[
                : -_PER_THREAD_CACHE + 1
            ]:
                cache.pop(stale, None)
            cache[key] = state
        return state

    def _thread_engine(self) -> regorus.Engine:
        state = self._thread_state()
        if state.engine is None:
            engine = compile_bundle(self.bundle)
            if self._data:
                engine.add_data(self._data)
            state.engine = engine
        return state.engine

    def _thread_vm(self, state: _ThreadState) -> Any:
        """This thread's VM, if the RVM is verified for the state's generation."""
        ready = self._ready
        if state.vm_tried or ready is None or ready.generation != state.generation:
            return None
        state.vm_tried = True
        try:
            state.vm = load_vm(ready.program, ready.data_json)
        except RvmUnavailable as exc:
            self._fell_back(str(exc))
        return state.vm

    def clone_engine(self) -> regorus.Engine:
        """A private copy of this thread's engine (policies + data), e.g. to explain a decision."""
        return self._thread_engine().clone()

    # ---- deciding -------------------------------------------------------------------------

    def _fell_back(self, reason: str) -> None:
        self._fallbacks += 1
        self._last_fallback = reason

    def decide_sync(self, document: Mapping[str, Any]) -> Decision:
        """Evaluate one decision; never raises (errors become denies with the reason)."""
        try:
            text = canonical_json(document)  # hashed for the audit log and fed to the engine
        except (TypeError, ValueError) as exc:
            return deny(
                f"policy input is not a JSON document: {exc}",
                engine=self.name,
                bundle_version=self.version,
            )
        digest = sha256(text.encode()).hexdigest()
        state = self._thread_state()
        vm = state.vm if state.vm is not None else self._thread_vm(state)
        spent_ns = 0
        if vm is not None:
            # The budget is CPU time of this thread: a loaded machine (other threads holding
            # the GIL, preemption) must not turn a 0.1 ms decision into a deny.
            start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
            try:
                vm.set_input_json(text)
                out: str = vm.execute()
            except Exception as exc:  # any RVM failure: the interpreter decides
                out = f"error: {engine_error(exc)}"
            except BaseException as exc:  # pyo3 turns a Rust panic into PanicException
                if type(exc).__name__ != "PanicException":
                    raise
                out = f"panic: {exc}"
            cpu = time.thread_time_ns() - cpu_start
            spent_ns = time.perf_counter_ns() - start
            if out.startswith("{") and MARKER not in out and cpu <= self._budget_ns:
                try:
                    return decision_from(
                        json.loads(out),
                        engine=self.name,
                        bundle_version=self.version,
                        input_hash=digest,
                        elapsed_ms=spent_ns / 1e6,
                        evaluator="rvm",
                    )
                except ValueError as exc:  # not JSON, or MalformedDecision
                    out = f"malformed: {exc}"
            self._fell_back(
                f"over budget ({cpu / 1e6:.1f} ms)" if cpu > self._budget_ns else out[:300]
            )
        return self._interpret(text, digest, spent_ns)

    def _interpret(self, text: str, digest: str, spent_ns: int) -> Decision:
        stamps: dict[str, Any] = {
            "engine": self.name,
            "bundle_version": self.version,
            "input_hash": digest,
            "evaluator": "interpreter",
        }
        try:
            # Not timed: compiling this thread's engine after a data change is set-up, not
            # evaluation (a data refresh must not make the next decision miss its budget).
            engine = self._thread_engine()
        except (RuntimeError, ValueError, TypeError) as exc:
            return deny(f"policy engine could not be built: {engine_error(exc)}", **stamps)
        start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
        error: str | None = None
        try:
            engine.set_input_json(text)
            raw = engine.eval_rule(DECISION_QUERY)
        except (RuntimeError, ValueError, TypeError) as exc:
            raw, error = None, f"policy evaluation failed: {engine_error(exc)}"
        else:
            error = None if raw is not None else "policy returned no decision (undefined)"
        cpu = time.thread_time_ns() - cpu_start
        stamps["elapsed_ms"] = (time.perf_counter_ns() - start + spent_ns) / 1e6
        if cpu > self._budget_ns:
            error = (
                f"policy evaluation took {cpu / 1e6:.1f} ms of CPU, over its "
                f"{self._budget_ns / 1e6:.0f} ms budget"
            )
        if error is not None:
            return deny(error, **stamps)
        try:
            return decision_from(raw, **stamps)
        except ValueError as exc:
            return deny(f"policy returned a malformed decision: {exc}", **stamps)

    async def decide(self, document: Mapping[str, Any]) -> Decision:
        return self.decide_sync(document)

    async def aclose(self) -> None:
        return None


def evaluator_summary(engine: EmbeddedEngine) -> dict[str, Any]:
    """The engine's evaluator status with its fallback count, for status pages and the API."""
    fallbacks, last = engine.rvm_fallbacks
    return engine.evaluator_status().as_dict() | {
        "describe": engine.evaluator_status().describe(),
        "fallbacks": fallbacks,
        "last_fallback": last,
    }


__all__ = ["DEFAULT_BUDGET_MS", "EmbeddedEngine", "EvaluatorStatus", "evaluator_summary"]
