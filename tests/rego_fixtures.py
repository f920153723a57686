"""Small Rego bundles written into a temp dir, for engine/reload tests independent of the default bundle."""

from __future__ import annotations

from pathlib import Path

GOOD_POLICY = """package conduit.access
import rego.v1

default decision := {"allow": false, "reasons": ["nothing allows this"], "obligations": {}}

decision := {"allow": true, "reasons": [sprintf("%s may read", [input.user.sub])],
             "obligations": {"record": "strict", "max_duration_s": 3600,
                             "modbus": {"allow_function_codes": [3, 1], "write_ranges": []}}} if {
    input.action.operation_class == "read_only"
    input.user.sub != data.plant.blocked
}
"""

GOOD_TEST = """package conduit.access_test
import rego.v1

test_read_only_allowed if {
    data.conduit.access.decision.allow with input as {"user": {"sub": "a"}, "action": {"operation_class": "read_only"}}
        with data.plant.blocked as "nobody"
}

test_tune_denied if {
    not data.conduit.access.decision.allow with input as {"user": {"sub": "a"}, "action": {"operation_class": "tune"}}
}
"""

FAILING_TEST = GOOD_TEST.replace("test_tune_denied if {\n    not ", "test_tune_denied if {\n    ")


def write_bundle(root: Path, policy: str = GOOD_POLICY, test: str | None = GOOD_TEST) -> Path:
    folder = root / "conduit" / "access"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "access.rego").write_text(policy)
    test_path = folder / "access_test.rego"
    if test is None:
        test_path.unlink(missing_ok=True)
    else:
        test_path.write_text(test)
    return root
