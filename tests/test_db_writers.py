"""Concurrent SQLite writers wait for each other; none fails with "database is locked".

Threads and processes hammer one real SQLite file with read-modify-write transactions
(``session_scope(write=True)``) and Core writes (``write_connection``) while another process
holds the write lock for longer than SQLite's old 5 s busy timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from sessions.db import create_db_engine, session_scope, write_connection
from sessions.errors import StorageError

REPO = Path(__file__).resolve().parents[1]
THREADS = 3
ROUNDS = 10

_WORKER = """
import sys, threading
import sqlalchemy as sa
from sessions.db import create_db_engine, session_scope, write_connection

def hammer(engine, rounds):
    for i in range(rounds):
        if i % 2:
            with session_scope(engine, write=True) as db:  # read, then write
                conn = db.connection()
                n = conn.execute(sa.text("SELECT n FROM counter")).scalar_one()
                conn.execute(sa.text("UPDATE counter SET n = :n"), {"n": n + 1})
        else:
            with write_connection(engine) as conn:
                n = conn.execute(sa.text("SELECT n FROM counter")).scalar_one()
                conn.execute(sa.text("UPDATE counter SET n = :n"), {"n": n + 1})
        with session_scope(engine) as db:  # a reader in between never blocks anyone
            db.connection().execute(sa.text("SELECT n FROM counter")).scalar_one()

def main(url, threads, rounds):
    engine = create_db_engine(url)
    errors = []
    def run():
        try:
            hammer(engine, rounds)
        except BaseException as exc:
            errors.append(repr(exc))
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    engine.dispose()
    print("\\n".join(errors) or "ok", flush=True)
    sys.exit(1 if errors else 0)

if __name__ == "__main__":
    if sys.argv[1] == "hold":
        engine = create_db_engine(sys.argv[2])
        with write_connection(engine) as conn:
            print("holding", flush=True)
            sys.stdin.readline()  # hold the write lock until told
            conn.execute(sa.text("UPDATE counter SET n = n + 1"))
        print("released", flush=True)
    else:
        main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"""


def _python(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'writers.db'}"
    engine = create_db_engine(url)
    with write_connection(engine) as conn:
        conn.execute(sa.text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO counter VALUES (0)"))
    engine.dispose()
    return url


def test_concurrent_writers_in_threads_and_processes_all_succeed(db_url: str) -> None:
    holder = _python("hold", db_url)
    workers: list[subprocess.Popen[str]] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"  # locked
        workers = [_python("work", db_url, str(THREADS), str(ROUNDS)) for _ in range(2)]
        engine = create_db_engine(db_url)
        errors: list[str] = []

        def run() -> None:
            try:
                for _ in range(ROUNDS):
                    with session_scope(engine, write=True) as db:
                        conn = db.connection()
                        n = conn.execute(sa.text("SELECT n FROM counter")).scalar_one()
                        conn.execute(sa.text("UPDATE counter SET n = :n"), {"n": n + 1})
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=run) for _ in range(THREADS)]
        for t in threads:
            t.start()
        # Everyone is now queued behind the holder. Hold on for longer than the old 5 s
        # busy timeout: a writer that gave up after 5 s would fail here.
        for t in threads:
            t.join(6.0)
        assert all(t.is_alive() for t in threads), "writers went ahead of the lock holder"
        out, err = holder.communicate("go\n", timeout=60)
        assert holder.returncode == 0 and out == "released\n", err
        for t in threads:
            t.join(120)
        for proc in workers:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, out + err
        assert errors == []
        with session_scope(engine) as db:
            total = db.connection().execute(sa.text("SELECT n FROM counter")).scalar_one()
        engine.dispose()
        # Every read-modify-write counted: writes were serialised, none lost, none failed.
        assert total == 1 + THREADS * ROUNDS + 2 * THREADS * ROUNDS
    finally:
        for proc in [holder, *workers]:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_a_write_scope_inside_a_write_scope_is_refused_at_once(db_url: str) -> None:
    """It would wait for itself (on SQLite's lock: until the busy timeout, then fail)."""
    engine = create_db_engine(db_url)
    try:
        with (
            session_scope(engine, write=True),
            pytest.raises(StorageError, match="already open"),
            write_connection(engine),
        ):
            pass
        with session_scope(engine, write=True) as db:  # the lock was released
            db.connection().execute(sa.text("UPDATE counter SET n = n + 1"))
        with session_scope(engine) as reader, write_connection(engine) as conn:
            reader.connection().execute(sa.text("SELECT n FROM counter")).scalar_one()
            conn.execute(sa.text("UPDATE counter SET n = n + 1"))  # a reader does not block
    finally:
        engine.dispose()
