"""Strict recording fails closed when the disk is full (issue 13, item 7).

The broker's data directory is a small tmpfs mounted by the fixture; the test fills it to the
brim with a file, the way a full recordings volume looks. Under ``record: strict`` (the asset
is ``high`` criticality) a running session is ended, and every NEW session is refused before
a byte of output reaches the vendor — with the reason on the vendor's stderr, a
``recording.failed`` audit event, a broker log line, an audited ``recording.storage.failing``
alert and ``/healthz`` readiness 503. Once space is freed, the next strict session is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from sqlmodel import select

from broker.runtime.session_recorder import RecorderFactory
from sessions.db import session_scope
from sessions.models import Asset, MaintenanceSession
from sessions.recording import Ed25519Signer, RecordingError
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.cli import run_conduit
from tests.harness.components import component_missing, needs
from tests.harness.plc import PlcServer
from tests.harness.ports import free_port
from tests.harness.ssh_session import ASSET, PLC_SETTINGS, SshRig
from tests.harness.wait import wait_until

TMPFS_SIZE = "8m"


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        component_missing("tmpfs", f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/var`` (the brokers' data_dir) on an 8 MiB tmpfs; unmounted afterwards."""
    path = tmp_path / "var"
    _mount_tmpfs(path)
    yield path
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write one file until the filesystem is full to the last byte; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space left on device") as full:
        (directory / "one-more").write_bytes(b"x")
    assert full.value.errno == errno.ENOSPC
    return filler


def criticality(rig: SshRig, asset_name: str, value: str) -> None:
    """``high``: the default policy obliges strict recording; ``medium`` (level 3): best effort."""
    with session_scope(rig.broker.services.engine, write=True) as db:
        asset = db.exec(select(Asset).where(Asset.name == asset_name)).one()
        asset.criticality = value
    rig.broker.refresh_policy_data()


@pytest.fixture
def rig(
    small_disk: Path,
    make_broker: Callable[..., RunningBroker],
    tmp_path: Path,
    plc: PlcServer,
) -> Iterator[SshRig]:
    broker = make_broker(recording={"min_free_mb": 0, "probe_interval_s": 0.2})
    assert broker.services.settings.data_dir == small_disk
    rig = SshRig.build(
        broker, tmp_path / "rig", extra_endpoints=[("127.0.0.1", plc.port, "modbus")]
    )
    rig.add_asset("plc-lab", plc.port, "modbus", settings=PLC_SETTINGS)
    criticality(rig, ASSET, "high")
    criticality(rig, "plc-lab", "high")
    rig.vendor("alice")
    yield rig
    rig.close()


def _health(rig: SshRig) -> httpx2.Response:
    return httpx2.get(f"{rig.broker.url}/healthz", timeout=10)


@needs("sshd")
def test_strict_sessions_fail_closed_on_a_full_disk(
    rig: SshRig, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="conduit.recording")
    rig.grant()
    assert _health(rig).status_code == 200

    # A running strict session when the disk fills: ended, with the reason.
    running = subprocess.Popen(
        [*rig.ssh_argv(), "echo ready; while true; do echo tick; sleep 0.05; done"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert running.stdout is not None and running.stdout.readline().strip() == "ready"
    filler = fill(small_disk)
    try:
        _, err = running.communicate(timeout=20)
    finally:
        running.kill()
    # The reason names the cause; where it surfaced (a flush or the writer) may differ.
    assert "conduit: session ended: recording failed (" in err
    assert "No space left on device" in err and "strict recording is required" in err

    # Three NEW strict sessions: each refused before any output, with the reason.
    for n in range(3):
        done = rig.ssh(f"echo must-not-run-{n}", timeout=30)
        assert done.returncode != 0, done.stdout
        assert "must-not-run" not in done.stdout
        assert "conduit: session refused: recording could not start (" in done.stderr
        assert "strict recording is required" in done.stderr

    failed = audit_events(rig.broker, "recording.failed")
    assert [e["details"]["while"] for e in failed] == [
        "writing",
        "starting",
        "starting",
        "starting",
    ]
    assert all(e["outcome"] == "error" and e["details"]["strict"] for e in failed)
    wait_until(
        lambda: len(audit_events(rig.broker, "session.ended")) == 4, "4 session ends", timeout=15
    )
    ended = audit_events(rig.broker, "session.ended")
    assert all("strict recording is required" in e["details"]["reason"] for e in ended)
    # Cut while running: error; refused at the start: refused. Never "ok".
    assert [(e["outcome"], e["details"]["reason_code"]) for e in ended] == [
        ("error", "recording_failed"),
        *[("refused", "recording_refused")] * 3,
    ]
    cut = ended[0]["details"]["recordings"]
    assert [r["final_chain"] for r in cut] == ["incomplete"]
    assert "No space left on device" in cut[0]["why"]
    for refused in ended[1:]:
        [entry] = refused["details"]["recordings"]
        assert entry["final_chain"] == "incomplete" and entry["why"].startswith("could not start")
    with session_scope(rig.broker.services.engine) as db:
        states = {s.state for s in db.exec(select(MaintenanceSession)).all()}
    assert states == {"failed"}  # the session rows agree with the audit log
    listed = httpx2.get(
        f"{rig.broker.url}/api/recordings",
        headers={"Authorization": f"Bearer {rig.sign_in('adam')}"},
        timeout=30,
    ).json()["recordings"]
    assert [(r["session_id"], r["session_state"]) for r in listed] == [
        (ended[0]["subject"].removeprefix("session:"), "failed")
    ]
    assert [e["subject"] for e in failed] == [e["subject"] for e in ended]  # one per session
    logged = [r.getMessage() for r in caplog.records if r.name == "conduit.recording"]
    assert sum("could not start" in m for m in logged) == 3
    assert any("failed while writing" in m for m in logged)

    # The broker raised the alert and is not ready.
    wait_until(
        lambda: bool(audit_events(rig.broker, "recording.storage.failing")), "alert", timeout=15
    )
    [alert] = audit_events(rig.broker, "recording.storage.failing")
    assert alert["outcome"] == "error"
    health = _health(rig)
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert health.json()["checks"]["recording_storage"].startswith("failing: ")
    assert str(small_disk) not in health.text  # public: no paths

    # Space freed: the probe notices, and a strict session runs and is recorded.
    filler.unlink()
    wait_until(lambda: _health(rig).status_code == 200, "storage healthy again", timeout=15)
    wait_until(
        lambda: bool(audit_events(rig.broker, "recording.storage.recovered")),
        "recovered",
        timeout=15,
    )
    done = rig.ssh("echo recorded-again")
    assert done.returncode == 0 and "recorded-again" in done.stdout, done.stderr
    wait_until(
        lambda: bool(audit_events(rig.broker, "recording.closed")), "a clean end", timeout=15
    )
    [closed] = audit_events(rig.broker, "recording.closed")
    recording = small_disk / "recordings" / str(closed["details"]["recording"])
    pub = small_disk / "keys" / "recording_ed25519.pub"
    verified = run_conduit("verify", str(recording), "--public-key", str(pub))
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout


@needs("sshd")
def test_a_strict_recording_that_cannot_be_completed_ends_the_session(
    rig: SshRig, small_disk: Path
) -> None:
    """The disk fills while a short command runs: when it exits, its recording cannot be
    completed, so the vendor gets the reason and a failed exit instead of a clean one."""
    rig.grant()
    recordings = small_disk / "recordings"
    proc = subprocess.Popen(
        [*rig.ssh_argv(), "echo ready; read line; echo bye"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    # "ready" is on disk (its chunk flushed within a second); then the disk fills.
    wait_until(
        lambda: any(recordings.glob("*/chunk-000002.cast")), "the first output chunk", timeout=15
    )
    fill(small_disk)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "conduit: session ended: recording failed (" in err
    assert "No space left on device" in err
    wait_until(
        lambda: bool(audit_events(rig.broker, "recording.failed")), "recording.failed", timeout=15
    )
    [failed] = audit_events(rig.broker, "recording.failed")
    assert failed["details"]["strict"] and failed["details"]["while"] in ("writing", "closing")
    assert not audit_events(rig.broker, "recording.closed")  # no clean end is claimed


@needs("sshd")
def test_best_effort_goes_on_unrecorded_and_audited(rig: SshRig, small_disk: Path) -> None:
    criticality(rig, ASSET, "medium")  # Purdue level 3, medium: record best_effort
    rig.grant()
    fill(small_disk)
    done = rig.ssh("echo unrecorded-but-allowed")
    assert done.returncode == 0 and "unrecorded-but-allowed" in done.stdout, done.stderr
    wait_until(
        lambda: bool(audit_events(rig.broker, "recording.failed")), "recording.failed", timeout=15
    )
    [failed] = audit_events(rig.broker, "recording.failed")
    assert failed["details"]["strict"] is False and failed["outcome"] == "error"


@needs("sshd")
def test_a_strict_forward_on_a_full_disk_never_reaches_the_plc(
    rig: SshRig, small_disk: Path, plc: PlcServer
) -> None:
    """``ssh -L`` (what ``conduit forward`` runs): the connection is refused with the reason,
    the session ends, and not one Modbus request reaches the PLC."""
    rig.grant(asset="plc-lab", operation_class="read_only")
    fill(small_disk)
    local = free_port()
    proc = subprocess.Popen(
        [*rig.ssh_argv("alice", "-N", "-L", f"127.0.0.1:{local}:localhost:{plc.port}",
                       login="forward", asset="plc-lab")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            ss = subprocess.run(
                ["ss", "-ltnH", f"( sport = :{local} )"], capture_output=True, text=True
            )
            return bool(ss.stdout.strip())

        wait_until(listening, "ssh -L listening", timeout=15)
        with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
            conn.sendall(bytes.fromhex("000100000006010300000001"))  # FC3 read, 1 register
            conn.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(100) == b""  # closed without an answer
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "conduit: recording could not start (" in err
    assert "strict recording is required" in err
    assert plc.arrivals == []
    wait_until(lambda: bool(audit_events(rig.broker, "session.ended")), "session.ended", timeout=15)
    [ended] = audit_events(rig.broker, "session.ended")
    assert "strict recording is required" in str(ended["details"]["reason"])
    assert (ended["outcome"], ended["details"]["reason_code"]) == ("refused", "recording_refused")
    [entry] = ended["details"]["recordings"]
    assert (entry["kind"], entry["final_chain"]) == ("pcap", "incomplete")
    [failed] = audit_events(rig.broker, "recording.failed")
    assert failed["details"]["strict"] and failed["details"]["while"] == "starting"


def test_a_recording_that_cannot_write_its_header_is_refused(small_disk: Path) -> None:
    """Without the storage probe, the first chunk written at start-up still refuses a strict
    recording on a full disk (creating the empty directory and chain file succeeds there)."""
    fill(small_disk)

    class Rows:
        def add_recording(self, *a: object, **k: object) -> str:
            raise AssertionError("no database row for a recording that did not start")

    class Audit:
        def __init__(self) -> None:
            self.events: list[dict[str, object]] = []

        def append(self, kind: str, **kw: object) -> None:
            self.events.append({"kind": kind, **kw})

    audit = Audit()
    factory = RecorderFactory(
        small_disk / "recordings",
        Ed25519Signer.generate(),
        ManualClock(),
        Rows(),  # type: ignore[arg-type]
        audit,  # type: ignore[arg-type]
        record_input=False,
    )
    with pytest.raises(RecordingError, match=r"could not start \(No space left on device\)"):
        asyncio.run(factory("s1", 1, 80, 24, "t", strict=True, on_failure=lambda why: None))
    assert [e["kind"] for e in audit.events] == ["recording.failed"]
    assert (
        asyncio.run(factory("s2", 1, 80, 24, "t", strict=False, on_failure=lambda why: None))
        is None
    )
