"""The embedded engine, bundle loading/testing and the policy CLI, on small temp bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies.bundle import check_bundle, load_bundle, run_tests
from policies.decision import parse_decision
from policies.embedded import EmbeddedEngine
from policies.errors import BundleError
from tests.harness.cli import run_conduit
from tests.rego_fixtures import FAILING_TEST, GOOD_POLICY, write_bundle

READ = {"user": {"sub": "a"}, "action": {"operation_class": "read_only"}}


def _engine(tmp_path: Path, policy: str = GOOD_POLICY, **kw: float) -> EmbeddedEngine:
    engine = EmbeddedEngine.from_directory(write_bundle(tmp_path, policy), **kw)
    engine.set_data({"plant": {"blocked": "mallory"}})
    return engine


def test_allow_with_obligations_and_stamps(tmp_path: Path) -> None:
    d = _engine(tmp_path).decide_sync(READ)
    assert d.allow and d.reasons == ("a may read",)
    assert d.obligations.max_duration_s == 3600 and d.obligations.modbus.allow_function_codes == (
        1,
        3,
    )
    assert d.engine == "embedded" and len(d.input_hash) == 64 and d.bundle_version


def test_data_changes_apply_without_reload(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    engine.set_data({"plant": {"blocked": "a"}})
    assert not engine.decide_sync(READ).allow


def test_default_deny(tmp_path: Path) -> None:
    d = _engine(tmp_path).decide_sync({"user": {"sub": "a"}, "action": {"operation_class": "tune"}})
    assert not d.allow and d.reasons == ("nothing allows this",)


def test_undefined_decision_denies(tmp_path: Path) -> None:
    policy = 'package conduit.access\nimport rego.v1\ndecision := {"allow": true, "reasons": []} if { input.never }\n'
    d = _engine(tmp_path, policy).decide_sync(READ)
    assert not d.allow and "undefined" in d.reasons[0]


def test_wrong_type_decision_denies(tmp_path: Path) -> None:
    policy = 'package conduit.access\nimport rego.v1\ndecision := "yes"\n'
    d = _engine(tmp_path, policy).decide_sync(READ)
    assert not d.allow and "malformed decision" in d.reasons[0]


def test_allow_must_be_boolean(tmp_path: Path) -> None:
    policy = (
        'package conduit.access\nimport rego.v1\ndecision := {"allow": "true", "reasons": ["x"]}\n'
    )
    assert not _engine(tmp_path, policy).decide_sync(READ).allow


def test_runtime_error_denies_with_location(tmp_path: Path) -> None:
    policy = (
        "package conduit.access\nimport rego.v1\n"
        'decision := {"allow": true, "reasons": [no_such_function(1)]}\n'
    )
    d = _engine(tmp_path, policy).decide_sync(READ)
    assert not d.allow and "access.rego:3" in d.reasons[0]


def test_slow_policy_is_denied_by_its_budget(tmp_path: Path) -> None:
    policy = (
        "package conduit.access\nimport rego.v1\n"
        "n := count([x | some x in numbers.range(1, 400000); x % 7 == 0])\n"
        'decision := {"allow": n > 0, "reasons": ["counted"]}\n'
    )
    d = _engine(tmp_path, policy, budget_ms=1).decide_sync(READ)
    assert not d.allow and "over its 1 ms budget" in d.reasons[0]


def test_non_json_input_denies(tmp_path: Path) -> None:
    d = _engine(tmp_path).decide_sync({"user": {1, 2}})  # type: ignore[dict-item]
    assert not d.allow and "not a JSON document" in d.reasons[0]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (None, "must be an object"),
        ({"allow": True}, "reasons must be a list"),
        ({"allow": True, "reasons": ["r"], "obligations": {"record": "sometimes"}}, "record"),
        (
            {"allow": True, "reasons": ["r"], "obligations": {"max_duration_s": -5}},
            "max_duration_s",
        ),
        (
            {
                "allow": True,
                "reasons": ["r"],
                "obligations": {"modbus": {"allow_function_codes": [300]}},
            },
            "1-255",
        ),
        (
            {
                "allow": True,
                "reasons": ["r"],
                "obligations": {"modbus": {"write_ranges": [[10, 5]]}},
            },
            "write_ranges",
        ),
        ({"allow": True, "reasons": ["r"], "obligations": {"rate_limit_rps": 0}}, "rate_limit_rps"),
    ],
)
def test_malformed_decisions_fail_closed(raw: object, fragment: str) -> None:
    d = parse_decision(raw)
    assert not d.allow and fragment in d.reasons[0]


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write_bundle(tmp_path, "package conduit.access\nimport rego.v1\ndecision := {\n")
    with pytest.raises(BundleError) as err:
        EmbeddedEngine.from_directory(tmp_path)
    assert err.value.problems and err.value.problems[0].startswith("conduit/access/access.rego:")


def test_package_must_mirror_folder(tmp_path: Path) -> None:
    write_bundle(tmp_path, "package elsewhere\nimport rego.v1\nx := 1\n", test=None)
    with pytest.raises(BundleError, match="cannot be loaded") as err:
        load_bundle(tmp_path)
    assert "does not mirror its folder" in err.value.problems[0]


def test_bad_data_json(tmp_path: Path) -> None:
    write_bundle(tmp_path)
    (tmp_path / "conduit" / "data.json").write_text("{nope")
    with pytest.raises(BundleError) as err:
        load_bundle(tmp_path)
    assert "conduit/data.json:1: invalid JSON" in err.value.problems[0]


def test_run_tests_counts(tmp_path: Path) -> None:
    assert run_tests(load_bundle(write_bundle(tmp_path))).summary() == "2 passed, 0 failed"
    report = run_tests(load_bundle(write_bundle(tmp_path, test=FAILING_TEST)))
    assert report.summary() == "1 passed, 1 failed" and not report.ok
    assert check_bundle(load_bundle(tmp_path)) == []


_conduit = run_conduit


def test_cli_policy_test_pass_and_fail(tmp_path: Path) -> None:
    ok = _conduit("policy", "test", str(write_bundle(tmp_path / "ok")))
    assert ok.returncode == 0 and ok.stdout.strip().endswith("2 passed, 0 failed")
    bad = _conduit("policy", "test", str(write_bundle(tmp_path / "bad", test=FAILING_TEST)))
    assert bad.returncode == 1 and bad.stdout.strip().endswith("1 passed, 1 failed")
    assert "FAIL data.conduit.access_test.test_tune_denied" in bad.stdout


def test_cli_policy_check_reports_file_line(tmp_path: Path) -> None:
    write_bundle(tmp_path, "package conduit.access\nimport rego.v1\ndecision := {\n", test=None)
    done = _conduit("policy", "check", str(tmp_path))
    assert done.returncode == 1 and "conduit/access/access.rego:" in done.stdout


def test_cli_policy_eval_prints_decision(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b")
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps(READ))
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"plant": {"blocked": "x"}}))
    done = _conduit(
        "policy",
        "eval",
        "--input",
        str(inp),
        "--bundle",
        str(bundle),
        "--data",
        str(data),
        "--explain",
    )
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["allow"] is True and out["reasons"] == ["a may read"]
    assert out["explain"]["conduit.access"]["decision"]["allow"] is True
    denied = _conduit(
        "policy", "eval", "--input", "-", "--bundle", str(bundle), stdin=json.dumps({})
    )
    assert denied.returncode == 3 and json.loads(denied.stdout)["allow"] is False


def test_default_bundle_tests_pass_and_a_broken_test_fails(tmp_path: Path) -> None:
    import shutil

    ok = _conduit("policy", "test", "policies/")
    assert ok.returncode == 0, ok.stdout
    passed = int(ok.stdout.strip().splitlines()[-1].split()[0])
    assert passed >= 50 and ok.stdout.strip().endswith(f"{passed} passed, 0 failed")

    broken = tmp_path / "policies"
    shutil.copytree("policies/bundle", broken / "bundle")
    test_file = broken / "bundle" / "conduit" / "access" / "access_test.rego"
    text = test_file.read_text()
    test_file.write_text(
        text.replace('"cannot approve your own request"', '"anyone may approve"', 1)
    )
    bad = _conduit("policy", "test", str(broken))
    assert bad.returncode == 1
    assert bad.stdout.strip().endswith(f"{passed - 1} passed, 1 failed"), bad.stdout
