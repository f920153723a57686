"""The compiled Rego VM (RVM) as the embedded engine's fast evaluator, checked against the
interpreter: agreement on the default bundle, fallback to the interpreter for a decision the
RVM cannot give, and a bundle the RVM gets wrong running on the interpreter only."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import policies.embedded as embedded
from policies.bundle import load_bundle
from policies.corpus import contract_corpus, data_corpus, plant
from policies.embedded import EmbeddedEngine, evaluator_summary
from policies.manager import PolicyManager
from policies.rvm import compile_program, merge_data, same, verify
from tests.policy_inputs import generate_corpus, make_data, make_input
from tests.rego_fixtures import write_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "policies" / "bundle"
READ = {"user": {"sub": "a"}, "action": {"operation_class": "read_only"}}
HEAD = "package conduit.access\nimport rego.v1\n"
DENY = '{"allow": false, "reasons": ["nothing allows this"], "obligations": {}}'


def _engine(root: Path, data: dict[str, Any] | None = None, **kw: Any) -> EmbeddedEngine:
    engine = EmbeddedEngine.from_directory(root, **{"rvm": True, **kw})
    if data is not None:
        engine.set_data(data)
    return engine


def _ready(engine: EmbeddedEngine) -> EmbeddedEngine:
    status = engine.wait_for_evaluator(120)
    assert status.state != "checking", "the RVM check did not finish"
    return engine


@pytest.fixture(scope="module")
def default_engines() -> tuple[EmbeddedEngine, EmbeddedEngine]:
    """The default bundle with the tests' plant data: RVM (verified) and interpreter only."""
    data = make_data()
    fast = _ready(_engine(BUNDLE, data))
    slow = _engine(BUNDLE, data, rvm=False)
    return fast, slow


# ---- (a) the default bundle: the RVM agrees with the interpreter ----------------------------


def test_default_bundle_runs_on_the_rvm(
    default_engines: tuple[EmbeddedEngine, EmbeddedEngine],
) -> None:
    fast, slow = default_engines
    status = fast.evaluator_status()
    assert (status.evaluator, status.state) == ("rvm", "verified"), status.describe()
    assert status.checked > 400 and "agreed with the interpreter" in status.reason
    assert fast.evaluator == "rvm"
    assert slow.evaluator == "interpreter" and slow.evaluator_status().state == "disabled"
    d = fast.decide_sync(make_input())
    assert d.allow and d.evaluator == "rvm" and d.engine == "embedded"
    assert len(d.input_hash) == 64 and d.bundle_version == fast.version and d.elapsed_ms > 0
    assert slow.decide_sync(make_input()).evaluator == "interpreter"


def test_rvm_and_interpreter_agree_on_the_generated_corpus() -> None:
    """Raw answers (values and JSON types) for the differential test's 1200 cases and the
    built-in corpus of every input field missing or ill typed."""
    bundle = load_bundle(BUNDLE)
    program = compile_program(bundle)
    cases = generate_corpus(1200, 20250304) + contract_corpus() + data_corpus(plant())
    verdict = verify(bundle, program, cases, pause=False, deadline_s=600)
    assert verdict.ok, verdict.reason
    assert verdict.checked == len(cases)


def test_decisions_are_the_same_through_either_evaluator(
    default_engines: tuple[EmbeddedEngine, EmbeddedEngine],
) -> None:
    fast, slow = default_engines
    before = fast.rvm_fallbacks[0]
    documents = [doc for doc, _ in generate_corpus(300, 7)]
    for doc in documents:
        a, b = fast.decide_sync(doc), slow.decide_sync(doc)
        assert a.as_dict() == b.as_dict(), json.dumps(doc)
        assert (a.evaluator, b.evaluator) == ("rvm", "interpreter")
    assert fast.rvm_fallbacks[0] == before  # the RVM answered every one itself


def test_every_thread_gets_its_own_vm(
    default_engines: tuple[EmbeddedEngine, EmbeddedEngine],
) -> None:
    fast, _ = default_engines
    with ThreadPoolExecutor(2) as pool:
        decisions = list(pool.map(fast.decide_sync, [make_input()] * 8))
    assert all(d.allow and d.evaluator == "rvm" for d in decisions)


def test_new_data_is_checked_before_the_rvm_decides_with_it(tmp_path: Path) -> None:
    engine = _ready(_engine(BUNDLE, make_data()))
    assert engine.evaluator == "rvm"
    engine.set_data(make_data(lockout={"vendors": True, "reason": "drill"}))
    d = engine.decide_sync(make_input())
    assert not d.allow and "emergency lockout: all vendor access is disabled (drill)" in d.reasons
    _ready(engine)
    assert engine.evaluator == "rvm"
    again = engine.decide_sync(make_input())
    assert again.evaluator == "rvm" and again.reasons == d.reasons
    engine.set_data(make_data(lockout={"vendors": True, "reason": "drill"}))  # unchanged
    assert engine.evaluator == "rvm"


def test_manager_status_names_the_evaluator(tmp_path: Path) -> None:
    manager = PolicyManager(write_bundle(tmp_path), rvm=True)
    assert manager.status().evaluator is None
    manager.reload()
    manager.set_data({"plant": {"blocked": "nobody"}})
    status = manager.status().evaluator
    assert status is not None and status.state in {"checking", "verified"}
    default = PolicyManager(write_bundle(tmp_path / "default"))  # the VM is opt-in
    default.reload()
    status = default.status().evaluator
    assert status is not None and (status.evaluator, status.state) == ("interpreter", "disabled")


# ---- (b) a decision the RVM cannot give is taken by the interpreter ------------------------

# The RVM (regorus 0.13) does not fail a body on `d := <undefined>`: for user "zed" the first
# body "succeeds" with d undefined, so the rule is undefined instead of trying its `else`.
# The corpus never sends "zed", so the bundle passes the check; at run time the RVM answers
# undefined for zed and the interpreter decides.
ZED = (
    HEAD + "nope(x) := 1 if x.never\n"
    'decision := d if {\n    input.user.sub == "zed"\n    d := nope(input)\n}'
    ' else := {"allow": true, "reasons": ["zed, via else"], "obligations": {}}'
    ' if input.user.sub == "zed"\n'
)


def test_undefined_from_the_rvm_falls_back_to_the_interpreter(tmp_path: Path) -> None:
    engine = _ready(_engine(write_bundle(tmp_path, ZED, None), {"plant": {}}))
    assert engine.evaluator == "rvm", engine.evaluator_status().describe()
    d = engine.decide_sync({"user": {"sub": "zed"}})
    assert d.allow and d.reasons == ("zed, via else",)
    assert d.evaluator == "interpreter"
    fallbacks, last = engine.rvm_fallbacks
    assert fallbacks == 1 and last is not None and "<undefined>" in last
    assert evaluator_summary(engine)["fallbacks"] == 1
    other = engine.decide_sync({"user": {"sub": "ann"}})  # undefined in both: a deny
    assert not other.allow and "undefined" in other.reasons[0]


class FakeVm:
    """Stands in for this thread's regorus.Rvm, answering ``execute`` with ``answer``."""

    def __init__(self, answer: Callable[[], str]) -> None:
        self.answer = answer
        self.calls = 0

    def set_input_json(self, text: str) -> None:
        json.loads(text)

    def execute(self) -> str:
        self.calls += 1
        return self.answer()


class PanicException(BaseException):  # what pyo3 raises for a Rust panic
    pass


def _raise(kind: type[BaseException], message: str) -> Callable[[], str]:
    def answer() -> str:
        raise kind(message)  # a new error each time: one kept in a closure would form a cycle

    return answer


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (_raise(RuntimeError, "Execution stopped: exceeded maximum instruction limit"), "error"),
        (_raise(PanicException, "rvm panicked"), "panic"),
        (lambda: '"<undefined>"', "<undefined>"),
        (lambda: '{"allow": true, "reasons": ["<undefined>"], "obligations": {}}', "undefined"),
        (lambda: '{"allow": true}', "reasons must be a list"),
        (lambda: '{"allow": "yes", "reasons": []}', "allow must be a boolean"),
        (lambda: "{not json", "malformed"),
        (lambda: "true", "true"),
    ],
)
def test_rvm_failures_never_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: Callable[[], str], why: str
) -> None:
    """Whatever goes wrong in the RVM, the interpreter's decision is the one returned: no
    deny for an RVM problem alone, no allow without a valid decision."""
    fake = FakeVm(answer)
    monkeypatch.setattr(embedded, "load_vm", lambda program, data_json: fake)
    engine = _ready(_engine(write_bundle(tmp_path), {"plant": {"blocked": "mallory"}}))
    assert engine.evaluator == "rvm"
    allowed = engine.decide_sync(READ)
    assert allowed.allow and allowed.reasons == ("a may read",)
    assert allowed.evaluator == "interpreter"
    denied = engine.decide_sync({"user": {"sub": "mallory"}, "action": READ["action"]})
    assert not denied.allow and denied.reasons == ("nothing allows this",)
    assert fake.calls == 2
    fallbacks, last = engine.rvm_fallbacks
    assert fallbacks == 2 and last is not None and why in last


def test_a_valid_rvm_decision_is_used_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeVm(lambda: '{"allow": false, "reasons": ["from the vm"], "obligations": {}}')
    monkeypatch.setattr(embedded, "load_vm", lambda program, data_json: fake)
    engine = _ready(_engine(write_bundle(tmp_path), {"plant": {"blocked": "mallory"}}))
    d = engine.decide_sync(READ)
    assert (d.allow, d.reasons, d.evaluator) == (False, ("from the vm",), "rvm")


def test_budget_still_applies_to_the_interpreter(tmp_path: Path) -> None:
    policy = (
        HEAD + "n := count([x | some x in numbers.range(1, 400000); x % 7 == 0])\n"
        'decision := {"allow": n > 0, "reasons": ["counted"]}\n'
    )
    engine = _ready(_engine(write_bundle(tmp_path, policy, None), {}, budget_ms=1))
    assert engine.evaluator == "interpreter"  # the RVM stops at its instruction limit
    d = engine.decide_sync(READ)
    assert not d.allow and "over its 1 ms budget" in d.reasons[0]


# ---- (c) a bundle the RVM gets wrong runs on the interpreter -------------------------------

# `x := <undefined>` goes on in the RVM, and `not x == "nobody"` then holds: the RVM would
# allow everyone without a nickname, where the interpreter denies.
WRONG_ALLOW = (
    HEAD + f"default decision := {DENY}\n"
    'decision := {"allow": true, "reasons": ["nickname is not nobody"], "obligations": {}} if {\n'
    "    x := input.user.nickname\n"
    '    not x == "nobody"\n'
    "}\n"
)


def test_a_bundle_the_rvm_disagrees_on_runs_on_the_interpreter(tmp_path: Path) -> None:
    engine = _ready(_engine(write_bundle(tmp_path, WRONG_ALLOW, None), {"plant": {}}))
    status = engine.evaluator_status()
    assert (status.evaluator, status.state) == ("interpreter", "rejected")
    assert status.reason.startswith("rvm disagreed on input {")
    assert '"allow":true' in status.reason and "interpreter" in status.reason
    assert status.describe().startswith("interpreter (rvm disagreed on input")
    d = engine.decide_sync(READ)
    assert not d.allow and d.reasons == ("nothing allows this",) and d.evaluator == "interpreter"
    assert engine.rvm_fallbacks == (0, None)


def test_a_bundle_the_rvm_cannot_compile_runs_on_the_interpreter(tmp_path: Path) -> None:
    policy = (
        HEAD + "blocked := data.plant.blocked\n"
        'decision := {"allow": true, "reasons": ["ok"], "obligations": {}} if {\n'
        '    blocked != "a" with input as {}\n'
        "}\n"
    )
    engine = _ready(_engine(write_bundle(tmp_path, policy, None), {"plant": {"blocked": "m"}}))
    status = engine.evaluator_status()
    assert (status.evaluator, status.state) == ("interpreter", "rejected")
    assert status.reason.startswith("rvm could not compile the bundle: ")
    d = engine.decide_sync(READ)
    assert d.allow and d.evaluator == "interpreter"


def test_data_that_exposes_a_difference_keeps_the_interpreter(tmp_path: Path) -> None:
    """The check also asks about the pushed plant: the same bundle can pass with one data
    document and fail with another."""
    policy = (
        HEAD + f"default decision := {DENY}\n"
        'decision := {"allow": true, "reasons": ["tuned"], "obligations": {}} if {\n'
        "    some name, _ in data.plant.assets\n"
        "    r := data.plant.assets[name].endpoints\n"
        "    not r == []\n"
        "}\n"
    )
    root = write_bundle(tmp_path, policy, None)
    ranges = {"plant": {"assets": {"plc": {"endpoints": [{"port": 502}]}}}}
    assert _ready(_engine(root, ranges)).evaluator == "rvm"
    engine = _ready(_engine(root, {"plant": {"assets": {"plc": {}}}}))
    assert engine.evaluator_status().state == "rejected"
    assert not engine.decide_sync(READ).allow


def test_rvm_rejected_without_the_rvm(tmp_path: Path) -> None:
    engine = _engine(write_bundle(tmp_path), rvm=False)
    assert engine.wait_for_evaluator(0).describe() == "interpreter (rvm disabled)"


def test_helpers() -> None:
    assert same({"a": [1, 2.5, True]}, {"a": [1, 2.5, True]})
    assert not same(1, 1.0) and not same(True, 1) and not same([1], [1, 2])
    assert merge_data({"a": {"x": 1}}, {"a": {"y": 2}}) == {"a": {"x": 1, "y": 2}}
    with pytest.raises(ValueError, match=r"data\.a\.x"):
        merge_data({"a": {"x": 1}}, {"a": {"x": 3}})
    cases = contract_corpus()
    assert cases == contract_corpus() and len(cases) > 400
    assert data_corpus({}) == [] and len(data_corpus(plant())) > 10
