"""`conduit audit verify` names the first broken event; `conduit audit export` streams JSONL."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from sessions.audit import AuditLog
from sessions.db import create_db_engine, migrate
from sessions.testing import ManualClock
from tests.harness.cli import run_conduit

_conduit = run_conduit


def test_verify_and_export_then_detect_a_flipped_byte(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    log = AuditLog(engine, ManualClock(datetime(2026, 11, 27, 12, tzinfo=UTC)))
    for i in range(10):
        log.append("auth.login", actor=f"user-{i}", outcome="ok", details={"n": i})

    ok = _conduit("audit", "verify", "--database-url", url)
    assert ok.returncode == 0, ok.stderr
    assert "intact: 10 events" in ok.stdout

    export = _conduit("audit", "export", "--format", "jsonl", "--database-url", url, "--since", "3")
    lines = [json.loads(line) for line in export.stdout.splitlines()]
    assert [e["seq"] for e in lines] == list(range(4, 11))
    assert all(e["hash"] and e["prev_hash"] for e in lines)
    assert (
        lines[0]["prev_hash"]
        == json.loads(_conduit("audit", "export", "--database-url", url).stdout.splitlines()[2])[
            "hash"
        ]
    )

    with engine.begin() as conn:  # flip one byte of event 7 behind the log's back
        actor = conn.execute(text("SELECT actor FROM audit_events WHERE seq = 7")).scalar_one()
        conn.execute(
            text("UPDATE audit_events SET actor = :a WHERE seq = 7"),
            {"a": actor[:-1] + chr(ord(actor[-1]) ^ 1)},
        )
    broken = _conduit("audit", "verify", "--database-url", url)
    assert broken.returncode == 1
    assert "BROKEN at event 7" in broken.stdout


def test_readme_commands_work_offline_in_the_demo_directory(tmp_path: Path) -> None:
    """`conduit audit export --format jsonl` and `conduit audit verify`, exactly as the README
    writes them, in the directory holding `.demo/` and with no settings at all (no
    oidc.issuer): only the database is needed. Elsewhere they say, in one line, what is
    missing."""
    demo = tmp_path / "checkout"
    (demo / ".demo").mkdir(parents=True)
    engine = create_db_engine(f"sqlite:///{demo / '.demo' / 'conduit.db'}")
    migrate(engine)
    log = AuditLog(engine, ManualClock(datetime(2026, 11, 27, 12, tzinfo=UTC)))
    for i in range(3):
        log.append("auth.login", actor=f"user-{i}", outcome="ok", details={"n": i})
    empty = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def conduit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).with_name("conduit")), *args],
            env=empty,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    export = conduit("audit", "export", "--format", "jsonl", cwd=demo)
    assert export.returncode == 0, export.stderr
    assert [json.loads(line)["seq"] for line in export.stdout.splitlines()] == [1, 2, 3]
    verify = conduit("audit", "verify", cwd=demo)
    assert verify.returncode == 0, verify.stderr
    assert "intact: 3 events" in verify.stdout

    elsewhere = conduit("audit", "verify", cwd=tmp_path)
    assert elsewhere.returncode == 2 and elsewhere.stdout == ""
    assert elsewhere.stderr == (
        "conduit: no database found (no .demo/conduit.db or var/conduit.db here): pass "
        "--database-url URL or --config FILE (or set CONDUIT_DATABASE_URL)\n"
    )
    missing = conduit("audit", "verify", "--database-url", f"sqlite:///{tmp_path}/x.db", cwd=demo)
    assert missing.returncode == 2
    assert missing.stderr.startswith(
        f"conduit: no database at {tmp_path}/x.db (from --database-url)"
    )
    assert not (tmp_path / "x.db").exists()  # never created empty
