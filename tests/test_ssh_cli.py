"""``conduit ssh-cert|ssh|ssh-config|sessions`` through the real stack: the ``conduit`` CLI →
stock OpenSSH → front door → real agent → real sshd (asset-CA login)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.broker import RunningBroker
from tests.harness.cli import REPO, clean_env, run_conduit
from tests.harness.components import needs
from tests.harness.ssh_session import ASSET, SshRig

pytestmark = needs("sshd")


@pytest.fixture
def rig(make_broker: Callable[..., RunningBroker], tmp_path: Path) -> Iterator[SshRig]:
    # These tests are about the CLI, not the decision budget (tests/test_policy_*): a loaded
    # machine must not turn a slow decision into a failed login here.
    rig = SshRig.build(make_broker(policy={"budget_ms": 2000}), tmp_path)
    yield rig
    rig.close()


def cli_env(rig: SshRig, name: str) -> dict[str, str]:
    """A fresh ``XDG_CONFIG_HOME`` holding a broker token for ``name`` (signed in for real)."""
    if name not in rig.users:
        rig.vendor(name)
    token, expires = rig.broker.services.tokens.issue(rig.users[name])
    home = rig.workdir / f"xdg-{name}"
    (home / "conduit").mkdir(parents=True)
    creds = home / "conduit" / "credentials.json"
    url = rig.broker.url
    entry = {"broker": url, "access_token": token, "expires_at": expires.isoformat()}
    creds.write_text(
        json.dumps({"current": url, "brokers": {url: {**entry, "name": name, "email": ""}}})
    )
    creds.chmod(0o600)
    return clean_env(XDG_CONFIG_HOME=str(home))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ssh_cert_then_ssh_through_the_real_stack(rig: SshRig) -> None:
    env = cli_env(rig, "alice")
    rig.grant("alice")
    made = run_conduit("ssh-cert", env=env)
    assert made.returncode == 0, made.stderr
    assert "valid until" in made.stdout
    ssh_dir = Path(env["XDG_CONFIG_HOME"]) / "conduit" / "ssh"
    assert _mode(ssh_dir) == 0o700
    assert _mode(ssh_dir / "id_ed25519") == 0o600
    assert _mode(ssh_dir / "id_ed25519-cert.pub") == 0o644
    cert = (ssh_dir / "id_ed25519-cert.pub").read_text()
    assert cert.startswith("ssh-ed25519-cert-v01@openssh.com ")
    known = (ssh_dir / "known_hosts").read_text()
    assert known.startswith(f"[127.0.0.1]:{rig.front_port} ssh-ed25519 ")

    done = run_conduit("ssh", ASSET, "--login", rig.sshd.user, "--", "echo", "hi", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi\n"
    # LOGIN@ASSET form; the remote exit code is ssh's, hence conduit's
    seven = run_conduit("ssh", f"{rig.sshd.user}@{ASSET}", "--", "exit 7", env=env)
    assert seven.returncode == 7, seven.stderr

    # an expired certificate is renewed before ssh runs
    info_path = ssh_dir / "conduit.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "valid_before": int(time.time()) - 5}))
    again = run_conduit("ssh", ASSET, "--login", rig.sshd.user, "--", "whoami", env=env)
    assert again.returncode == 0 and again.stdout.strip() == rig.sshd.user, again.stderr
    assert json.loads(info_path.read_text())["valid_before"] > time.time()
    assert (ssh_dir / "id_ed25519-cert.pub").read_text() != cert


def test_ssh_needs_a_login(rig: SshRig) -> None:
    env = cli_env(rig, "alice")
    env.pop("CONDUIT_SSH_LOGIN", None)
    refused = run_conduit("ssh", ASSET, "--", "true", env=env)
    assert refused.returncode == 2
    assert f"which login on {ASSET}?" in refused.stderr
    signed_out = run_conduit("ssh-cert", env=clean_env(XDG_CONFIG_HOME=str(rig.workdir / "no")))
    assert signed_out.returncode == 2 and "conduit login" in signed_out.stderr


def test_ssh_config_snippet_works_with_stock_ssh(rig: SshRig) -> None:
    env = cli_env(rig, "alice")
    rig.grant("alice")
    printed = run_conduit("ssh-config", env=env)
    assert printed.returncode == 0, printed.stderr
    assert "Host conduit *.conduit" in printed.stdout
    assert f"    Port {rig.front_port}\n" in printed.stdout
    assert "ProxyCommand none" in printed.stdout
    written = run_conduit("ssh-config", "--write", env=env)
    assert written.returncode == 0, written.stderr
    config = Path(env["XDG_CONFIG_HOME"]) / "conduit" / "ssh" / "config"
    assert config.read_text() == printed.stdout
    done = subprocess.run(
        [
            "ssh",
            "-F",
            str(config),
            "-o",
            "BatchMode=yes",
            f"{rig.sshd.user}@{ASSET}@conduit",
            "echo",
            "via-config",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "via-config\n"


def _conduit_popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sessions_list_and_kill(rig: SshRig) -> None:
    alice, adam = cli_env(rig, "alice"), cli_env(rig, "adam")
    rig.grant("alice")
    assert run_conduit("sessions", env=adam).stdout.strip() == "no live sessions"
    proc = _conduit_popen(
        alice, "ssh", ASSET, "--login", rig.sshd.user, "--", "echo ready; sleep 60"
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        listed = run_conduit("sessions", env=adam)
        assert listed.returncode == 0, listed.stderr
        assert f"{rig.sshd.user}@{ASSET}" in listed.stdout
        rows = json.loads(run_conduit("sessions", "--json", env=alice).stdout)
        assert [(r["asset"], r["login"]) for r in rows] == [(ASSET, rig.sshd.user)]
        session_id = rows[0]["id"]
        assert session_id in listed.stdout

        refused = run_conduit("sessions", "kill", session_id, env=alice)
        assert refused.returncode == 2 and "admin" in refused.stderr

        killed = run_conduit("sessions", "kill", session_id, env=adam)
        assert killed.returncode == 0, killed.stderr
        assert f"Session {session_id} is closed" in killed.stdout
        _, err = proc.communicate(timeout=10)
        assert "conduit: session ended: terminated by an administrator" in err
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run_conduit("sessions", env=adam).stdout.strip() == "no live sessions"
    gone = run_conduit("sessions", "kill", session_id, env=adam)
    assert gone.returncode == 2 and "no live session" in gone.stderr


def test_key_files_are_not_world_readable_even_with_a_loose_umask(rig: SshRig) -> None:
    env = cli_env(rig, "alice")
    old = os.umask(0)
    try:
        made = run_conduit("ssh-cert", env=env)
    finally:
        os.umask(old)
    assert made.returncode == 0, made.stderr
    ssh_dir = Path(env["XDG_CONFIG_HOME"]) / "conduit" / "ssh"
    assert _mode(ssh_dir / "id_ed25519") == 0o600
    assert _mode(ssh_dir / "conduit.json") == 0o600


@pytest.mark.parametrize(
    "argv",
    [
        ["ssh", "maint@hist-01", "--grant", "4caaf586", "--", "uptime", "-p"],  # the grant page
        ["ssh", "maint@hist-01", "--grant=4caaf586", "uptime", "-p"],
        ["ssh", "--grant", "4caaf586", "maint@hist-01", "--", "uptime", "-p"],
    ],
)
def test_grant_may_follow_the_target_as_the_grant_page_writes_it(argv: list[str]) -> None:
    """``conduit ssh L@A --grant ID`` binds the grant; it is never part of the remote command."""
    from broker.cli import build_parser
    from broker.cli.ssh_cmd import _split_rest

    args = build_parser().parse_args(argv)
    assert _split_rest(args) == ["uptime", "-p"]
    assert args.grant == "4caaf586"
