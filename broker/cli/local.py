"""Where a deployment's database and data directory are, for the offline commands.

``audit verify|export``, ``db``, ``verify`` and ``recordings export`` need only these two
settings, so they never load (or validate) the server's settings: a missing ``oidc.issuer`` is
the server's problem, not theirs. Sources, first found wins for each value:

1. ``--database-url URL`` on the command line;
2. ``$CONDUIT_DATABASE_URL`` / ``$CONDUIT_DATA_DIR``;
3. ``database_url`` / ``data_dir`` in the TOML file of ``--config`` or ``$CONDUIT_CONFIG``;
4. with none of these, the demo's state in the current directory (``.demo/conduit.db`` and
   ``.demo/var``, as made by ``conduit demo``), else the settings' defaults (``var/conduit.db``
   and ``var``) if that database exists.

A SQLite database that does not exist is an error (raised as :class:`BrokerError`) rather than
silently created empty, except for ``conduit db upgrade`` (``create=True``), which still needs
the database named (it never creates one in whatever directory it happens to run in).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.runtime.errors import BrokerError, SettingsError

DEMO_DIR = Path(".demo")
DEFAULT_DATA_DIR = Path("var")
HINT = "pass --database-url URL or --config FILE (or set CONDUIT_DATABASE_URL)"


@dataclass(frozen=True)
class Local:
    """The database URL and data directory, and where they came from (for messages)."""

    database_url: str
    data_dir: Path
    source: str


def _config_file(args: argparse.Namespace) -> Path | None:
    given: Path | None = getattr(args, "config", None)
    env = os.environ.get("CONDUIT_CONFIG")
    return given or (Path(env) if env else None)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc


def _sqlite_file(url: str) -> Path | None:
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            name = url[len(prefix) :].split("?", 1)[0]
            return Path(name) if name and name != ":memory:" else None
    return None


def _fallback() -> Local | None:
    demo_db = DEMO_DIR / "conduit.db"
    if demo_db.is_file():
        return Local(f"sqlite:///{demo_db.resolve()}", (DEMO_DIR / "var").resolve(), "the demo")
    default_db = DEFAULT_DATA_DIR / "conduit.db"
    if default_db.is_file():
        return Local(f"sqlite:///{default_db.resolve()}", DEFAULT_DATA_DIR, "the default")
    return None


def data_dir(args: argparse.Namespace) -> Path:
    """The data directory (for the recording key and recordings); no database needed."""
    config = _config_file(args)
    data: dict[str, Any] = _read_config(config) if config is not None else {}
    given = os.environ.get("CONDUIT_DATA_DIR") or data.get("data_dir")
    if given:
        return Path(str(given))
    found = _fallback()
    return found.data_dir if found is not None else DEFAULT_DATA_DIR


def locate(args: argparse.Namespace, *, create: bool = False) -> Local:
    """The database and data directory for ``args``; :class:`BrokerError` if there is no
    database (``create``: a SQLite file that does not exist yet is fine, its directory not)."""
    config = _config_file(args)
    data: dict[str, Any] = _read_config(config) if config is not None else {}
    url = getattr(args, "database_url", None) or os.environ.get("CONDUIT_DATABASE_URL")
    source = "--database-url" if getattr(args, "database_url", None) else "CONDUIT_DATABASE_URL"
    if not url and isinstance(data.get("database_url"), str):
        url, source = data["database_url"], f"config file {config}"
    if not url:
        found = _fallback()
        if found is None:
            raise BrokerError(
                "no database found (no .demo/conduit.db or var/conduit.db here): " + HINT,
                code="no_database",
            )
        url, source = found.database_url, found.source
    local = Local(url, data_dir(args), source)
    sqlite = _sqlite_file(local.database_url)
    if sqlite is not None and not sqlite.is_file():
        if not create:
            raise BrokerError(
                f"no database at {sqlite} (from {source}): {HINT}", code="no_database"
            )
        if not sqlite.parent.is_dir():
            raise BrokerError(
                f"cannot create the database {sqlite} (from {source}): "
                f"its directory {sqlite.parent} does not exist",
                code="no_database",
            )
    return local
