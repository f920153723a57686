"""The default policy bundle, rule by rule, evaluated by regorus directly.

Every ``*.rego`` under policies/bundle except ``*_test.rego`` is loaded into a fresh engine;
each test sets data and input (tests/policy_inputs.py builders) and checks
``data.conduit.access.decision``: allow, reasons, obligations, and that
``policies.decision.parse_decision`` reads it the same way (never a "malformed decision").
The bundle's own Rego tests (``test_*`` rules) run here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from policies.decision import DECISION_QUERY, parse_decision
from tests.policy_inputs import (
    ADMIN,
    APPROVER,
    ASSET,
    MALFORMED_FIELDS,
    NOW,
    TUNE_RANGES,
    at,
    make_contract,
    make_data,
    make_endpoints,
    make_input,
    without,
)

os.environ.setdefault("RUST_LIB_BACKTRACE", "0")  # regorus errors without ~250 ms backtraces

import regorus

BUNDLE = Path(__file__).resolve().parents[1] / "policies" / "bundle"
PENDING = {"state": "pending", "approvers": []}
MFA_REASON = "ssh to plc-press-3 needs MFA: input.user.amr has none of mfa, otp, hwk"
LEVEL0 = (
    "plc-press-3 is at Purdue level 0 (process and field devices): "
    "level 0 is never reachable through conduit"
)
READS = [1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43]


def policy_files(*, tests: bool = False) -> list[Path]:
    return sorted(p for p in BUNDLE.rglob("*.rego") if p.name.endswith("_test.rego") == tests)


def new_engine(*, with_tests: bool = False) -> regorus.Engine:
    engine = regorus.Engine()
    for path in policy_files() + (policy_files(tests=True) if with_tests else []):
        engine.add_policy(path.relative_to(BUNDLE).as_posix(), path.read_text())
    return engine


Decide = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def engine() -> regorus.Engine:
    return new_engine()


@pytest.fixture
def decide(engine: regorus.Engine) -> Decide:
    """decide(input, data=None) -> the raw decision, checked against the contract."""

    def run(document: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
        engine.clear_data()
        engine.add_data(make_data() if data is None else data)
        engine.set_input(document)
        raw: dict[str, Any] = engine.eval_rule(DECISION_QUERY)
        parsed = parse_decision(raw)
        assert parsed.allow == raw["allow"]
        assert list(parsed.reasons) == raw["reasons"], parsed.reasons
        assert raw["reasons"], "reasons must never be empty"
        # allow exactly when no deny rule fires; a deny lists every deny rule's reason
        deny = engine.eval_rule("data.conduit.access.deny")
        assert raw["allow"] == (not deny)
        if not raw["allow"]:
            assert raw["reasons"] == sorted(deny)
        return raw

    return run


def allowed(decision: dict[str, Any], *reasons: str) -> bool:
    return decision["allow"] is True and all(r in decision["reasons"] for r in reasons)


def denied(decision: dict[str, Any], *reasons: str) -> bool:
    return decision["allow"] is False and all(r in decision["reasons"] for r in reasons)


# --------------------------------------------------------------------------- the decision


def test_default_vendor_connection_is_allowed_with_reasons(decide: Decide) -> None:
    d = decide(make_input())
    assert d["allow"] is True
    assert d["reasons"] == [
        "MFA present (amr mfa)",
        "agent for plc-press-3 is online",
        "endpoint ssh 10.0.1.5:22 (ssh) of plc-press-3",
        "grant g-1 approved until 2025-03-04T23:30:00Z",
        "role vendor may ssh",
        "vendor contract SVC-1 covers plc-press-3",
    ]


def test_decision_defined_for_empty_input_and_no_data(decide: Decide) -> None:
    d = decide({}, {})
    assert d["allow"] is False
    assert d["reasons"] == [
        "input.action is missing",
        "input.asset is missing",
        "input.context is missing",
        "input.user is missing",
    ]


def test_deny_lists_all_reasons_and_restrictive_obligations(decide: Decide) -> None:
    d = decide(make_input(context={"agent_online": False}, grant={"state": "revoked"}))
    assert d["reasons"] == [
        "agent for plc-press-3 is offline",
        "grant g-1 is revoked, not approved or active",
    ]
    assert parse_decision(d).obligations.as_dict() == {
        "record": "strict",
        "max_duration_s": None,
        "idle_timeout_s": None,
        "approvals_required": 0,
        "require_mfa": False,
        "modbus": {"allow_function_codes": [], "write_ranges": [], "unit_ids": None},
        "rate_limit_rps": None,
        "supervise": False,
        "protocols": {},
    }


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("field", MALFORMED_FIELDS)
def test_missing_field_denies_naming_it(decide: Decide, field: str) -> None:
    assert denied(decide(without(make_input(), field)), f"input.{field} is missing")


@pytest.mark.parametrize(
    ("section", "fields", "reason"),
    [
        ("user", {"sub": ""}, "input.user.sub must be a non-empty string"),
        ("user", {"roles": "vendor"}, "input.user.roles must be a list of strings"),
        ("user", {"vendor_org": 7}, "input.user.vendor_org must be a string or null"),
        ("asset", {"purdue_level": 6}, "input.asset.purdue_level must be an integer 0-5"),
        ("asset", {"purdue_level": "1"}, "input.asset.purdue_level must be an integer 0-5"),
        ("asset", {"purdue_level": True}, "input.asset.purdue_level must be an integer 0-5"),
        (
            "asset",
            {"criticality": "severe"},
            "input.asset.criticality must be one of low, medium, high, critical",
        ),
        (
            "action",
            {"kind": "SSH"},
            "input.action.kind must be one of ssh, sftp, tcp, web_terminal, request, approve",
        ),
        (
            "action",
            {"operation_class": "write"},
            "input.action.operation_class must be one of read_only, tune, program, firmware",
        ),
        ("context", {"agent_online": 1}, "input.context.agent_online must be true or false"),
        (
            "grant",
            {"state": "APPROVED"},
            "input.grant.state must be one of pending, approved, "
            "active, expired, revoked, denied, cancelled",
        ),
    ],
)
def test_ill_typed_field_denies_naming_it(
    decide: Decide, section: str, fields: dict[str, Any], reason: str
) -> None:
    assert denied(decide(make_input(**{section: fields})), reason)


@pytest.mark.parametrize(
    "now",
    [
        "2025-03-04 21:30:00Z",
        "2025-03-04T21:30:00",
        "2025-02-29T10:00:00Z",
        "2025-04-31T10:00:00Z",
        "2025-03-04T25:00:00Z",
        "yesterday",
        1741123800,
        "2025-03-04T21:30:00Z 2025-03-04T21:30:00Z",
    ],
)
def test_bad_timestamp_denies_without_evaluation_error(decide: Decide, now: Any) -> None:
    reason = "input.context.now must be an RFC 3339 timestamp like 2025-03-04T21:30:00Z"
    assert denied(decide(make_input(context={"now": now})), reason)


@pytest.mark.parametrize("now", ["2025-03-04T22:30:00.123456+01:00", "2025-03-04T16:30:00-05:00"])
def test_timestamps_with_offsets_and_fractions(decide: Decide, now: str) -> None:
    assert allowed(decide(make_input(context={"now": now})))


def test_grant_must_be_object_or_null(decide: Decide) -> None:
    assert denied(decide(make_input(grant="g-1")), "input.grant must be an object or null")


# --------------------------------------------------------------------------- 1. roles


@pytest.mark.parametrize("kind", ["ssh", "sftp", "tcp", "web_terminal", "request"])
def test_connect_and_request_need_vendor_or_admin(decide: Decide, kind: str) -> None:
    d = decide(make_input(user={"roles": ["approver", "security"]}, action={"kind": kind}))
    assert denied(d, f"{kind} needs role vendor or admin")


def test_admin_may_request_for_themselves(decide: Decide) -> None:
    d = decide(make_input(user=ADMIN, action={"kind": "request"}, grant=None))
    assert allowed(d, "role admin may request")


def test_admin_connects_under_own_grant(decide: Decide) -> None:
    assert allowed(
        decide(make_input(user=ADMIN, grant={"requester": "admin-ada"})), "role admin may ssh"
    )


def test_approve_needs_approver_or_admin(decide: Decide) -> None:
    d = decide(
        make_input(user=APPROVER | {"roles": ["vendor"]}, action={"kind": "approve"}, grant=PENDING)
    )
    assert denied(d, "approve needs role approver or admin")


def test_approver_must_be_in_owner_group(decide: Decide) -> None:
    d = decide(
        make_input(
            user=APPROVER | {"groups": ["ot-packaging"]}, action={"kind": "approve"}, grant=PENDING
        )
    )
    assert denied(d, "approver is not in owner group ot-press-line of plc-press-3")


def test_approver_in_owner_group_may_approve(decide: Decide) -> None:
    d = decide(make_input(user=APPROVER, action={"kind": "approve"}, grant=PENDING))
    assert allowed(
        d,
        "approver is in owner group ot-press-line of plc-press-3",
        "approving grant g-1 requested by vendor-alice",
    )


def test_admin_may_approve_any_asset(decide: Decide) -> None:
    d = decide(make_input(user=ADMIN, action={"kind": "approve"}, grant=PENDING))
    assert allowed(d, "role admin may approve any asset (plc-press-3)")


# --------------------------------------------------------------------------- 2. contracts


def test_vendor_without_vendor_org_is_denied(decide: Decide) -> None:
    assert denied(decide(make_input(user={"vendor_org": None})), "vendor user has no vendor_org")


@pytest.mark.parametrize(
    "contract",
    [
        make_contract(),
        make_contract(site=None, asset=ASSET),
        make_contract(asset=ASSET),
        make_contract(valid_from=NOW),
    ],
    ids=["site", "asset", "asset-and-site", "from-now"],
)
def test_contract_covering_the_asset_allows(decide: Decide, contract: dict[str, Any]) -> None:
    d = decide(make_input(), make_data(contracts=[contract]))
    assert allowed(d, f"vendor contract {contract['reference']} covers plc-press-3")


@pytest.mark.parametrize(
    "contract",
    [
        make_contract(site="Lakeside Works"),
        make_contract(site=None, asset="hmi-press-3"),
        make_contract(site="Lakeside Works", asset=ASSET),
        make_contract(site=None, asset=None),
    ],
    ids=["other-site", "other-asset", "asset-at-other-site", "no-scope"],
)
def test_contract_not_covering_the_asset_denies(decide: Decide, contract: dict[str, Any]) -> None:
    d = decide(make_input(), make_data(contracts=[contract]))
    assert denied(d, "no contract of vendor org acme-automation covers plc-press-3")


@pytest.mark.parametrize(
    "contract",
    [make_contract(valid_until=NOW), make_contract(valid_from=at(NOW, seconds=1))],
    ids=["ended", "not-started"],
)
def test_contract_outside_validity_denies(decide: Decide, contract: dict[str, Any]) -> None:
    d = decide(make_input(action={"kind": "request"}, grant=None), make_data(contracts=[contract]))
    assert denied(
        d,
        "contract SVC-1 of vendor org acme-automation for plc-press-3 "
        "is not valid at 2025-03-04T21:30:00Z",
    )


def test_contract_of_another_org_does_not_count(decide: Decide) -> None:
    d = decide(make_input(user={"vendor_org": "globex-controls"}))
    assert denied(d, "no contract of vendor org globex-controls covers plc-press-3")


def test_admins_need_no_contract(decide: Decide) -> None:
    d = decide(
        make_input(user=ADMIN, asset={"purdue_level": 3}, grant=None), make_data(vendor_orgs={})
    )
    assert allowed(d)


# --------------------------------------------------------------------------- 3. Purdue levels


@pytest.mark.parametrize(
    ("user", "kind", "grant"),
    [({}, "ssh", {}), ({}, "request", None), (ADMIN, "tcp", None), (APPROVER, "approve", PENDING)],
)
def test_level0_is_never_reachable(
    decide: Decide, user: dict[str, Any], kind: str, grant: Any
) -> None:
    d = decide(make_input(user=user, asset={"purdue_level": 0}, action={"kind": kind}, grant=grant))
    assert denied(d, LEVEL0)


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("amr", [[], ["pwd"], ["pwd", "MFA"]])
def test_level1_2_connections_need_mfa(decide: Decide, level: int, amr: list[str]) -> None:
    assert denied(decide(make_input(user={"amr": amr}, asset={"purdue_level": level})), MFA_REASON)


@pytest.mark.parametrize("method", ["mfa", "otp", "hwk"])
def test_level1_connection_with_mfa_method(decide: Decide, method: str) -> None:
    assert allowed(decide(make_input(user={"amr": ["pwd", method]})), f"MFA present (amr {method})")


def test_level3_read_only_needs_no_mfa(decide: Decide) -> None:
    d = decide(make_input(user={"amr": ["pwd"]}, asset={"purdue_level": 3}))
    assert allowed(d)
    assert d["obligations"]["require_mfa"] is False


@pytest.mark.parametrize("op", ["program", "firmware"])
def test_program_and_firmware_connections_need_mfa(decide: Decide, op: str) -> None:
    d = decide(
        make_input(user={"amr": ["pwd"]}, asset={"purdue_level": 4}, action={"operation_class": op})
    )
    assert denied(d, MFA_REASON)


def test_requests_for_level1_2_carry_require_mfa(decide: Decide) -> None:
    d = decide(
        make_input(
            user={"amr": ["pwd"]}, asset={"purdue_level": 2}, action={"kind": "request"}, grant=None
        )
    )
    assert allowed(d)
    assert d["obligations"]["require_mfa"] is True


@pytest.mark.parametrize("level", [3, 4, 5])
def test_admin_reaches_level3_plus_without_grant(decide: Decide, level: int) -> None:
    d = decide(make_input(user=ADMIN, asset={"purdue_level": level}, grant=None))
    assert allowed(
        d, f"admin standing access to Purdue level {level} asset plc-press-3 (no grant needed)"
    )


@pytest.mark.parametrize(
    ("user", "level"),
    [(ADMIN, 1), (ADMIN, 2), ({}, 3), ({}, 5), ({"roles": ["vendor", "admin"]}, 4)],
)
def test_no_standing_access_below_level3_or_for_vendors(
    decide: Decide, user: dict[str, Any], level: int
) -> None:
    d = decide(make_input(user=user, asset={"purdue_level": level}, grant=None))
    assert denied(d, "ssh to plc-press-3 needs an approved grant")


# --------------------------------------------------------------------------- 4. grants


@pytest.mark.parametrize("kind", ["ssh", "sftp", "tcp", "web_terminal"])
def test_every_connection_kind_needs_a_grant(decide: Decide, kind: str) -> None:
    d = decide(make_input(action={"kind": kind}, grant=None))
    assert denied(d, f"{kind} to plc-press-3 needs an approved grant")


@pytest.mark.parametrize("state", ["approved", "active"])
def test_grant_approved_or_active_allows(decide: Decide, state: str) -> None:
    d = decide(make_input(grant={"state": state}))
    assert allowed(d, f"grant g-1 {state} until 2025-03-04T23:30:00Z")


@pytest.mark.parametrize("state", ["pending", "expired", "revoked", "denied", "cancelled"])
def test_grant_in_other_states_denies(decide: Decide, state: str) -> None:
    d = decide(make_input(grant={"state": state}))
    assert denied(d, f"grant g-1 is {state}, not approved or active")


@pytest.mark.parametrize(
    ("grant", "allow"),
    [
        ({"starts_at": NOW}, True),
        ({"starts_at": at(NOW, seconds=1)}, False),
        ({"ends_at": at(NOW, seconds=1)}, True),
        ({"ends_at": NOW}, False),
    ],
    ids=["starts-now", "starts-later", "ends-in-1s", "ended-now"],
)
def test_grant_window_is_start_inclusive_end_exclusive(
    decide: Decide, grant: dict[str, Any], allow: bool
) -> None:
    d = decide(make_input(grant=grant))
    assert d["allow"] is allow
    if not allow:
        assert any(
            r.startswith("grant g-1 is not valid at 2025-03-04T21:30:00Z") for r in d["reasons"]
        )


def test_grant_must_be_requested_by_the_user(decide: Decide) -> None:
    d = decide(make_input(grant={"requester": "vendor-bob"}))
    assert denied(d, "grant g-1 was requested by vendor-bob, not by vendor-alice")


WINDOWS = [{"days": ["tue"], "start": "22:00", "end": "02:00"}]


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        ("2025-03-04T21:00:00Z", True),  # Tue 22:00 CET, window start
        ("2025-03-04T23:30:00Z", True),  # Wed 00:30, after midnight in Tuesday's window
        ("2025-03-05T00:59:59Z", True),  # Wed 01:59:59
        ("2025-03-05T01:00:00Z", False),  # Wed 02:00, end is exclusive
        ("2025-03-04T20:59:59Z", False),  # Tue 21:59:59
        ("2025-03-03T23:30:00Z", False),  # Tue 00:30, Monday has no window
        ("2025-04-01T20:00:00Z", True),  # Tue 22:00 CEST (after the DST change)
        ("2025-04-01T19:30:00Z", False),  # Tue 21:30 CEST
    ],
)
def test_maintenance_window_only_grant(decide: Decide, now: str, inside: bool) -> None:
    grant = {
        "maintenance_window_only": True,
        "starts_at": at(now, days=-1),
        "ends_at": at(now, hours=6),
    }
    d = decide(make_input(context={"now": now}, grant=grant))
    if inside:
        assert allowed(d)
        assert any(
            "inside maintenance window tue 22:00-02:00 (Europe/Berlin)" in r for r in d["reasons"]
        )
    else:
        assert denied(
            d,
            f"grant g-1 is limited to maintenance windows; {now} is outside every "
            "window of site Riverside Plant",
        )


def test_maintenance_window_site_without_windows_denies(decide: Decide) -> None:
    data = make_data(
        sites={"Riverside Plant": {"timezone": "Europe/Berlin", "maintenance_windows": []}}
    )
    d = decide(make_input(grant={"maintenance_window_only": True}), data)
    assert denied(d)


# --------------------------------------------------------------------------- 5. obligations


WHOLE_SPACE = [
    {"table": "coils", "first": 0, "last": 65535},
    {"table": "holding_registers", "first": 0, "last": 65535},
]


CLASSES = {
    # op: (approvals, max_duration_s, idle_timeout_s, supervise, require_mfa at level 3)
    "read_only": (1, 28800, 900, False, False),
    "tune": (1, 14400, 900, False, False),
    "program": (2, 7200, 300, True, True),
    "firmware": (2, 3600, 300, True, True),
}


@pytest.mark.parametrize("op", sorted(CLASSES))
def test_obligations_per_operation_class(decide: Decide, op: str) -> None:
    d = decide(
        make_input(
            action={"kind": "request", "operation_class": op},
            grant=None,
            asset={"purdue_level": 3, "criticality": "low"},
        )
    )
    o = d["obligations"]
    assert (
        o["approvals_required"],
        o["max_duration_s"],
        o["idle_timeout_s"],
        o["supervise"],
        o["require_mfa"],
    ) == CLASSES[op]
    assert f"request for {op} on plc-press-3 needs {CLASSES[op][0]} approval(s)" in d["reasons"]


@pytest.mark.parametrize(
    ("op", "codes", "ranges"),
    [
        ("read_only", READS, []),
        ("tune", sorted([*READS, 5, 6, 15, 16, 22, 23]), TUNE_RANGES),
        ("program", sorted([*READS, 5, 6, 15, 16, 21, 22, 23, 90]), WHOLE_SPACE),
        ("firmware", sorted([*READS, 5, 6, 8, 15, 16, 21, 22, 23, 90, 125, 126]), WHOLE_SPACE),
    ],
)
def test_modbus_obligations(decide: Decide, op: str, codes: list[int], ranges: list[Any]) -> None:
    """A connection to the Modbus endpoint gets its class's codes and per-table ranges."""
    d = decide(modbus_connection(op))
    assert d["obligations"]["modbus"] == {
        "allow_function_codes": codes,
        "write_ranges": ranges,
        "unit_ids": [1],
    }


def test_tune_on_endpoint_without_ranges_writes_nothing(decide: Decide) -> None:
    bare = [{**e, "settings": {}} for e in make_endpoints()]
    d = decide(modbus_connection("tune", asset={"endpoints": bare}))
    assert allowed(d)
    assert d["obligations"]["modbus"]["write_ranges"] == []
    assert d["obligations"]["modbus"]["unit_ids"] is None


def test_ssh_connection_carries_no_write_ranges(decide: Decide) -> None:
    d = decide(make_input(action={"operation_class": "tune"}, grant={"operation_class": "tune"}))
    assert allowed(d)
    assert d["obligations"]["modbus"]["write_ranges"] == []


def modbus_connection(op: str, **parts: Any) -> dict[str, Any]:
    """A vendor's ``tcp`` connection to plc-press-3's Modbus endpoint under a ``op`` grant."""
    return make_input(
        action={"kind": "tcp", "port": 502, "operation_class": op, "login": None},
        grant={"operation_class": op},
        **parts,
    )


@pytest.mark.parametrize(
    ("ends_at", "expected"),
    [(at(NOW, hours=2), 7200), (at(NOW, seconds=0.5), 1), (at(NOW, days=2), 28800)],
)
def test_max_duration_never_past_grant_end(decide: Decide, ends_at: str, expected: int) -> None:
    assert (
        decide(make_input(grant={"ends_at": ends_at}))["obligations"]["max_duration_s"] == expected
    )


@pytest.mark.parametrize(
    ("level", "criticality", "record"),
    [
        (1, "low", "strict"),
        (2, "medium", "strict"),
        (3, "high", "strict"),
        (4, "critical", "strict"),
        (3, "low", "best_effort"),
        (5, "medium", "best_effort"),
    ],
)
def test_record_mode(decide: Decide, level: int, criticality: str, record: str) -> None:
    d = decide(make_input(asset={"purdue_level": level, "criticality": criticality}))
    assert d["obligations"]["record"] == record


@pytest.mark.parametrize(("level", "rps"), [(1, 10), (2, 50), (3, 50), (5, 50)])
def test_rate_limit(decide: Decide, level: int, rps: int) -> None:
    assert decide(make_input(asset={"purdue_level": level}))["obligations"]["rate_limit_rps"] == rps


# --------------------------------------------------------------------------- 6-8.


@pytest.mark.parametrize("kind", ["ssh", "request"])
def test_emergency_lockout_denies_vendors(decide: Decide, kind: str) -> None:
    data = make_data(lockout={"vendors": True, "reason": "incident INC-7"})
    d = decide(make_input(action={"kind": kind}), data)
    assert denied(d, "emergency lockout: all vendor access is disabled (incident INC-7)")


def test_emergency_lockout_assumed_without_flag(decide: Decide) -> None:
    data = make_data()
    del data["plant"]["lockout"]
    d = decide(make_input(), data)
    assert d["reasons"] == ["emergency lockout assumed: data.plant.lockout.vendors is not set"]


def test_emergency_lockout_spares_non_vendors(decide: Decide) -> None:
    data = make_data(lockout={"vendors": True, "reason": "incident"})
    assert allowed(decide(make_input(user=ADMIN, asset={"purdue_level": 3}, grant=None), data))


@pytest.mark.parametrize("user", [APPROVER, ADMIN], ids=["approver", "admin"])
def test_nobody_approves_own_request(decide: Decide, user: dict[str, Any]) -> None:
    d = decide(
        make_input(
            user=user, action={"kind": "approve"}, grant=PENDING | {"requester": user["sub"]}
        )
    )
    assert denied(d, "cannot approve your own request")


def test_only_pending_requests_can_be_approved(decide: Decide) -> None:
    d = decide(
        make_input(
            user=APPROVER, action={"kind": "approve"}, grant={"state": "approved", "approvers": []}
        )
    )
    assert denied(d, "grant g-1 is approved; only pending requests can be approved")


def test_approver_approves_once(decide: Decide) -> None:
    d = decide(
        make_input(
            user=APPROVER,
            action={"kind": "approve"},
            grant={"state": "pending", "approvers": ["owner-olga"]},
        )
    )
    assert denied(d, "owner-olga already approved grant g-1")


def test_approve_needs_the_request(decide: Decide) -> None:
    d = decide(make_input(user=APPROVER, action={"kind": "approve"}, grant=None))
    assert denied(d, "approve needs input.grant (the request to approve)")


@pytest.mark.parametrize("kind", ["ssh", "sftp", "tcp", "web_terminal"])
def test_connections_need_agent_online(decide: Decide, kind: str) -> None:
    d = decide(make_input(action={"kind": kind}, context={"agent_online": False}))
    assert denied(d, "agent for plc-press-3 is offline")


def test_requests_do_not_need_the_agent(decide: Decide) -> None:
    d = decide(make_input(action={"kind": "request"}, grant=None, context={"agent_online": False}))
    assert allowed(d)


# --------------------------------------------------------------------------- the Rego tests


def rego_tests() -> list[tuple[str, str]]:
    found = []
    for path in policy_files(tests=True):
        text = path.read_text()
        package = re.search(r"^package\s+(\S+)", text, re.MULTILINE)
        assert package is not None, path
        for rule in dict.fromkeys(re.findall(r"^(test_\w+)\b", text, re.MULTILINE)):
            found.append((package.group(1), rule))
    return found


@pytest.fixture(scope="module")
def test_engine() -> regorus.Engine:
    engine = new_engine(with_tests=True)
    engine.set_input({})
    return engine


@pytest.mark.parametrize(("package", "rule"), rego_tests(), ids=lambda v: v)
def test_rego_unit_test(test_engine: regorus.Engine, package: str, rule: str) -> None:
    result = test_engine.eval_query(f"data.{package}.{rule}")["result"]
    assert result, f"data.{package}.{rule} is undefined (a condition did not hold)"
    assert result[0]["expressions"][0]["value"] is True


def test_every_package_has_tests() -> None:
    tested = {package.removesuffix("_test") for package, _ in rego_tests()}
    declared = {
        re.search(r"^package\s+(\S+)", p.read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]
        for p in policy_files()
    }
    assert declared <= tested
