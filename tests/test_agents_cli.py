"""``conduit agents token|list|revoke|adopt`` end to end: real broker, real IdP sign-in, the
real ``conduit-agent`` joining with the token the CLI printed and tunnelling to the broker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from broker.dev.demo import seed
from tests.harness.agent import (
    AgentProcess,
    EchoAsset,
    join,
    wait_connected,
    wait_disconnected,
    write_config,
)
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.cli import run_conduit
from tests.test_access_api import _cli_env


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


def _agents(env: dict[str, str]) -> list[dict[str, Any]]:
    done = run_conduit("agents", "list", "--json", env=env)
    assert done.returncode == 0, done.stderr
    agents: list[dict[str, Any]] = json.loads(done.stdout)
    return agents


def _wait_for(env: dict[str, str], check: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Poll ``agents list --json`` until ``check(agents)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        agents = _agents(env)
        if check(agents):
            return agents
        assert time.monotonic() < deadline, json.dumps(agents, indent=2)
        time.sleep(0.2)


def test_token_join_list_adopt_revoke(
    plant: RunningBroker, tmp_path: Path, echo: EchoAsset
) -> None:
    adam = _cli_env(plant, tmp_path, "adam")
    made = run_conduit(
        "agents", "token", "--site", "Riverside Plant", "--zone", "supervisory", "--name",
        "edge-1", env=adam,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    command = next(ln.strip() for ln in made.stdout.splitlines() if "conduit-agent join" in ln)
    assert command.startswith(f"conduit-agent join --broker {plant.url} --token cjt1")
    token = command.split("--token ")[1]
    assert f"  {token}" in made.stdout  # the token itself, shown once

    config = write_config(tmp_path / "agent", [("127.0.0.1", echo.port, "tcp")])
    agent_id = join(plant, token, config)
    agent = AgentProcess.start(config)
    try:
        wait_connected(plant, agent_id)
        agents = _wait_for(adam, lambda a: a and a[0]["endpoints"])
        [row] = agents
        assert (row["id"], row["name"], row["state"]) == (agent_id, "edge-1", "active")
        assert row["connected"] is True and row["connected_via"] == "this broker"
        assert (row["site"], row["zone"]) == ("Riverside Plant", "supervisory")
        [ep] = row["endpoints"]
        assert (ep["host"], ep["port"], ep["asset"]) == ("127.0.0.1", echo.port, None)
        assert row["unmatched"] == [f"127.0.0.1:{echo.port}"]
        assert token not in json.dumps(agents)  # no secret in list views

        table = run_conduit("agents", "list", env=adam)
        assert table.returncode == 0, table.stderr
        assert agent_id in table.stdout and "connected (this broker)" in table.stdout
        assert "UNMATCHED" in table.stdout and ep["id"] in table.stdout
        assert token not in table.stdout

        adopted = run_conduit(
            "agents", "adopt", ep["id"], "--name", "echo-01", "--owner-group", "ot-approvers",
            "--criticality", "low", env=adam,
        )  # fmt: skip
        assert adopted.returncode == 0, adopted.stderr
        assert f"Asset echo-01 created for endpoint 127.0.0.1:{echo.port}" in adopted.stdout
        [row] = _agents(adam)
        assert row["endpoints"][0]["asset"] == "echo-01" and row["unmatched"] == []
        [event] = audit_events(plant, "agent.endpoint.adopted")  # the change, before and after
        assert event["details"]["before"] is None
        assert event["details"]["after"]["asset"] == "echo-01"
        assert event["details"]["after"]["endpoint"]["port"] == echo.port
        manager = plant.services.policy_manager
        assert manager is not None and "echo-01" in manager.data["plant"]["assets"]  # pushed
        again = run_conduit(
            "agents", "adopt", ep["id"], "--name", "echo-02", "--owner-group", "x", env=adam
        )
        assert again.returncode == 2 and "already uses this endpoint" in again.stderr

        revoked = run_conduit("agents", "revoke", agent_id, env=adam)
        assert revoked.returncode == 0, revoked.stderr
        assert f"Agent {agent_id} is revoked" in revoked.stdout
        wait_disconnected(plant, agent_id)
        [row] = _wait_for(adam, lambda a: not a[0]["connected"])
        assert row["state"] == "revoked"
        twice = run_conduit("agents", "revoke", agent_id, env=adam)
        assert twice.returncode == 2 and "already revoked" in twice.stderr
    finally:
        agent.stop()
    kinds = {e["kind"] for e in audit_events(plant) if e["outcome"] == "ok"}
    assert {"agent.token.created", "agent.joined", "agent.endpoint.adopted"} <= kinds
    assert "agent.revoked" in kinds


def test_refusals(plant: RunningBroker, tmp_path: Path) -> None:
    alice = _cli_env(plant, tmp_path, "alice")
    for args in (
        ("agents", "token", "--site", "Riverside Plant"),
        ("agents", "list"),
        ("agents", "revoke", "nope"),
        ("agents", "adopt", "nope", "--name", "x", "--owner-group", "y"),
    ):
        done = run_conduit(*args, env=alice)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr == "conduit: this command needs the admin role; you have: vendor\n"
        assert not done.stdout

    adam = _cli_env(plant, tmp_path, "adam")
    unknown = run_conduit("agents", "token", "--site", "Nowhere", env=adam)
    assert unknown.returncode == 2 and "site 'Nowhere' not found" in unknown.stderr
    bad_ttl = run_conduit("agents", "token", "--site", "Riverside Plant", "--ttl", "48h", env=adam)
    assert bad_ttl.returncode == 2 and "ttl" in bad_ttl.stderr
    missing = run_conduit("agents", "revoke", "no-such-agent", env=adam)
    assert missing.returncode == 2
    assert missing.stderr == (
        "conduit: no agent with an id starting with 'no-such-agent': see `conduit agents list`\n"
    )
    assert run_conduit("agents", "list", env=adam).stdout.strip() == "no agents"
    signed_out = run_conduit("agents", "list", env={**adam, "XDG_CONFIG_HOME": str(tmp_path)})
    assert signed_out.returncode == 2 and "conduit login" in signed_out.stderr
