"""A recording's clean end is in the audit log: a truncated recording is BROKEN, a crash is not.

Removing a recording's last chunk, its manifest and its last chain line used to look exactly
like a broker crash (INCOMPLETE, exit 0). The broker now audits every clean end
(``recording.closed`` with the final chain hash), and ``conduit verify`` checks the recording
against it: from the database, or offline from an ``audit export`` file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx2
from sqlmodel import select

from sessions.audit import AuditLog
from sessions.db import create_db_engine, migrate, session_scope
from sessions.models import Recording
from sessions.recording import (
    CHAIN_FILE,
    MANIFEST_FILE,
    Ed25519Signer,
    LocalStore,
    RecordingWriter,
    VerifyStatus,
    public_key_openssh,
    verify_recording,
)
from sessions.recording_end import (
    RECORDING_CLOSED,
    AuditedEnd,
    check_end,
    closed_details,
    subject,
)
from sessions.testing import ManualClock
from tests.harness.broker import audit_events, form_values, web_login
from tests.harness.cli import run_conduit
from tests.harness.components import needs
from tests.harness.ssh_session import SshRig
from tests.harness.wait import wait_until

T0 = datetime(2026, 5, 4, 10, tzinfo=UTC)


def _truncate(recording: Path) -> None:
    """Remove the last chunk, the manifest and the last chain line: what a crash leaves."""
    (recording / MANIFEST_FILE).unlink()
    lines = (recording / CHAIN_FILE).read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    (recording / last["file"]).unlink()
    (recording / CHAIN_FILE).write_bytes(b"".join(lines[:-1]))


def _recording(tmp_path: Path, signer: Ed25519Signer, *, close: bool) -> RecordingWriter:
    writer = RecordingWriter(
        LocalStore(tmp_path), "s1-1", kind="asciicast", signer=signer, clock=ManualClock(T0)
    )
    for line in (b'{"version": 2}\n', b'[0.1, "o", "a"]\n', b'[0.2, "o", "b"]\n'):
        writer.write(line)
        writer.flush()
    if close:
        writer.close("channel closed")
    return writer


def test_check_end_tells_truncation_from_a_crash(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    writer = _recording(tmp_path, signer, close=True)
    path = tmp_path / "s1-1"
    end = AuditedEnd(42, writer.chunks, writer.size, writer.chain_head)
    intact = check_end(verify_recording(path, signer.public_key), [end], source="the audit log")
    assert intact.status == VerifyStatus.OK
    assert "the clean end recorded in event 42 matches" in intact.notes[-1]

    _truncate(path)
    alone = verify_recording(path, signer.public_key)
    assert alone.status == VerifyStatus.INCOMPLETE and alone.chunks == 2
    cut = check_end(alone, [end], source="the audit log")
    assert cut.status == VerifyStatus.BROKEN and not cut.ok
    assert cut.summary().startswith("BROKEN: truncated: the audit log (event 42) records a clean")
    assert "3 chunks" in cut.reason and "has 2 verified chunks and no manifest" in cut.reason

    # A crash: no clean end in the audit log, so INCOMPLETE stays what it is.
    other = tmp_path / "crash"
    other.mkdir()
    _recording(other, signer, close=False)
    crashed = check_end(verify_recording(other / "s1-1", signer.public_key), [], source="log")
    assert crashed.status == VerifyStatus.INCOMPLETE and crashed.ok
    assert "records no clean end" in crashed.notes[-1]


def test_conduit_verify_consults_the_audit_log(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    pub = tmp_path / "recording_ed25519.pub"
    pub.write_text(public_key_openssh(signer.public_key) + "\n")
    writer = _recording(tmp_path, signer, close=True)
    url = f"sqlite:///{tmp_path / 'conduit.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    AuditLog(engine, ManualClock(T0)).append(
        RECORDING_CLOSED,
        actor="system",
        outcome="ok",
        subject=subject("s1-1"),
        details=closed_details(
            session_id="s1", recording_id="s1-1", kind="asciicast", chunks=writer.chunks,
            size=writer.size, final_chain=writer.chain_head, end_reason="channel closed",
        ),
    )  # fmt: skip
    export = tmp_path / "audit.jsonl"
    export.write_text(run_conduit("audit", "export", "--database-url", url).stdout)
    recording = str(tmp_path / "s1-1")
    _truncate(tmp_path / "s1-1")

    alone = run_conduit("verify", recording, "--public-key", str(pub))
    assert alone.returncode == 0 and alone.stdout.startswith("INCOMPLETE"), alone.stdout
    assert "audit log not consulted" in alone.stdout
    for source in (["--database-url", url], ["--audit-log", str(export)]):
        cut = run_conduit("verify", recording, "--public-key", str(pub), *source)
        assert cut.returncode == 1, cut.stdout + cut.stderr
        assert cut.stdout.startswith("BROKEN: truncated: the audit log")
        refused = run_conduit(
            "recordings", "export", recording, "-o", str(tmp_path / "out.cast"),
            "--public-key", str(pub), *source,
        )  # fmt: skip
        assert refused.returncode == 1 and not (tmp_path / "out.cast").exists()

    # An audit export that is itself tampered with is not used to vouch for anything.
    lines = export.read_text().splitlines()
    record = json.loads(lines[0]) | {"actor": "someone-else"}
    export.write_text(json.dumps(record) + "\n")
    bad = run_conduit("verify", recording, "--public-key", str(pub), "--audit-log", str(export))
    assert bad.returncode == 2 and "is not intact" in bad.stderr


@needs("sshd")
def test_a_real_session_end_is_audited_and_truncation_is_broken(
    rig: SshRig, tmp_path: Path
) -> None:
    rig.grant()
    done = rig.ssh("echo first-line; echo last-line")
    assert done.returncode == 0, done.stderr
    services = rig.broker.services
    closed: list[dict[str, object]] = []

    def clean_end() -> bool:
        closed[:] = audit_events(rig.broker, RECORDING_CLOSED)
        return bool(closed)

    wait_until(clean_end, "the recording.closed event", timeout=15)
    [event] = closed
    with session_scope(services.engine) as db:
        row = db.exec(select(Recording)).one()
    recording = Path(row.path)
    manifest = json.loads((recording / MANIFEST_FILE).read_text())
    details = event["details"]
    assert isinstance(details, dict)
    assert details["final_chain"] == manifest["final_chain"] == row.chain_head
    assert details["chunks"] == manifest["chunks"] >= 2
    assert event["subject"] == subject(recording.name)

    pub = str(services.settings.data_dir / "keys" / "recording_ed25519.pub")
    url = services.settings.database_url
    ok = run_conduit("verify", str(recording), "--public-key", pub, "--database-url", url)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout
    # By id (prefix), as on the Recordings page: the folder and the key are found from the
    # database alone, and its audit log is consulted.
    by_id = run_conduit("verify", row.id[:8], "--database-url", url)
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout == ok.stdout
    cast = tmp_path / "session.cast"
    exported = run_conduit(
        "recordings", "export", row.id[:8], "-o", str(cast), "--database-url", url
    )
    assert exported.returncode == 0, exported.stderr
    assert b"last-line" in cast.read_bytes()
    _truncate(recording)
    cut = run_conduit("verify", str(recording), "--public-key", pub, "--database-url", url)
    assert cut.returncode == 1, cut.stdout
    assert cut.stdout.startswith("BROKEN: truncated:")

    # The recordings page's "verify" checks against the audit log too.
    with httpx2.Client() as sam:
        web_login(sam, rig.broker.url, "sam", "sam-demo-pw")
        page = sam.get(f"{rig.broker.url}/recordings/{row.id}")
        csrf = form_values(page.text)["csrf"]
        posted = sam.post(f"{rig.broker.url}/recordings/{row.id}/verify", data={"csrf": csrf})
        shown = sam.get(rig.broker.url + posted.headers["location"])
    assert "BROKEN: truncated: the audit log (event" in shown.text
