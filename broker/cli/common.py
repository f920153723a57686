"""Helpers shared by the CLI commands: loading settings, opening the database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: `conduit whoami` must start fast
    from sqlalchemy import Engine

    from broker.settings import Settings


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $CONDUIT_CONFIG)")


def add_database_arg(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` lets offline tools (audit verify/export) run without a full config."""
    add_config_arg(parser)
    parser.add_argument("--database-url", help="database URL (default: from the settings)")


def settings_from(args: argparse.Namespace) -> Settings:
    from broker.settings import load_settings

    return load_settings(getattr(args, "config", None))


def engine_from(args: argparse.Namespace) -> Engine:
    """The database engine for server-side commands (only the database URL is needed)."""
    from sessions.db import create_db_engine

    url = getattr(args, "database_url", None) or settings_from(args).database_url
    return create_db_engine(url)
