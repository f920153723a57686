"""Find a recording's folder and the public key that checks it, from what the user typed.

``conduit verify`` and ``conduit recordings export`` take a recording id (as on the Recordings
page), an unambiguous prefix of one, the folder's name (``SESSION-CHANNEL``) or prefix, or the
folder itself. An id is looked up in the database of :func:`broker.cli.local.locate` (the
``recordings`` table records each folder); without a database, the folders under
``<data_dir>/recordings`` are searched by name. The key defaults to ``keys/recording_ed25519.pub``
next to the ``recordings`` folder the recording is in (the broker keeps both in its data
directory), else in the located data directory. Nothing here reads the server's settings.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from broker.cli.ids import check_prefix, pick
from broker.cli.local import Local, data_dir, locate
from broker.runtime.errors import BrokerError

LISTING = "the Recordings page"


@dataclass(frozen=True)
class Found:
    """A recording folder, the key to check it with, and the database it was found in."""

    folder: Path
    public_key: Path
    database_url: str | None


def _from_database(local: Local, given: str) -> Path:
    from sqlmodel import col, or_, select

    from sessions.db import create_db_engine, session_scope
    from sessions.models import Recording

    wanted = given.lower()
    with session_scope(create_db_engine(local.database_url)) as db:
        rows = db.exec(
            select(Recording).where(
                or_(col(Recording.id).startswith(wanted), col(Recording.path).contains(given))
            )
        ).all()
    keyed: dict[str, Recording] = {}
    for r in rows:  # each recording once: by its id, else by its folder's name
        if r.id.lower().startswith(wanted):
            keyed[r.id] = r
        elif Path(r.path).name.startswith(given):
            keyed[Path(r.path).name] = r
    labels = ((k, f"{r.format}, {Path(r.path).name}") for k, r in keyed.items())
    row = keyed[pick("recording", given, labels, LISTING)]
    folder = Path(row.path)
    if not folder.is_dir():  # a relative data_dir is relative to the broker's directory
        folder = local.data_dir / "recordings" / folder.name
    return folder


def _from_folders(root: Path, given: str) -> Path:
    try:
        names = [p.name for p in root.iterdir() if p.is_dir()]
    except OSError as exc:
        raise BrokerError(
            f"no recording {given!r}: no database to look it up in and no folder {root} "
            "(pass the recording's folder, --database-url URL or --config FILE)",
            code="not_found",
        ) from exc
    return root / pick("recording", given, ((n, "") for n in names), f"`ls {root}`")


def _key(args: argparse.Namespace, folder: Path) -> Path:
    from broker.keys.recording import public_key_path, recording_key_dir

    given: Path | None = args.public_key
    if given is not None:
        return given
    beside = public_key_path(recording_key_dir(folder.resolve().parent.parent))
    if folder.resolve().parent.name == "recordings" and beside.is_file():
        return beside
    path = public_key_path(recording_key_dir(data_dir(args)))
    if not path.is_file():
        raise BrokerError(
            f"no public key found (looked for {path}): pass --public-key FILE",
            code="no_public_key",
        )
    return path


def find(args: argparse.Namespace) -> Found:
    """The recording named by ``args.recording`` (:class:`BrokerError` if none or several)."""
    given = str(args.recording)
    if Path(given).is_dir():
        return Found(Path(given), _key(args, Path(given)), None)
    if "/" in given:
        raise BrokerError(f"no recording folder {given}", code="not_found")
    check_prefix("recording", given)
    try:
        local: Local = locate(args)
    except BrokerError:  # no database: search the recordings folder by name
        folder = _from_folders(data_dir(args) / "recordings", given)
        return Found(folder, _key(args, folder), None)
    folder = _from_database(local, given)
    return Found(folder, _key(args, folder), local.database_url)
