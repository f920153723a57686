"""Pages people can trust (issue 15, Web UI), through a real broker, the real IdP and the CLI.

* an approver is warned on the queue (web, API, CLI) when a requester signed in without MFA
  for an asset that needs it at connect time (Purdue level 1), and not when they used MFA;
* a request's state follows its grant: after a revoke the request reads ``revoked`` on the
  vendor page, the grants page, ``GET /api/requests`` and ``conduit requests``;
* obligations are words in a two-column list (vendor page, grants page, ``conduit grants``), never
  Python reprs; users are display names with their id on hover (grants, queue, audit log).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from sqlmodel import col, select

from broker.dev.demo import seed
from sessions.db import session_scope
from sessions.models import User
from tests.harness.broker import RunningBroker, same_origin_api, web_login
from tests.harness.cli import cli_env, run_conduit
from tests.harness.wait import TIMEOUT_S

PYTHON_REPRS = ("True", "False", "None", "{'", "allow_function_codes", "max_duration_s")


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


@contextmanager
def signed_in(broker: RunningBroker, name: str, otp: str | None = None) -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
        answer = web_login(client, broker.url, name, f"{name}-demo-pw", otp=otp)
        assert answer.status_code == 303, answer.text
        yield client


def user_id(broker: RunningBroker, name: str) -> str:
    with session_scope(broker.services.engine) as db:
        return db.exec(select(User.id).where(col(User.sub).endswith(f"-{name}"))).one()


def _row(html: str, row_id: str) -> str:
    assert f'id="{row_id}"' in html, row_id
    return html.split(f'id="{row_id}"')[1].split("</tr>")[0]


def _request(env: dict[str, str], asset: str) -> str:
    made = run_conduit("request", asset, "--for", "1h", "--reason", "diagnostics", env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.split()[1]


def test_mfa_warning_state_follows_grant_obligations_and_names(
    plant: RunningBroker, tmp_path: Path
) -> None:
    alice, olga, adam = (cli_env(plant, tmp_path, n) for n in ("alice", "olga", "adam"))
    without_mfa = _request(alice, "plc-press-3")  # Purdue level 1: MFA at connect time
    level3 = _request(alice, "hist-01")  # level 3, read_only: no MFA needed
    with signed_in(plant, "victor", otp="246810") as web:  # his sign-in used MFA (amr otp)
        made = same_origin_api(web, plant.url).post(
            f"{plant.url}/api/requests",
            json={"asset": "plc-press-3", "duration": "1h", "reason": "diagnostics"},
        )
        assert made.status_code == 201, made.text
        with_mfa = made.json()["id"]

    with signed_in(plant, "olga") as web:
        queue = web.get(f"{plant.url}/approvals").text
        detail = web.get(f"{plant.url}/requests/{without_mfa}")
        detail_mfa = web.get(f"{plant.url}/requests/{with_mfa}").text
    assert detail.status_code == 200 and 'id="mfa-warning"' in detail.text
    assert "Purdue level 1" in detail.text and 'id="mfa-warning"' not in detail_mfa
    assert f'href="/requests/{without_mfa}"' in queue
    with signed_in(plant, "victor", otp="246810") as web:  # another vendor: not his to see
        assert web.get(f"{plant.url}/requests/{without_mfa}").status_code == 404
    warning = f'id="mfa-warning-{without_mfa}"'
    assert warning in queue and "last sign-in used no MFA (amr: pwd)" in queue
    assert "Purdue level 1" in _row(queue, f"pending-{without_mfa}")
    assert "mfa-warning" not in _row(queue, f"pending-{level3}")
    assert "mfa-warning" not in _row(queue, f"pending-{with_mfa}")
    alice_id = user_id(plant, "alice")
    assert f'<span class="person" title="{alice_id}">Alice Vendor</span>' in queue

    pending = json.loads(run_conduit("requests", "--state", "pending", "--json", env=olga).stdout)
    warned = {r["id"]: r["mfa_warning"] for r in pending}
    assert warned[without_mfa] and not warned[level3] and not warned[with_mfa]
    listed = run_conduit("requests", "--state", "pending", env=olga).stdout
    assert listed.count("warning: The requester's last sign-in used no MFA") == 1

    approved = run_conduit("approve", level3, env=olga)
    assert approved.returncode == 0 and "is approved" in approved.stdout, approved.stderr
    [grant] = json.loads(run_conduit("grants", "--mine", "--json", env=alice).stdout)
    assert grant["request_id"] == level3
    text = run_conduit("grants", "--mine", env=alice).stdout
    assert "    Recording: " in text and not any(r in text for r in PYTHON_REPRS)
    assert "Modbus" not in text

    with signed_in(plant, "alice") as web:
        row = _row(web.get(f"{plant.url}/vendor").text, f"grant-{grant['id']}")
    assert f'<dl class="obligations" id="obligations-{grant["id"]}">' in row
    assert "<dt>Recording</dt>" in row and "<dt>MFA</dt>" in row
    assert "<dt>Modbus</dt>" not in row  # an SSH-only grant: no Modbus promises to show
    assert not any(r in row for r in PYTHON_REPRS)

    revoked = run_conduit("revoke", grant["id"], "--reason", "job done early", env=adam)
    assert revoked.returncode == 0, revoked.stderr

    mine = {r["id"]: r for r in json.loads(run_conduit("requests", "--json", env=alice).stdout)}
    assert (mine[level3]["state"], mine[level3]["request_state"]) == ("revoked", "approved")
    assert mine[level3]["grant_id"] == grant["id"]
    assert f"{level3}  revoked" in run_conduit("requests", "--mine", env=alice).stdout
    only = json.loads(run_conduit("requests", "--state", "revoked", "--json", env=olga).stdout)
    assert [r["id"] for r in only] == [level3]
    with signed_in(plant, "alice") as web:
        row = _row(web.get(f"{plant.url}/vendor").text, f"request-{level3}")
    assert 'data-request-state="revoked"' in f'id="request-{level3}"{row}'
    assert ">approved<" not in row
    with signed_in(plant, "alice") as web:
        detail = web.get(f"{plant.url}/requests/{level3}").text
    assert '<span class="state revoked" id="request-state">revoked</span>' in detail
    assert (
        "job done early" in detail and '<dl class="obligations" id="request-obligations">' in detail
    )
    olga_id = user_id(plant, "olga")
    assert f'<span class="person" title="{olga_id}">Olga Owner</span>' in detail
    with signed_in(plant, "adam") as web:
        page = web.get(f"{plant.url}/admin/grants").text
        filtered = web.get(f"{plant.url}/admin/grants", params={"state": "revoked"}).text
        audit = web.get(f"{plant.url}/security/audit").text
    assert '<span class="state revoked">revoked</span>' in _row(page, f"request-{level3}")
    assert f'id="request-{level3}"' in filtered and f'id="request-{without_mfa}"' not in filtered
    grant_row = _row(page, f"grant-{grant['id']}")
    assert f'title="{alice_id}">Alice Vendor</span>' in grant_row
    assert "Recording" in grant_row and not any(r in grant_row for r in PYTHON_REPRS)
    # the audit log names the actor; the id is on hover, not the cell's text
    assert f'<span class="person" title="{olga_id}">Olga Owner</span>' in audit
    assert f"<td>{olga_id}</td>" not in audit


def test_users_page_names_people_with_ids_on_hover(plant: RunningBroker) -> None:
    with signed_in(plant, "adam") as web:
        page = web.get(f"{plant.url}/admin/users").text
    adam_id = user_id(plant, "adam")
    assert f'<strong class="person" title="{adam_id}">Adam Admin</strong>' in page
