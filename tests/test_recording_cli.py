"""``conduit verify`` exit codes (0 OK / 0 INCOMPLETE / 1 BROKEN / 2 unreadable) and export."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

from broker.keys.recording import load_recording_signer, public_key_path
from sessions.recording import LocalStore, RecordingWriter
from sessions.testing import ManualClock
from tests.harness.cli import run_conduit


def test_verify_and_export_exit_codes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    signer = load_recording_signer(data_dir / "keys")
    pub = public_key_path(data_dir / "keys")
    clock = ManualClock(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    store = LocalStore(tmp_path / "recordings")
    for rid, close in (("done", True), ("crashed", False)):
        writer = RecordingWriter(store, rid, kind="asciicast", signer=signer, clock=clock)
        writer.write(b'{"version": 2, "width": 80, "height": 24}\n')
        for i in range(3):
            writer.write(b'[%d.0, "o", "line %d\\r\\n"]\n' % (i, i))
            writer.flush()
            clock.advance(1)
        if close:
            writer.close("client_closed")
    done, crashed = store.path("done"), store.path("crashed")

    ok = run_conduit("verify", str(done), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(
        f"OK: 3 chunks, {sum(p.stat().st_size for p in done.glob('chunk-*'))} bytes"
    )
    assert f"kind asciicast, signed by {signer.fingerprint}" in ok.stdout

    # the default key comes from the settings' data_dir
    env_ok = run_conduit(
        "verify",
        str(crashed),
        env={
            "PATH": "/usr/bin:/bin",
            "CONDUIT_DATA_DIR": str(data_dir),
            "CONDUIT_OIDC__ISSUER": "http://127.0.0.1:1/",
        },
    )
    assert env_ok.returncode == 0, env_ok.stderr
    assert env_ok.stdout.startswith(
        "INCOMPLETE: verified 3 chunks, 117 bytes up to 2026-01-02T03:04:10.000000Z"
    ), env_ok.stdout
    assert "no manifest (session did not end cleanly)" in env_ok.stdout

    out = tmp_path / "done.cast"
    export = run_conduit(
        "recordings", "export", str(done), "-o", str(out), "--public-key", str(pub)
    )
    assert export.returncode == 0, export.stderr
    assert out.read_bytes().startswith(b'{"version": 2')
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = run_conduit("recordings", "export", str(done), "-o", str(out), "--public-key", str(pub))
    assert again.returncode == 2 and "already exists" in again.stderr

    chunk = done / "chunk-000002.cast"
    chunk.write_bytes(chunk.read_bytes().replace(b"line 1", b"line X"))
    broken = run_conduit("verify", str(done), "--public-key", str(pub))
    assert broken.returncode == 1
    assert broken.stdout.strip() == "BROKEN: chunk 2 (chunk-000002.cast): sha256 mismatch"
    refused = run_conduit(
        "recordings", "export", str(done), "-o", str(tmp_path / "x.cast"), "--public-key", str(pub)
    )
    assert refused.returncode == 1 and not (tmp_path / "x.cast").exists()

    missing = run_conduit("verify", str(tmp_path / "nope"), "--public-key", str(pub))
    assert missing.returncode == 2 and "no recording folder" in missing.stderr
    bad_key = run_conduit("verify", str(done), "--public-key", str(tmp_path / "nokey"))
    assert bad_key.returncode == 2 and "reading public key" in bad_key.stderr


def test_verify_and_export_by_id_prefix_find_the_folder_and_key(tmp_path: Path) -> None:
    """Without a database, a recording is found by (a prefix of) its folder's name under
    ``<data_dir>/recordings``, with the key beside it; an ambiguous prefix names both."""
    data_dir = tmp_path / "data"
    signer = load_recording_signer(data_dir / "keys")
    clock = ManualClock(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    store = LocalStore(data_dir / "recordings")
    for rid in ("abc123-0", "abc456-0"):
        writer = RecordingWriter(store, rid, kind="asciicast", signer=signer, clock=clock)
        writer.write(b'{"version": 2, "width": 80, "height": 24}\n')
        writer.close("client_closed")
    env = {"PATH": "/usr/bin:/bin", "CONDUIT_DATA_DIR": str(data_dir)}

    ok = run_conduit("verify", "abc1", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: 1 chunks") and signer.fingerprint in ok.stdout

    out = tmp_path / "one.cast"
    export = run_conduit("recordings", "export", "abc4", "-o", str(out), env=env)
    assert export.returncode == 0, export.stderr
    assert out.read_bytes().startswith(b'{"version": 2')

    both = run_conduit("verify", "abc", env=env)
    assert both.returncode == 2 and both.stdout == ""
    assert both.stderr.count("\n") == 1
    assert "'abc' is ambiguous: 2 recordings start with it" in both.stderr
    assert "abc123-0" in both.stderr and "abc456-0" in both.stderr

    none = run_conduit("verify", "zzz", env=env)
    assert none.returncode == 2
    assert none.stderr.startswith("conduit: no recording with an id starting with 'zzz'")
