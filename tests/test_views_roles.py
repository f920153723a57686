"""Who sees a live session and its recording, per role, through HTTP and the CLI (real sshd,
real agent, real IdP): the vendor their own, the approver those on assets their group owns
(and no longer once the asset belongs to another group), security and admins all, another
vendor none (``/recordings`` and ``GET /api/recordings`` alike); only admins end a session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
from sqlmodel import col, select

from sessions.db import session_scope
from sessions.models import Asset, Recording, User
from tests.harness.broker import web_login
from tests.harness.cli import run_conduit
from tests.harness.components import needs
from tests.harness.ssh_session import ASSET, SshRig
from tests.harness.wait import TIMEOUT_S, wait_until
from tests.test_ssh_cli import _conduit_popen, cli_env, rig  # noqa: F401 (the rig fixture)

pytestmark = needs("sshd")
OTPS = {"victor": "246810"}


@contextmanager
def web(rig: SshRig, name: str) -> Iterator[httpx2.Client]:  # noqa: F811
    with httpx2.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
        answer = web_login(client, rig.broker.url, name, f"{name}-demo-pw", otp=OTPS.get(name))
        assert answer.status_code == 303, answer.text
        yield client


def _user_id(rig: SshRig, name: str) -> str:  # noqa: F811
    with session_scope(rig.broker.services.engine) as db:
        return db.exec(select(User.id).where(col(User.sub).endswith(f"-{name}"))).one()


def _env(rig: SshRig, name: str) -> dict[str, str]:  # noqa: F811
    """A CLI environment for ``name``, signed in once for real (with the OTP if they have one)."""
    if name not in rig.users:
        with web(rig, name):
            pass
        rig.users[name] = _user_id(rig, name)
    return cli_env(rig, name)


def _live(env: dict[str, str]) -> list[dict[str, object]]:
    listed = run_conduit("sessions", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, object]] = json.loads(listed.stdout)
    return rows


def test_each_role_sees_its_sessions_and_recordings(rig: SshRig) -> None:  # noqa: F811
    alice = cli_env(rig, "alice")
    envs = {n: _env(rig, n) for n in ("olga", "victor", "sam", "adam")}
    rig.grant("alice")
    alice_id = _user_id(rig, "alice")
    proc = _conduit_popen(
        alice, "ssh", ASSET, "--login", rig.sshd.user, "--", "echo ready; sleep 60"
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        [own] = _live(alice)
        session_id = str(own["id"])
        for name in ("olga", "sam", "adam"):
            [row] = _live(envs[name])
            assert (row["id"], row["user"], row["user_id"]) == (
                session_id,
                "Alice Vendor",
                alice_id,
            )
            assert isinstance(row["obligations"], dict) and "record" in row["obligations"]
        assert _live(envs["victor"]) == []
        assert run_conduit("sessions", env=envs["victor"]).stdout.strip() == "no live sessions"

        with web(rig, "olga") as olga:
            page = olga.get(f"{rig.broker.url}/sessions")
            assert page.status_code == 200 and f'id="session-{session_id}"' in page.text
            assert f'<span class="person" title="{alice_id}">Alice Vendor</span>' in page.text
            assert "kill-confirm-" not in page.text and 'href="/sessions"' in page.text
            assert f'<dl class="obligations" id="obligations-{session_id}">' in page.text
        with web(rig, "victor") as victor:
            page = victor.get(f"{rig.broker.url}/sessions")
            assert page.status_code == 200 and f'id="session-{session_id}"' not in page.text
        with web(rig, "nora") as nora:  # no role at all
            assert nora.get(f"{rig.broker.url}/sessions").status_code == 403

        refused = run_conduit("sessions", "kill", session_id, env=envs["olga"])
        assert refused.returncode != 0 and "admin" in refused.stderr
        assert [r["id"] for r in _live(envs["adam"])] == [session_id]  # still live
        killed = run_conduit("sessions", "kill", session_id, env=envs["adam"])
        assert killed.returncode == 0, killed.stderr
        proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    engine = rig.broker.services.engine

    def recording() -> str | None:
        with session_scope(engine) as db:
            found = db.exec(select(Recording.id).where(Recording.session_id == session_id)).first()
            return found

    recording_id = wait_until(recording, "the session's recording row")
    assert isinstance(recording_id, str)
    url = rig.broker.url

    def api_ids(client: httpx2.Client) -> set[str]:
        listed = client.get(f"{url}/api/recordings")
        assert listed.status_code == 200, listed.text
        return {r["id"] for r in listed.json()["recordings"]}

    with web(rig, "olga") as olga:
        assert f'data-recording-id="{recording_id}"' in olga.get(f"{url}/recordings").text
        assert olga.get(f"{url}/recordings/{recording_id}").status_code == 200
        assert recording_id in api_ids(olga)
    with web(rig, "victor") as victor:
        assert f'data-recording-id="{recording_id}"' not in victor.get(f"{url}/recordings").text
        assert victor.get(f"{url}/recordings/{recording_id}").status_code == 403
        assert recording_id not in api_ids(victor)
    with web(rig, "sam") as sam:
        assert f'data-recording-id="{recording_id}"' in sam.get(f"{url}/recordings").text

    with session_scope(engine, write=True) as db:  # the asset moves to another owner group
        asset = db.exec(select(Asset).where(Asset.name == ASSET)).one()
        asset.owner_group = "ot-utilities"
        db.add(asset)
    with web(rig, "olga") as olga:
        assert f'data-recording-id="{recording_id}"' not in olga.get(f"{url}/recordings").text
        assert olga.get(f"{url}/recordings/{recording_id}").status_code == 403
        assert recording_id not in api_ids(olga)
