"""Helpers shared by the CLI commands: loading settings, opening the database."""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy import Engine

from broker.settings import Settings, load_settings
from sessions.db import create_db_engine


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $CONDUIT_CONFIG)")


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def engine_from(args: argparse.Namespace) -> Engine:
    """The database engine for server-side commands (only the database URL is needed)."""
    return create_db_engine(settings_from(args).database_url)
