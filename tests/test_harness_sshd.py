"""The sshd harness starts a real OpenSSH server that real clients can use."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.harness.components import needs
from tests.harness.sshd import RunningSshd, start_sshd

pytestmark = needs("sshd")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSshd]:
    with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _ssh(
    server: RunningSshd, key: Path, command: str, *opts: str
) -> subprocess.CompletedProcess[str]:
    argv = [
        "ssh",
        "-F", "/dev/null",
        "-i", str(key),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={server.known_hosts_path}",
        "-o", "StrictHostKeyChecking=yes",
        *opts,
        "-p", str(server.port),
        f"{server.user}@{server.host}",
        command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_server_files(sshd: RunningSshd) -> None:
    assert sshd.host == "127.0.0.1"
    assert sshd.host_public_key.startswith("ssh-ed25519 AAAA")
    assert sshd.known_hosts_path.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_public_key}\n"
    assert sshd.client_key_path.stat().st_mode & 0o777 == 0o600
    assert sshd.client_key_path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert f"AllowUsers {sshd.user}" in sshd.config_path.read_text()


def test_openssh_client_runs_command(sshd: RunningSshd) -> None:
    result = _ssh(sshd, sshd.client_key_path, "echo hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"


def test_exit_status_propagates(sshd: RunningSshd) -> None:
    assert _ssh(sshd, sshd.client_key_path, "exit 3").returncode == 3


def test_unknown_key_is_refused(sshd: RunningSshd, tmp_path: Path) -> None:
    result = _ssh(sshd, _keygen(tmp_path / "stranger"), "echo hello")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    assert result.stdout == ""


async def test_asyncssh_client(sshd: RunningSshd) -> None:
    async with asyncssh.connect(
        sshd.host,
        sshd.port,
        username=sshd.user,
        client_keys=[str(sshd.client_key_path)],
        known_hosts=str(sshd.known_hosts_path),
    ) as conn:
        who = await conn.run("id -un", check=True)
        assert who.stdout == f"{sshd.user}\n"
        failed = await conn.run("exit 3")
        assert failed.exit_status == 3


async def test_asyncssh_unknown_key_is_refused(sshd: RunningSshd) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            sshd.host,
            sshd.port,
            username=sshd.user,
            client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            known_hosts=str(sshd.known_hosts_path),
        )


def test_user_certificate_from_trusted_ca(tmp_path: Path) -> None:
    ca = _keygen(tmp_path / "ca")
    ca_pub = ca.with_suffix(".pub").read_text()
    with start_sshd(tmp_path / "sshd", trusted_user_ca_keys=[ca_pub]) as server:
        key = _keygen(tmp_path / "session")
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(ca), "-I", "session-1", "-n", server.user,
             "-V", "-1m:+5m", str(key.with_suffix(".pub"))],
            check=True,
            capture_output=True,
        )  # fmt: skip
        cert = tmp_path / "session-cert.pub"
        result = _ssh(server, key, "echo cert", "-o", f"CertificateFile={cert}")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "cert\n"
        assert "session-1" in server.log()


def test_stop_ends_open_sessions(tmp_path: Path) -> None:
    server = start_sshd(tmp_path)
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(server.client_key_path), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={server.known_hosts_path}",
        "-p", str(server.port), f"{server.user}@{server.host}", "echo up; sleep 60",
    ]  # fmt: skip
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "up\n"
        server.stop()
        server.stop()  # idempotent
        assert server.process.poll() is not None
        client.wait(timeout=30)  # the connection went with sshd (a hang would time out)
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()
