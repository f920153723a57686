"""SSH sessions end to end: stock OpenSSH → front door → agent → real sshd (asset CA login)."""

from __future__ import annotations

import asyncio
import contextlib
import html
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import httpx2
import pytest
from sqlmodel import select

from sessions.asciicast import BINARY_EVENT, output_bytes
from sessions.db import session_scope
from sessions.models import Asset, Grant, Recording
from sessions.recording import assemble
from tests.harness.broker import RunningBroker, audit_events, form_values, web_login
from tests.harness.cli import run_conduit
from tests.harness.components import needs
from tests.harness.ports import free_port
from tests.harness.ssh_session import SshRig
from tests.harness.wait import TIMEOUT_S, wait_until
from tests.test_recording_asciinema import asciinema_cat

pytestmark = needs("sshd")


def test_exec_with_exit_code_through_agent(rig: SshRig) -> None:
    rig.grant()
    done = rig.ssh("echo hello-from-asset; whoami; exit 7")
    assert done.stdout.split() == ["hello-from-asset", rig.sshd.user], done.stderr
    assert done.returncode == 7
    started = audit_events(rig.broker, "session.started")
    assert started and started[-1]["details"]["asset"] == "lab-ssh"
    ended = ended_event(rig, "asset_exit_nonzero", "error")  # the command failed
    assert ended["details"]["exit"] == 7


def test_a_clean_exit_ends_ok_and_names_its_recording(rig: SshRig) -> None:
    rig.grant()
    done = rig.ssh("echo fine")
    assert done.returncode == 0, done.stderr
    ended = ended_event(rig, "client_disconnected", "ok")
    wait_until(lambda: bool(audit_events(rig.broker, "recording.closed")), "recording.closed")
    [closed] = audit_events(rig.broker, "recording.closed")
    [named] = ended["details"]["recordings"]
    assert named == {
        "id": closed["details"]["recording"],
        "kind": "asciicast",
        "final_chain": closed["details"]["final_chain"],
    }
    assert ended["seq"] > closed["seq"]  # the session's end comes after its evidence closed


def _start(rig: SshRig, command: str = "echo ready; sleep 60") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*rig.ssh_argv(), command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _asset_connections(rig: SshRig) -> int:
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{rig.sshd.port} )"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return len(out.stdout.splitlines())


def _ended(
    rig: SshRig, proc: subprocess.Popen[str], reason: str, code: str, outcome: str
) -> dict[str, Any]:
    """The vendor's ssh ends with ``reason``, the asset-side connection closes and
    ``session.ended`` carries ``outcome`` and the reason ``code``; returns that event.

    How fast (the watchdog's 0.25 s tick) is measured by bench/latency_bounds.py, not here.
    """
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    assert f"conduit: session ended: {reason}" in err
    wait_until(lambda: _asset_connections(rig) == 0, "the asset-side SSH connection to close")
    return ended_event(rig, code, outcome)


def ended_event(rig: SshRig, code: str, outcome: str) -> dict[str, Any]:
    """The one ``session.ended`` event (waited for): its reason code and outcome checked."""
    wait_until(lambda: bool(audit_events(rig.broker, "session.ended")), "session.ended")
    [event] = audit_events(rig.broker, "session.ended")
    assert (event["details"]["reason_code"], event["outcome"]) == (code, outcome), event
    return event


def test_revoke_ends_the_session(rig: SshRig) -> None:
    grant_id = rig.grant()
    proc = _start(rig)
    assert _asset_connections(rig) == 1
    _token(rig, "adam")
    rig.broker.services.access.revoke(grant_id, rig.users["adam"], "vendor done")
    _ended(rig, proc, "grant revoked", "grant_revoked", "deny")


def test_leaving_after_a_refused_forward_ends_as_refused_by_authorization(rig: SshRig) -> None:
    """The session runs (a command); a forward the grant does not cover is refused; the
    vendor leaves next: that refusal is why the session ended (deny), not "ok"."""
    rig.grant()
    local = free_port()
    proc = subprocess.Popen(
        [*rig.ssh_argv("alice", "-L", f"127.0.0.1:{local}:127.0.0.1:9"), "echo ready; read x"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    with socket.create_connection(("127.0.0.1", local), timeout=TIMEOUT_S) as conn:
        conn.settimeout(TIMEOUT_S)
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(10) == b""  # refused: closed without a byte
    wait_until(lambda: bool(audit_events(rig.broker, "session.denied")), "the refusal's audit")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0
    ended = ended_event(rig, "authorization_refused", "deny")
    assert ended["details"]["reason"].startswith("access denied")


def test_broker_shutdown_ends_the_session_as_an_error(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    broker = make_broker()
    rig = SshRig.build(broker, tmp_path)
    try:
        rig.vendor("alice")
        rig.grant()
        proc = _start(rig)
        broker.stop()
        proc.communicate(timeout=TIMEOUT_S)
        ended = ended_event(rig, "broker_shutdown", "error")
        [recording] = ended["details"]["recordings"]
        assert recording["kind"] == "asciicast" and recording["final_chain"] != "incomplete"
    finally:
        rig.close()


def _lockout(rig: SshRig, on: bool, reason: str) -> dict[str, object]:
    """Adam switches the vendor lockout through the HTTP API, as the CLI does."""
    answer = httpx2.post(
        f"{rig.broker.url}/api/lockout",
        json={"on": on, "reason": reason},
        headers={"Authorization": f"Bearer {_token(rig, 'adam')}"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_lockout_suspends_vendor_sessions_and_off_resumes_the_grant(rig: SshRig) -> None:
    grant_id = rig.grant()
    proc = _start(rig)
    assert _lockout(rig, True, "incident")["suspended_grants"] == 1
    _ended(rig, proc, "emergency lockout: vendor access is suspended", "lockout", "deny")
    refused = rig.ssh("true")
    assert refused.returncode == 1 and "lockout" in refused.stderr
    assert _lockout(rig, False, "all clear")["resumed_grants"] == 1
    assert rig.grant_state(grant_id) == "active"  # the same grant, still inside its window
    again = rig.ssh("echo back")
    assert again.returncode == 0 and again.stdout.strip() == "back", again.stderr


def test_grant_that_expires_during_the_lockout_stays_expired(rig: SshRig) -> None:
    grant_id = rig.grant(minutes=8 / 60)  # ends 8 s from now
    _lockout(rig, True, "incident")
    wait_until(lambda: rig.grant_state(grant_id) == "expired", "the grant's window to end")
    assert _lockout(rig, False, "all clear")["resumed_grants"] == 0
    refused = rig.ssh("true")
    assert refused.returncode == 1 and "conduit: access denied" in refused.stderr
    assert rig.grant_state(grant_id) == "expired"


def test_grant_expiry_ends_the_session(rig: SshRig) -> None:
    rig.grant(minutes=8 / 60)  # ends 8 s from now (request, approval and activation first)
    proc = _start(rig)
    with session_scope(rig.broker.services.engine) as db:
        ends = db.exec(select(Grant)).one().ends_at
    _ended(rig, proc, "grant", "grant_expired", "ok")
    assert rig.broker.services.clock.now() >= ends  # it was the expiry, not something earlier


def test_admin_kill_ends_the_session(rig: SshRig) -> None:
    rig.grant()
    proc = _start(rig)
    [live] = rig.broker.services.live.list()
    admin_token = _token(rig, "adam")
    resp = httpx2.post(
        f"{rig.broker.url}/api/sessions/{live.id}/kill",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text
    _ended(rig, proc, "terminated by an administrator", "admin_kill", "deny")
    vendor = httpx2.post(
        f"{rig.broker.url}/api/sessions/{live.id}/kill",
        headers={"Authorization": f"Bearer {_token(rig, 'alice')}"},
        timeout=TIMEOUT_S,
    )
    assert vendor.status_code == 403


def _token(rig: SshRig, name: str) -> str:
    if name not in rig.users:
        rig.vendor(name)
    token, _ = rig.broker.services.tokens.issue(rig.users[name])
    return token


def _loop(rig: SshRig) -> asyncio.AbstractEventLoop:
    loop = rig.broker.services.gateway.loop if rig.broker.services.gateway else None
    assert loop is not None
    return loop


def test_refusals_are_clear_and_audited(rig: SshRig) -> None:
    no_grant = rig.ssh("true")
    assert no_grant.returncode == 1
    assert "conduit: access denied" in no_grant.stderr and "grant" in no_grant.stderr
    other_asset = rig.ssh("true", asset="hist-01")
    assert "conduit: access denied" in other_asset.stderr
    bad_name = subprocess.run(
        [*rig.ssh_argv()[:-1], "no-asset-here@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad_name.returncode != 0 and "LOGIN@ASSET" in bad_name.stderr
    short = rig.grant(minutes=5 / 60)  # a grant whose window ends 5 s from now
    wait_until(lambda: rig.grant_state(short) == "expired", "the grant to expire")
    expired = rig.ssh("true")
    assert expired.returncode == 1 and "grant" in expired.stderr
    # A login the plant declares but the asset does not have: the asset itself refuses it.
    rig.declare("lab-ssh", {"logins": [rig.sshd.user, "ghost"]})
    rig.grant(login="ghost")
    wrong_login = rig.ssh("true", login="ghost")
    assert wrong_login.returncode == 1
    assert "conduit: access denied: lab-ssh refused the login 'ghost'" in wrong_login.stderr
    denials = audit_events(rig.broker, "policy.decision")
    assert any(e["outcome"] == "deny" and e["subject"] == "lab-ssh" for e in denials)
    wait_until(
        lambda: any(
            "refused the login" in " ".join(e["details"]["reasons"])
            for e in audit_events(rig.broker, "session.denied")
        ),
        "the refused login in the audit log",
    )


def test_policy_denial_reaches_the_vendor(rig: SshRig) -> None:
    rig.grant()
    _token(rig, "adam")
    rig.broker.services.access.set_lockout(True, rig.users["adam"], "incident 42")
    rig.broker.refresh_policy_data()
    denied = rig.ssh("true")
    assert denied.returncode == 1
    assert "conduit: access denied" in denied.stderr and "lockout" in denied.stderr


def test_pinned_host_key_mismatch_is_refused(rig: SshRig) -> None:
    rig.grant()
    assert rig.ssh("true").returncode == 0  # first use pins the asset's host key
    with session_scope(rig.broker.services.engine, write=True) as db:
        asset = db.exec(select(Asset).where(Asset.name == "lab-ssh")).one()
        assert asset.labels["ssh_host_key"] == rig.sshd.host_public_key.strip()
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        asset.labels = {**asset.labels, "ssh_host_key": other.strip()}
    refused = rig.ssh("true")
    assert refused.returncode == 1 and "does not match the pinned one" in refused.stderr


def _recording_dirs(rig: SshRig) -> list[Path]:
    root = rig.broker.services.settings.data_dir / "recordings"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _the_finished_recording(rig: SshRig) -> Path:
    """The session's one recording, once its signed manifest is written."""
    wait_until(
        lambda: (dirs := _recording_dirs(rig)) and (dirs[-1] / "manifest.json").exists(),
        "the recording's manifest",
    )
    [recording] = _recording_dirs(rig)
    return recording


def test_session_is_recorded_playable_and_verifiable(rig: SshRig, tmp_path: Path) -> None:
    rig.grant()
    done = rig.ssh("echo recorded-line-1; echo recorded-line-2")
    assert done.returncode == 0, done.stderr
    recording = _the_finished_recording(rig)
    public_key = rig.broker.services.settings.data_dir / "keys" / "recording_ed25519.pub"
    verified = run_conduit("verify", str(recording), "--public-key", str(public_key))
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout
    cast = tmp_path / "session.cast"
    cast.write_bytes(assemble(recording))
    played = asciinema_cat(cast, tmp_path)
    assert b"recorded-line-1" in played and b"recorded-line-2" in played
    with session_scope(rig.broker.services.engine) as db:
        row = db.exec(select(Recording)).one()
    assert row.manifest_path and row.size_bytes > 0

    # One flipped byte: verify fails and names the chunk.
    chunk = sorted(recording.glob("chunk-*"))[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    broken = run_conduit("verify", str(recording), "--public-key", str(public_key))
    assert broken.returncode == 1 and f"chunk 1 ({chunk.name})" in broken.stdout


def test_verify_checks_the_recording_against_the_sessions_end(rig: SshRig) -> None:
    """``session.ended`` names the recording's final chain hash; ``conduit verify`` checks it
    and a changed last chunk is BROKEN with the audit event named."""
    rig.grant()
    done = rig.ssh("echo evidence-line")
    assert done.returncode == 0, done.stderr
    ended = ended_event(rig, "client_disconnected", "ok")
    [named] = ended["details"]["recordings"]
    settings = rig.broker.services.settings
    recording = settings.data_dir / "recordings" / named["id"]
    database = ["--database-url", settings.database_url]
    event = f"session.ended (event {ended['seq']}"
    intact = run_conduit("verify", str(recording), *database)
    assert intact.returncode == 0 and intact.stdout.startswith("OK"), intact.stdout
    assert f"the final chain hash matches {event}" in intact.stdout

    last = sorted(recording.glob("chunk-*"))[-1]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    last.write_bytes(bytes(data))
    broken = run_conduit("verify", str(recording), *database)
    assert broken.returncode == 1 and broken.stdout.startswith("BROKEN"), broken.stdout
    assert event in broken.stdout and named["final_chain"][:16] in broken.stdout

    # The recordings page's verify says the same to a security reviewer.
    with session_scope(rig.broker.services.engine) as db:
        row = db.exec(select(Recording)).one()
    with httpx2.Client(timeout=TIMEOUT_S) as sam:
        web_login(sam, rig.broker.url, "sam", "sam-demo-pw")
        page = sam.get(f"{rig.broker.url}/recordings/{row.id}")
        csrf = form_values(page.text)["csrf"]
        verified = sam.post(f"{rig.broker.url}/recordings/{row.id}/verify", data={"csrf": csrf})
        assert verified.status_code == 303
        shown = sam.get(rig.broker.url + verified.headers["location"])
    assert "BROKEN" in shown.text and html.escape(event) in shown.text


def test_binary_exec_output_is_recorded_exactly(rig: SshRig, tmp_path: Path) -> None:
    """An exec without a PTY may print any bytes (``cat fw.bin``): the recording holds them
    exactly (base64 "b" events), the text around them stays playable."""
    rig.grant()
    command = (
        "echo before-binary; head -c 70000 /dev/urandom; printf '\\000\\377\\303'; "
        "echo; echo after-binary; printf '\\303\\251 end'"
    )
    done = subprocess.run([*rig.ssh_argv(), command], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"before-binary\n") and done.stdout.endswith("é end".encode())
    recording = _the_finished_recording(rig)
    cast_bytes = assemble(recording)
    lines = cast_bytes.splitlines()
    assert output_bytes(lines) == done.stdout  # every byte the vendor saw, in order
    assert any(f', "{BINARY_EVENT}", '.encode() in line or f',"{BINARY_EVENT}",'.encode() in line
               for line in lines[1:])  # fmt: skip
    public_key = rig.broker.services.settings.data_dir / "keys" / "recording_ed25519.pub"
    verified = run_conduit("verify", str(recording), "--public-key", str(public_key))
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout
    cast = tmp_path / "binary.cast"
    cast.write_bytes(cast_bytes)
    played = asciinema_cat(cast, tmp_path)  # the text parts play; "b" events are skipped
    assert b"before-binary" in played and b"after-binary" in played


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone): read from the asset's side, /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


LOOP = "echo $$; echo ready; while true; do sleep 0.2; done"
STUBBORN = "trap '' TERM; echo $$; echo ready; while true; do sleep 0.2; done"


@pytest.mark.parametrize(
    ("command", "signals"), [(LOOP, ["TERM"]), (STUBBORN, ["TERM", "KILL"])], ids=["term", "kill"]
)
@pytest.mark.parametrize("how", ["revoke", "lockout", "expiry", "disconnect"])
def test_ending_a_session_ends_the_commands_it_started_on_the_asset(
    rig: SshRig, how: str, command: str, signals: list[str]
) -> None:
    """A command without a PTY (a ``while true`` loop) outlives a closed channel on OpenSSH; the
    broker signals it (TERM, then KILL after a grace period) before closing, and audits that."""
    grant_id = rig.grant(minutes=10 / 60) if how == "expiry" else rig.grant()
    proc = subprocess.Popen(
        [*rig.ssh_argv(), command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    assert _alive(pid)
    _token(rig, "adam")
    if how == "revoke":
        rig.broker.services.access.revoke(grant_id, rig.users["adam"], "vendor done")
    elif how == "lockout":
        rig.broker.services.access.set_lockout(True, rig.users["adam"], "incident")
    if how == "disconnect":  # the vendor's ssh is killed: nobody is told, the asset is cleaned
        proc.kill()
        proc.communicate()
        ended_event(rig, "connection_lost", "error")
    else:
        reason = {"revoke": "grant revoked", "lockout": "emergency lockout"}.get(how, "grant")
        code = {"revoke": "grant_revoked", "lockout": "lockout"}.get(how, "grant_expired")
        _ended(rig, proc, reason, code, "ok" if how == "expiry" else "deny")
    wait_until(lambda: not _alive(pid), "the command on the asset to end")
    wait_until(
        lambda: (
            [e["details"]["signal"] for e in audit_events(rig.broker, "session.signal")] == signals
        ),
        f"the audit events of the signals {signals}",
    )
