"""AgentService on SQLite and PostgreSQL: tokens, one winner per token, revoke, inventory."""

from __future__ import annotations

import threading
from datetime import timedelta

import asyncssh
import pytest
import sqlalchemy as sa

from agents.wire import Endpoint, JoinToken
from broker.dev.demo import seed_plant
from sessions.agents.base import AgentRefused, JoinRefused
from sessions.agents.service import AgentService
from sessions.audit import AuditLog
from sessions.errors import ConflictError, NotFoundError, ValidationError
from sessions.testing import ManualClock


def _key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


@pytest.fixture
def service(engine: sa.Engine) -> AgentService:
    clock = ManualClock()
    seed_plant(engine, clock)
    signed: list[str] = []

    def signer(public_key: str, agent_id: str) -> tuple[str, int]:
        signed.append(agent_id)
        return f"cert-for-{agent_id}", len(signed)

    return AgentService(engine, AuditLog(engine, clock), clock, signer, broker_pin="p" * 43)


def _join(service: AgentService, token: JoinToken, key: str | None = None) -> str:
    return service.join(
        token_id=token.token_id,
        secret=token.secret,
        public_key=key or _key(),
        hostname="gw-1",
        version="0.2.0",
    ).agent_id


def test_concurrent_redemptions_of_one_token_make_exactly_one_agent(service: AgentService) -> None:
    token, _ = service.create_token(
        actor="adam", site="Riverside Plant", zone="supervisory", ttl=timedelta(minutes=15)
    )
    wins: list[str] = []
    refusals: list[str] = []
    barrier = threading.Barrier(12)

    def attempt() -> None:
        barrier.wait()
        try:
            wins.append(_join(service, token))
        except JoinRefused as exc:
            refusals.append(exc.reason)

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert refusals == ["reused"] * 11
    assert [v.agent.id for v in service.list()] == wins


def test_token_validation(service: AgentService) -> None:
    with pytest.raises(ValidationError, match="between 1 minute and 24 hours"):
        service.create_token(actor="a", site="Riverside Plant", zone=None, ttl=timedelta(days=2))
    with pytest.raises(ValidationError):
        service.create_token(actor="a", site="Riverside Plant", zone=None, ttl=timedelta(seconds=5))
    with pytest.raises(NotFoundError, match="site"):
        service.create_token(actor="a", site="Nowhere", zone=None, ttl=timedelta(minutes=5))
    with pytest.raises(NotFoundError, match="zone"):
        service.create_token(
            actor="a", site="Riverside Plant", zone="no-such-zone", ttl=timedelta(minutes=5)
        )
    token, row = service.create_token(
        actor="a", site="Riverside Plant", zone=None, ttl=timedelta(minutes=5)
    )
    assert row.secret_hash != token.secret and token.secret not in repr(token)


def test_one_key_cannot_enroll_twice_and_bad_keys_are_refused(service: AgentService) -> None:
    key = _key()
    first, _ = service.create_token(
        actor="a", site="Riverside Plant", zone=None, ttl=timedelta(minutes=5)
    )
    second, _ = service.create_token(
        actor="a", site="Riverside Plant", zone=None, ttl=timedelta(minutes=5)
    )
    _join(service, first, key)
    with pytest.raises(JoinRefused) as info:
        _join(service, second, key)
    assert info.value.reason == "key_reused"
    with pytest.raises(JoinRefused) as info:
        _join(service, second, "not a key")
    assert info.value.reason == "bad_key"


def test_revoke_is_final_and_refuses_authentication(service: AgentService) -> None:
    token, _ = service.create_token(
        actor="a", site="Riverside Plant", zone="supervisory", ttl=timedelta(minutes=5)
    )
    key = _key()
    agent_id = _join(service, token, key)
    agent = service.get(agent_id)
    assert agent.key_pin and service.authenticate(agent.key_pin, node="n1").id == agent_id
    service.revoke(agent_id, actor="adam")
    with pytest.raises(ConflictError):
        service.revoke(agent_id, actor="adam")
    with pytest.raises(AgentRefused) as info:
        service.authenticate(agent.key_pin, node="n1")
    assert info.value.reason == "revoked"
    assert service.revoked_keys() == [(agent.key_pin, key.strip())]
    with pytest.raises(AgentRefused) as unknown:
        service.authenticate("u" * 43, node="n1")
    assert unknown.value.reason == "unknown_key"


def test_inventory_reports_only_changes(service: AgentService) -> None:
    token, _ = service.create_token(
        actor="a", site="Riverside Plant", zone="supervisory", ttl=timedelta(minutes=5)
    )
    agent_id = _join(service, token)
    eps = [Endpoint("10.0.0.5", 502, "modbus", "plc"), Endpoint("10.0.0.6", 22, "ssh", "hmi")]
    assert service.report_inventory(agent_id, eps, hostname="gw", version="1") is True
    assert service.report_inventory(agent_id, eps, hostname="gw", version="1") is False
    assert service.report_inventory(agent_id, eps[:1], hostname="gw", version="1") is True
    [view] = service.list()
    assert {(e.host, e.declared) for e in view.endpoints} == {
        ("10.0.0.5", True),
        ("10.0.0.6", False),
    }
    plc = next(e for e in view.endpoints if e.port == 502)
    service.adopt(plc.id, actor="adam", name="plc-new", owner_group="ot-press-line")
    with pytest.raises(ConflictError):
        service.adopt(plc.id, actor="adam", name="plc-dup", owner_group="ot-press-line")
    hmi = next(e for e in view.endpoints if e.port == 22)
    with pytest.raises(ConflictError, match="no longer declares"):
        service.adopt(hmi.id, actor="adam", name="hmi", owner_group="ot-press-line")
