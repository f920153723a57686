"""Differential tests of the default policy bundle.

A deterministic corpus (``tests.policy_inputs.generate_corpus``: every default rule's allow
and deny side, several times) is decided by regorus in this process and by a second,
independent Rego implementation — Microsoft rego-cpp through PyPI ``regopy`` — in a
subprocess (``python -m tests.harness.regopy_eval``; rego-cpp can crash its interpreter, so
it is never imported here). Both must allow and deny exactly the same inputs.

The corpus is also checked against the outcome each case was built for, and for coverage:
every deny reason and every allow basis must occur in it at least a few times.

``CONDUIT_REGOPY_PYTHON`` may name another interpreter that has regopy (default: this one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from policies.decision import DECISION_QUERY, parse_decision
from tests.harness.components import component_missing
from tests.policy_inputs import TAGS, Case, generate_cases, generate_corpus

os.environ.setdefault("RUST_LIB_BACKTRACE", "0")

import regorus

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "policies" / "bundle"
N, SEED = 1200, 20250304
MIN_HITS = 3
SHOW = 10

# One pattern per reason the default rules can give; each must occur >= MIN_HITS times.
DENY_REASONS = {
    "malformed input": r"^input\.\S+ (is missing|must be )",
    "emergency lockout": r"^emergency lockout: all vendor access is disabled",
    "lockout flag missing": r"^emergency lockout assumed",
    "Purdue level 0": r" is at Purdue level 0 ",
    "connect/request role": r"^\S+ needs role vendor or admin$",
    "approve role": r"^approve needs role approver or admin$",
    "owner group": r"^approver is not in owner group ",
    "no vendor_org": r"^vendor user has no vendor_org$",
    "no covering contract": r"^no contract of vendor org ",
    "contract not valid": r"^contract .+ is not valid at ",
    "agent offline": r"^agent for .+ is offline$",
    "MFA": r" needs MFA: ",
    "no grant": r" needs an approved grant$",
    "grant state": r"^grant .+, not approved or active$",
    "grant time": r"^grant .+ is not valid at ",
    "grant requester": r"^grant .+ was requested by ",
    "maintenance window": r"is limited to maintenance windows",
    "approve without grant": r"^approve needs input\.grant",
    "own request": r"^cannot approve your own request$",
    "not pending": r"only pending requests can be approved$",
    "approved twice": r" already approved grant ",
}
ALLOW_REASONS = {
    "role vendor": r"^role vendor may ",
    "role admin": r"^role admin may (ssh|sftp|tcp|web_terminal|request)$",
    "admin approves": r"^role admin may approve any asset",
    "approver in owner group": r"^approver is in owner group ",
    "approving": r"^approving grant ",
    "vendor contract": r"^vendor contract .+ covers ",
    "admin standing access": r"^admin standing access to Purdue level [345] ",
    "grant": r"^grant \S+ (approved|active) until ",
    "maintenance window": r", inside maintenance window ",
    "MFA present": r"^MFA present \(amr ",
    "agent online": r"^agent for .+ is online$",
    "request": r"^request for \S+ on .+ needs [12] approval\(s\)$",
}


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return generate_cases(N, SEED)


@pytest.fixture(scope="module")
def regorus_decisions(cases: list[Case]) -> list[dict[str, Any]]:
    engine = regorus.Engine()
    for path in sorted(BUNDLE.rglob("*.rego")):
        if not path.name.endswith("_test.rego"):
            engine.add_policy(path.relative_to(BUNDLE).as_posix(), path.read_text())
    decisions = []
    for case in cases:
        engine.clear_data()
        engine.add_data(case.data)
        engine.set_input(case.input)
        decisions.append(engine.eval_rule(DECISION_QUERY))
    return decisions


def test_corpus_is_deterministic() -> None:
    assert generate_corpus(50, 7) == generate_corpus(50, 7)
    assert generate_corpus(50, 7) != generate_corpus(50, 8)
    first = generate_corpus(50, 7)[0]
    assert isinstance(first, tuple) and set(first[0]) == {
        "user",
        "asset",
        "action",
        "grant",
        "context",
    }


def test_regorus_gives_each_case_its_intended_outcome(
    cases: list[Case], regorus_decisions: list[dict[str, Any]]
) -> None:
    wrong = [
        (case.tag, case.allow, decision["reasons"])
        for case, decision in zip(cases, regorus_decisions, strict=True)
        if decision["allow"] is not case.allow or parse_decision(decision).allow is not case.allow
    ]
    assert not wrong, f"{len(wrong)} cases decided against intent, e.g. {wrong[:SHOW]}"


def test_corpus_covers_every_rule(
    cases: list[Case], regorus_decisions: list[dict[str, Any]]
) -> None:
    tags = Counter(case.tag for case in cases)
    hits: Counter[str] = Counter()
    for decision in regorus_decisions:
        table = ALLOW_REASONS if decision["allow"] else DENY_REASONS
        for name, pattern in table.items():
            if any(re.search(pattern, r) for r in decision["reasons"]):
                hits[("allow: " if decision["allow"] else "deny: ") + name] += 1
        assert not any(r.startswith("denied by default") for r in decision["reasons"])
    expected = [f"deny: {n}" for n in DENY_REASONS] + [f"allow: {n}" for n in ALLOW_REASONS]
    print("\ncorpus coverage:", dict(sorted(hits.items())))
    print("cases per tag:", dict(sorted(tags.items())))
    assert set(tags) == set(TAGS)
    assert min(tags.values()) >= MIN_HITS
    thin = {name: hits[name] for name in expected if hits[name] < MIN_HITS}
    assert not thin, f"rules the corpus barely exercises: {thin}"
    allows = sum(d["allow"] for d in regorus_decisions)
    assert N // 5 < allows < N - N // 5, f"{allows} of {N} allowed: corpus is lopsided"


# --------------------------------------------------------------------------- regopy


def regopy_python() -> str:
    return os.environ.get("CONDUIT_REGOPY_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def regopy_results(cases: list[Case], tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    python = regopy_python()
    probe = subprocess.run([python, "-c", "import regopy"], capture_output=True, check=False)
    if probe.returncode != 0:
        component_missing("regopy", f"not importable by {python} (uv sync installs it)")
    corpus = tmp_path_factory.mktemp("differential") / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"input": c.input, "data": c.data}) + "\n" for c in cases))
    with corpus.open() as stdin:
        done = subprocess.run(
            [python, "-m", "tests.harness.regopy_eval", str(BUNDLE)],
            stdin=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=100,
            check=False,
        )
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == len(cases), (
        f"regopy_eval exited {done.returncode} after {len(lines)} of {len(cases)} decisions "
        f"(a crash stops at the next case: {cases[len(lines)].tag if len(lines) < len(cases) else '-'}"
        f"): {done.stderr[-2000:]}"
    )
    return [json.loads(line) for line in lines]


def describe(case: Case, ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    return (
        f"  [{case.tag}] regorus allow={ours['allow']} reasons={ours['reasons']}\n"
        f"      regopy  allow={theirs['allow']} reasons={theirs['reasons']} "
        f"error={theirs['error']}\n"
        f"      input={json.dumps(case.input, sort_keys=True)[:400]}"
    )


def test_regopy_allows_and_denies_exactly_what_regorus_does(
    cases: list[Case], regorus_decisions: list[dict[str, Any]], regopy_results: list[Any]
) -> None:
    mismatches = [
        describe(case, ours, theirs)
        for case, ours, theirs in zip(cases, regorus_decisions, regopy_results, strict=True)
        if theirs["allow"] is not ours["allow"]
    ]
    assert not mismatches, (
        f"{len(mismatches)} of {len(cases)} decisions differ; first ones:\n"
        + "\n".join(mismatches[:SHOW])
    )


def test_regopy_gives_the_same_reasons(
    cases: list[Case], regorus_decisions: list[dict[str, Any]], regopy_results: list[Any]
) -> None:
    mismatches = [
        describe(case, ours, theirs)
        for case, ours, theirs in zip(cases, regorus_decisions, regopy_results, strict=True)
        if theirs["reasons"] != ours["reasons"]
    ]
    assert not mismatches, (
        f"{len(mismatches)} of {len(cases)} reason lists differ; first ones:\n"
        + "\n".join(mismatches[:SHOW])
    )
