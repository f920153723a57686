"""Helpers shared by the CLI commands: loading settings, opening the database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: `conduit whoami` must start fast
    from sqlalchemy import Engine

    from broker.runtime.settings import Settings


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $CONDUIT_CONFIG)")


def add_database_arg(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` and ``--config`` for the offline commands (see :mod:`.local`)."""
    add_config_arg(parser)
    parser.add_argument(
        "--database-url",
        help="database URL (default: $CONDUIT_DATABASE_URL, the config file's database_url, "
        "else .demo/conduit.db or var/conduit.db in the current directory)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """The full, validated server settings (``conduit serve`` only)."""
    from broker.runtime.settings import load_settings

    return load_settings(getattr(args, "config", None))


def engine_from(args: argparse.Namespace, *, create: bool = False) -> Engine:
    """The database engine for offline commands: only the database URL is read (no server
    settings are loaded or validated; see :func:`broker.cli.local.locate`)."""
    from broker.cli.local import locate
    from sessions.db import create_db_engine

    return create_db_engine(locate(args, create=create).database_url)
