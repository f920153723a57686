"""Every decision is audited with its input hash; bad input and bad policies deny, with an event."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from policies.decision import input_hash
from policies.embedded import EmbeddedEngine
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer
from sessions.db import create_db_engine, migrate
from sessions.testing import ManualClock
from tests.policy_inputs import make_data, make_input
from tests.rego_fixtures import write_bundle

BUNDLE = Path(__file__).resolve().parents[1] / "policies" / "bundle"


def _audit(tmp_path: Path) -> AuditLog:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate(engine)
    return AuditLog(engine, ManualClock(datetime(2026, 11, 27, tzinfo=UTC)))


async def test_allow_and_missing_field_are_both_audited(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    policy = EmbeddedEngine.from_directory(BUNDLE)
    policy.set_data(make_data())
    authorizer = Authorizer(policy, audit)
    good = make_input()
    allowed = await authorizer.decide(good, actor="u1", purpose="connect")
    broken = make_input()
    del broken["user"]["sub"]
    denied = await authorizer.decide(broken, actor="u1", purpose="connect")
    assert allowed.allow and not denied.allow
    assert any("input.user.sub" in r for r in denied.reasons)
    events = list(audit.iter_events())
    assert [e.outcome for e in events] == ["allow", "deny"]
    assert events[0].details["input_hash"] == input_hash(good)
    assert events[0].details["obligations"]["record"] in {"strict", "best_effort"}
    assert events[1].details["reasons"] == list(denied.reasons)
    assert audit.verify().ok


async def test_wrong_type_decision_is_denied_and_audited(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    bundle = write_bundle(
        tmp_path / "b", "package conduit.access\nimport rego.v1\ndecision := 42\n", test=None
    )
    decision = await Authorizer(EmbeddedEngine.from_directory(bundle), audit).decide(
        make_input(), actor="u1", purpose="connect"
    )
    assert not decision.allow and "malformed decision" in decision.reasons[0]
    (event,) = list(audit.iter_events())
    assert event.outcome == "deny" and "malformed decision" in event.details["reasons"][0]
