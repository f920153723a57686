"""scp and sftp through the front door: real clients, real sshd, checksums and transfer audit."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.broker import RunningBroker, audit_events
from tests.harness.components import needs
from tests.harness.ssh_session import SshRig
from tests.harness.wait import TIMEOUT_S

pytestmark = needs("sshd")


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path)
    rig.vendor("alice")
    rig.grant()
    yield rig
    rig.close()


@pytest.fixture
def remote_dir(rig: SshRig) -> Iterator[Path]:
    """A directory on the asset the test user may write (the asset is this machine)."""
    path = Path(f"/tmp/conduit-xfer-{os.getpid()}-{time.monotonic_ns()}")
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _opts(rig: SshRig) -> list[str]:
    argv = rig.ssh_argv()
    return [a for a in argv[1:-1] if a not in ("-p", str(rig.front_port))]


def _target(rig: SshRig) -> str:
    return f"{rig.sshd.user}@lab-ssh@127.0.0.1"


def _transfers(rig: SshRig, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        events = [e["details"] for e in audit_events(rig.broker, "session.file_transfer")]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp-mode", "scp-legacy"])
def test_scp_upload_and_download_with_checksums(
    rig: SshRig, remote_dir: Path, tmp_path: Path, legacy: bool
) -> None:
    local = tmp_path / "firmware.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    target = _target(rig)
    base = ["scp", *(["-O"] if legacy else []), "-P", str(rig.front_port), *_opts(rig)]
    up = subprocess.run(
        [*base, str(local), f"{target}:{remote_dir}/uploaded.bin"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert hashlib.sha256((remote_dir / "uploaded.bin").read_bytes()).hexdigest() == digest
    back = tmp_path / "back.bin"
    down = subprocess.run(
        [*base, f"{target}:{remote_dir}/uploaded.bin", str(back)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest

    events = _transfers(rig, 2)
    assert [(e["direction"], e["sha256"], e["size"], e["complete"]) for e in events] == [
        ("upload", digest, local.stat().st_size, True),
        ("download", digest, local.stat().st_size, True),
    ]
    # Legacy scp names only the file (base name) in-band; the remote path is the command's.
    assert all(f"{e['path']} {e.get('remote')}".count("uploaded.bin") for e in events)
    assert {e["protocol"] for e in events} == {"scp" if legacy else "sftp"}


def test_sftp_batch_upload_and_download(rig: SshRig, remote_dir: Path, tmp_path: Path) -> None:
    files = {"small.txt": b"hello\n", "empty.cfg": b"", "blob.bin": os.urandom(700_000)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    batch = tmp_path / "batch"
    lines = [f"put {tmp_path / n} {remote_dir}/{n}" for n in files]
    lines += [f"get {remote_dir}/blob.bin {tmp_path / 'blob.back'}"]
    batch.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        ["sftp", "-b", str(batch), "-P", str(rig.front_port), *_opts(rig), _target(rig)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, data in files.items():
        assert (remote_dir / name).read_bytes() == data
    assert (tmp_path / "blob.back").read_bytes() == files["blob.bin"]
    events = _transfers(rig, 4)
    uploads = {Path(str(e["path"])).name: e for e in events if e["direction"] == "upload"}
    assert {n: uploads[n]["sha256"] for n in files} == {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items()
    }
    [download] = [e for e in events if e["direction"] == "download"]
    assert download["sha256"] == hashlib.sha256(files["blob.bin"]).hexdigest()
