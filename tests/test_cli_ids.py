"""Ids on the command line and `conduit forward`'s grant check, against a real broker.

* an unambiguous prefix works where a full id does (`approve`, `deny`, `revoke`);
* an ambiguous prefix is refused in one line naming the candidates, and nothing changes;
* `conduit forward` without a grant covering the port says why and never says "forwarding".
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import httpx2
import pytest

from broker.dev.demo import seed
from tests.harness.broker import RunningBroker, audit_events, web_login
from tests.harness.cli import cli_env, run_conduit
from tests.harness.wait import TIMEOUT_S, wait_until


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


def _token(env: dict[str, str]) -> str:
    stored = json.loads((Path(env["XDG_CONFIG_HOME"]) / "conduit" / "credentials.json").read_text())
    token: str = next(iter(stored["brokers"].values()))["access_token"]
    return token


def _request(broker: RunningBroker, token: str, asset: str = "hist-01") -> str:
    with httpx2.Client(timeout=TIMEOUT_S) as http:
        made = http.post(
            f"{broker.url}/api/requests",
            json={"asset": asset, "duration": "1h", "reason": "diagnostics"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert made.status_code == 201, made.text
    rid: str = made.json()["id"]
    return rid


def _windows(env: dict[str, str]) -> list[str]:
    listed = run_conduit("windows", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    return [line.split()[0] for line in listed.stdout.splitlines() if "Riverside" in line]


def test_ambiguous_prefix_names_the_candidates_and_changes_nothing(
    plant: RunningBroker, tmp_path: Path
) -> None:
    """One resolver serves every id-taking command: shown here with `windows remove` (many
    windows are cheap to make; a vendor has one pending request per asset)."""
    adam = cli_env(plant, tmp_path, "adam")
    token = _token(adam)
    by_first: defaultdict[str, list[str]] = defaultdict(list)
    with httpx2.Client(timeout=TIMEOUT_S) as http:
        for hour in range(17):  # 17 ids, 16 hex digits: two share a first digit
            made = http.post(
                f"{plant.url}/api/windows",
                json={
                    "site": "Riverside Plant",
                    "days": ["sun"],
                    "start": f"{hour:02d}:00",
                    "end": f"{hour:02d}:30",
                },
                headers={"Authorization": f"Bearer {token}"},
            )
            assert made.status_code in (200, 201), made.text
            by_first[made.json()["id"][0]].append(made.json()["id"])
    first, shared = next((k, v) for k, v in by_first.items() if len(v) > 1)
    before = _windows(adam)

    refused = run_conduit("windows", "remove", first, env=adam)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(
        f"conduit: '{first}' is ambiguous: {len(shared)} windows start with it: "
    ), refused.stderr
    assert all(wid in refused.stderr for wid in shared[:5])
    assert "(Riverside Plant)" in refused.stderr  # each candidate says what it is
    assert _windows(adam) == before

    one = next(ids for ids in by_first.values() if len(ids) == 1)[0]
    removed = run_conduit("windows", "remove", one[:8], env=adam)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"Window {one} removed.\n"
    assert sorted(_windows(adam)) == sorted(w for w in before if w != one)


def test_approve_deny_take_a_prefix(plant: RunningBroker, tmp_path: Path) -> None:
    alice, olga = cli_env(plant, tmp_path, "alice"), cli_env(plant, tmp_path, "olga")
    rid = _request(plant, _token(alice), "hist-01")
    denied = run_conduit("deny", rid[:8], "--reason", "not now", env=olga)
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout == f"Request {rid} is denied.\n"
    assert not audit_events(plant, "access.approve")


def test_refusals_fit_the_surface(plant: RunningBroker, tmp_path: Path) -> None:
    """The API says "this action needs ..." (the CLI shows it as "this command"), a page
    "this page needs ...": both name the role needed and the roles held."""
    alice = cli_env(plant, tmp_path, "alice")
    with httpx2.Client(timeout=TIMEOUT_S) as http:
        api = http.get(
            f"{plant.url}/api/agents", headers={"Authorization": f"Bearer {_token(alice)}"}
        )
    assert api.status_code == 403
    assert api.json()["message"] == "this action needs the admin role; you have: vendor"
    cli = run_conduit("agents", "list", env=alice)
    assert cli.stderr == "conduit: this command needs the admin role; you have: vendor\n"
    with httpx2.Client(timeout=TIMEOUT_S) as browser:
        web_login(browser, plant.url, "alice", "alice-demo-pw")
        page = browser.get(f"{plant.url}/admin/agents")
    assert page.status_code == 403
    assert "this page needs the admin role; you have: vendor" in page.text


def test_forward_says_why_not_before_listening(plant: RunningBroker, tmp_path: Path) -> None:
    alice, olga = cli_env(plant, tmp_path, "alice"), cli_env(plant, tmp_path, "olga")
    adam = cli_env(plant, tmp_path, "adam")

    none = run_conduit("forward", "hist-01", "22", "--local-port", "0", env=alice)
    assert none.returncode == 2 and "forwarding" not in none.stdout
    assert none.stderr == (
        "conduit: not forwarding: you have no grant on hist-01: request one with "
        "`conduit request hist-01 --port 22 --reason ...` and wait for its approval\n"
    )

    rid = _request(plant, _token(alice))
    assert run_conduit("approve", rid[:8], env=olga).returncode == 0
    grant: dict[str, str] = {}

    def active() -> bool:  # the broker's grant clock opens the window within a second
        (mine,) = json.loads(run_conduit("grants", "--mine", "--json", env=alice).stdout)
        grant.update(mine)
        return bool(mine["state"] == "active")

    wait_until(active, "alice's grant on hist-01 to turn active")
    wrong = run_conduit("forward", "hist-01", "5999", env=alice)
    assert wrong.returncode == 2 and "forwarding" not in wrong.stdout
    assert wrong.stderr == (
        f"conduit: not forwarding: port 5999 is not in your grant on hist-01 ({grant['id'][:8]} "
        "reaches port(s) 22): request access to it with `conduit request hist-01 --port 5999 "
        "--reason ...`\n"
    )

    assert run_conduit("revoke", grant["id"][:8], "--reason", "done", env=adam).returncode == 0
    revoked = run_conduit("forward", "hist-01", "22", env=alice)
    assert revoked.returncode == 2 and "forwarding" not in revoked.stdout
    assert revoked.stderr.startswith(
        f"conduit: not forwarding: your grant {grant['id'][:8]} on hist-01 was revoked (done)"
    ), revoked.stderr
