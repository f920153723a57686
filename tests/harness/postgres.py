"""A real PostgreSQL server on 127.0.0.1 for integration tests.

``start_postgres`` runs Debian's ``initdb`` and ``pg_ctl`` to create and start a throw-away
cluster: trust authentication for TCP connections from 127.0.0.1 only (no other hba lines),
``listen_addresses='127.0.0.1'``, its Unix socket in a private directory, ``fsync=off``.
PostgreSQL refuses to run as root, so under root the binaries run as the ``postgres`` user
(``runuser -u postgres --``) on a data directory owned by it.  When that user cannot reach
``workdir`` (pytest's temp dirs are mode 0700 under root) or the socket path would be too long,
the cluster lives in a fresh directory under the system temp dir instead, removed by ``stop()``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from tests.harness.ports import free_port

DB_NAME = "conduit"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30
_MAX_SOCKET_DIR = 80  # the Unix socket path (dir + "/.s.PGSQL.NNNNN") must fit in 107 bytes


class PostgresError(RuntimeError):
    """The PostgreSQL test server could not be created or started."""


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        reverse=True,
    )
    return candidates[0] if candidates else None


def postgres_available() -> str | None:
    """Return why a test PostgreSQL server cannot be started here, or None when it can."""
    for binary in ("initdb", "pg_ctl"):
        if _find_binary(binary) is None:
            return f"{binary} not found on PATH or in /usr/lib/postgresql/*/bin (Debian postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root but runuser is missing (needed to run PostgreSQL as postgres)"
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root but there is no 'postgres' user to run PostgreSQL as"
    return None


@dataclass
class RunningPostgres:
    """A started test cluster.  ``url`` points at database ``conduit`` as the superuser."""

    url: str
    datadir: Path
    port: int
    _pg_ctl: str = field(repr=False)
    _as_postgres: bool = field(repr=False)
    _remove_on_stop: Path | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def database_url(self, name: str) -> str:
        """The SQLAlchemy URL of database ``name`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its SQLAlchemy URL."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def stop(self) -> None:
        """Stop the server immediately (``pg_ctl -m immediate``); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _run(
            [self._pg_ctl, "-D", str(self.datadir), "-m", "immediate", "-w", "stop"],
            as_postgres=self._as_postgres,
            check=False,
        )
        if self._remove_on_stop is not None:
            shutil.rmtree(self._remove_on_stop, ignore_errors=True)


def start_postgres(workdir: Path, port: int | None = None) -> RunningPostgres:
    """Create a cluster under ``workdir`` (see the module docstring), start it, create ``conduit``.

    Raises :class:`PostgresError` with the server log when initdb or start-up fails.  A port
    collision on a port chosen here is retried with another free port.
    """
    reason = postgres_available()
    if reason is not None:
        raise PostgresError(reason)
    initdb, pg_ctl = _find_binary("initdb"), _find_binary("pg_ctl")
    if initdb is None or pg_ctl is None:  # unreachable after postgres_available(); for mypy
        raise PostgresError("initdb/pg_ctl vanished")
    as_postgres = os.geteuid() == 0
    base, remove_on_stop = _cluster_base(Path(workdir), as_postgres)
    datadir, sockdir, logfile = base / "data", base / "sock", base / "postgres.log"
    try:
        _initdb(initdb, datadir, sockdir, as_postgres)
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            _write_runtime_config(datadir, chosen, sockdir)
            result = _run(
                [
                    pg_ctl,
                    "-D",
                    str(datadir),
                    "-l",
                    str(logfile),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                as_postgres=as_postgres,
                check=False,
            )
            if result.returncode == 0:
                break
            if attempt == attempts - 1:
                raise PostgresError(f"pg_ctl start failed:\n{_tail(logfile)}\n{result.stdout}")
        server = RunningPostgres(
            url=f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{chosen}/{DB_NAME}",
            datadir=datadir,
            port=chosen,
            _pg_ctl=pg_ctl,
            _as_postgres=as_postgres,
            _remove_on_stop=remove_on_stop,
        )
    except BaseException:
        if remove_on_stop is not None:
            shutil.rmtree(remove_on_stop, ignore_errors=True)
        raise
    try:
        server.create_database(DB_NAME)
    except BaseException:
        server.stop()
        raise
    return server


def _cluster_base(workdir: Path, as_postgres: bool) -> tuple[Path, Path | None]:
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir / "postgres"
    fits = len(str(base / "sock")) <= _MAX_SOCKET_DIR
    if fits and (not as_postgres or _postgres_can_enter(workdir)):
        base.mkdir(exist_ok=True)
        remove: Path | None = None
    else:
        base = Path(tempfile.mkdtemp(prefix="conduit-pg-"))
        remove = base
    (base / "sock").mkdir(exist_ok=True)
    if as_postgres:
        entry = pwd.getpwnam(SUPERUSER)
        for path in (base, base / "sock"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return base, remove


def _postgres_can_enter(directory: Path) -> bool:
    result = subprocess.run(
        ["runuser", "-u", SUPERUSER, "--", "test", "-x", str(directory)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _initdb(initdb: str, datadir: Path, sockdir: Path, as_postgres: bool) -> None:
    result = _run(
        [
            initdb,
            "-D",
            str(datadir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ],
        as_postgres=as_postgres,
        check=False,
    )
    if result.returncode != 0:
        raise PostgresError(f"initdb failed:\n{result.stdout}")
    # Why rewrite pg_hba.conf: initdb's default also trusts ::1 and local sockets.
    (datadir / "pg_hba.conf").write_text(
        "# conduit test cluster: loopback IPv4 only\nhost all all 127.0.0.1/32 trust\n"
    )
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# conduit test cluster\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sockdir}'\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "max_connections = 200\n"
            "include_if_exists = 'conduit_runtime.conf'\n"
        )


def _write_runtime_config(datadir: Path, port: int, sockdir: Path) -> None:
    path = datadir / "conduit_runtime.conf"
    path.write_text(f"port = {port}\n")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SUPERUSER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(argv: list[str], *, as_postgres: bool, check: bool) -> subprocess.CompletedProcess[str]:
    if as_postgres:
        argv = ["runuser", "-u", SUPERUSER, "--", *argv]
    cwd = "/" if as_postgres else None  # the caller's cwd may be unreadable for postgres
    return subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        check=check,
        cwd=cwd,
        timeout=START_TIMEOUT_S + 30,
    )


def _tail(logfile: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(logfile.read_text(errors="replace").splitlines()[-lines:])
    return "(no server log)"
