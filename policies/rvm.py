"""regorus's compiled Rego VM (the RVM) as a fast evaluator, trusted only once it has agreed.

regorus 0.13 compiles a bundle into a program for its register VM, which decides the
default policy in roughly a third of the interpreter's time. The interpreter stays the
reference: the embedded engine (:mod:`policies.embedded`) decides through the RVM only after
:func:`verify` has asked both the same questions (:mod:`policies.corpus`: the whole input
contract with its own data, then the plant that was actually pushed) and every answer was
identical — same value, same JSON types. Otherwise it decides through the interpreter alone
and says why (:class:`EvaluatorStatus`).

Known RVM differences (regorus 0.13; the default bundle is written around them, see
docs/policy.md): ``x := <undefined>`` does not fail the body; a comprehension body that fails
when nothing iterates it can loop until the instruction limit (25 000); an ``else`` after a
body whose ``some`` loop found nothing is not tried; a reference to ``input``/``data`` after a
comprehension that did not iterate can read an unset register. ``with`` is not supported.
An undefined result comes back as the JSON string ``"<undefined>"``.

Programs, VMs and engines are "unsendable": each thread builds its own from the program's
serialised bytes (:func:`load_vm`), which are shared.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import regorus

from policies.bundle import Bundle, compile_bundle, engine_error
from policies.canonical import canonical_json
from policies.corpus import Case, contract_corpus, data_corpus
from policies.decision import DECISION_QUERY
from policies.errors import BundleError

UNDEFINED = '"<undefined>"'  # what Rvm.execute returns for an undefined result
MARKER = "<undefined>"  # ... and how an undefined value shows inside a defined one
VERIFY_DEADLINE_S = 30.0


class RvmUnavailable(Exception):
    """The RVM cannot run this bundle (message says why)."""


@dataclass(frozen=True)
class EvaluatorStatus:
    """Which evaluator decides for an embedded engine, and why.

    ``state``: ``checking`` (interpreter until the check ends), ``verified`` (the RVM
    decides), ``rejected`` (the RVM disagreed or failed: interpreter), ``disabled``.
    """

    evaluator: str  # "rvm" or "interpreter"
    state: str
    reason: str
    checked: int = 0  # decisions compared
    seconds: float = 0.0

    def describe(self) -> str:
        return f"{self.evaluator} ({self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "evaluator": self.evaluator,
            "state": self.state,
            "reason": self.reason,
            "checked": self.checked,
            "seconds": round(self.seconds, 3),
        }


def compile_program(bundle: Bundle, query: str = DECISION_QUERY) -> bytes:
    """The bundle's policies compiled for the RVM with one entry point, serialised."""
    modules = [(f.path, f.text) for f in bundle.policies]
    try:
        program = regorus.Program.compile_from_modules("{}", modules, [query])
        return bytes(program.serialize_binary())
    except (RuntimeError, ValueError, TypeError) as exc:
        raise RvmUnavailable(f"rvm could not compile the bundle: {engine_error(exc)}") from exc


def load_vm(program: bytes, data_json: str) -> Any:
    """A VM for this thread running ``program`` with ``data_json`` as ``data``."""
    try:
        loaded, partial = regorus.Program.deserialize_binary(program)
        if partial:
            raise RvmUnavailable("rvm program needs recompiling (regorus version changed?)")
        vm = regorus.Rvm()
        vm.load_program(loaded)
        vm.set_data_json(data_json)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise RvmUnavailable(f"rvm could not load the program: {engine_error(exc)}") from exc
    return vm


def merge_data(*documents: Mapping[str, Any]) -> dict[str, Any]:
    """Objects merged recursively, as ``Engine.add_data`` does (ValueError on a conflict)."""
    out: dict[str, Any] = {}
    for doc in documents:
        _merge_into(out, doc, "data")
    return out


def _merge_into(target: dict[str, Any], doc: Mapping[str, Any], where: str) -> None:
    for key, value in doc.items():
        if key not in target:
            target[key] = value
        elif isinstance(target[key], Mapping) and isinstance(value, Mapping):
            inner = dict(target[key])
            _merge_into(inner, value, f"{where}.{key}")
            target[key] = inner
        elif not same(target[key], value):
            raise ValueError(f"{where}.{key} is given twice with different values")


def same(a: Any, b: Any) -> bool:
    """JSON equality that also tells 1 from 1.0 and True from 1 (``==`` does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _interpreter_answer(engine: Any, text: str) -> tuple[str, Any]:
    try:
        engine.set_input_json(text)
        value = engine.eval_rule(DECISION_QUERY)
    except (RuntimeError, ValueError, TypeError) as exc:
        return "error", engine_error(exc)
    return ("undefined", None) if value is None else ("value", value)


def _rvm_answer(vm: Any, text: str) -> tuple[str, Any]:
    try:
        vm.set_input_json(text)
        out = vm.execute()
    except (RuntimeError, ValueError, TypeError) as exc:
        return "error", engine_error(exc)
    if out == UNDEFINED:
        return "undefined", None
    try:
        return "value", json.loads(out)
    except ValueError as exc:
        return "error", f"rvm returned invalid JSON: {exc}"


def _show(answer: tuple[str, Any]) -> str:
    kind, value = answer
    if kind != "value":
        return f"{kind}{f' ({value})' if value else ''}"
    try:
        text = canonical_json(value)
    except (TypeError, ValueError):
        text = repr(value)  # e.g. a set, which no JSON answer can equal
    return text if len(text) <= 160 else text[:157] + "..."


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    checked: int
    seconds: float


def verify(
    bundle: Bundle,
    program: bytes,
    cases: Iterable[Case],
    *,
    base_data: Mapping[str, Any] | None = None,
    deadline_s: float = VERIFY_DEADLINE_S,
    pause: bool = True,
) -> Verdict:
    """Decide every case with the interpreter and the RVM; ok only if all answers agree.

    Each case's data is merged over ``base_data`` (the bundle's ``data.json``). Both agree
    when both give the same value, both are undefined or both fail. ``pause`` yields the GIL
    between cases (this runs beside live decisions). Runs on the calling thread.
    """
    # This experimental evaluator times its own verification run against ``deadline_s`` with
    # the monotonic clock: a duration, never a timestamp, and no test moves it (the one
    # allowed direct read, see tests/test_clock_reads.py).
    start = time.monotonic()
    checked = 0
    try:
        engine = compile_bundle(bundle)
    except BundleError as exc:
        return Verdict(False, f"interpreter cannot load the bundle: {exc.message}", 0, 0.0)
    engine.clear_data()
    vm: Any = None
    last_data: str | None = None
    for document, data in cases:
        if time.monotonic() - start > deadline_s:
            return Verdict(
                False,
                f"check did not finish within {deadline_s:.0f} s ({checked} decisions compared)",
                checked,
                time.monotonic() - start,
            )
        try:
            data_json = json.dumps(merge_data(base_data or {}, data))
            text = canonical_json(document)
        except (TypeError, ValueError) as exc:
            return Verdict(False, f"corpus case is not JSON: {exc}", checked, 0.0)
        if data_json != last_data:
            try:
                engine.clear_data()
                engine.add_data_json(data_json)
                vm = load_vm(program, data_json)
            except (RuntimeError, ValueError, TypeError, RvmUnavailable) as exc:
                return Verdict(False, str(exc), checked, time.monotonic() - start)
            last_data = data_json
        ours, theirs = _rvm_answer(vm, text), _interpreter_answer(engine, text)
        checked += 1
        agree = ours[0] == theirs[0] and (ours[0] != "value" or same(ours[1], theirs[1]))
        if not agree:
            return Verdict(
                False,
                f"rvm disagreed on input {text[:300]}: rvm {_show(ours)}, "
                f"interpreter {_show(theirs)}",
                checked,
                time.monotonic() - start,
            )
        if pause:
            time.sleep(0)  # let the event loop's thread run between two cases
    return Verdict(
        True,
        f"agreed with the interpreter on {checked} decisions",
        checked,
        time.monotonic() - start,
    )


def verification_cases(data: Mapping[str, Any]) -> list[Case]:
    """The corpus for a bundle with ``data`` pushed: the contract corpus, then the plant's."""
    return contract_corpus() + data_corpus(data)
