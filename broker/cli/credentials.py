"""The CLI's stored broker token: ``$XDG_CONFIG_HOME/conduit/credentials.json``, mode 0600.

The file holds one entry per broker URL and which broker is current. It is written
atomically (temp file + rename) and its directory is created 0700. A file with wider
permissions is refused rather than trusted.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.runtime.errors import BrokerError
from sessions.clock import SystemClock


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "conduit"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@dataclass(frozen=True)
class StoredToken:
    broker: str
    access_token: str
    expires_at: str
    name: str
    email: str

    def expired(self, now: datetime | None = None) -> bool:
        return datetime.fromisoformat(self.expires_at) <= (now or SystemClock().now())


def _read() -> dict[str, Any]:
    path = credentials_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {"current": None, "brokers": {}}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BrokerError(
            f"{path} is readable by other users; refusing to use it (chmod 600 or log in again)",
            code="credentials_insecure",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BrokerError(
            f"{path} is unreadable; run `conduit login` again", code="credentials_bad"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("brokers"), dict):
        raise BrokerError(f"{path} is malformed; run `conduit login` again", code="credentials_bad")
    return data


def _write(data: dict[str, Any]) -> None:
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".credentials.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, credentials_path())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(token: StoredToken) -> Path:
    data = _read() if credentials_path().exists() else {"current": None, "brokers": {}}
    data["brokers"][token.broker] = asdict(token)
    data["current"] = token.broker
    _write(data)
    return credentials_path()


def load(broker: str | None = None) -> StoredToken | None:
    data = _read()
    key = broker or data.get("current")
    entry = data["brokers"].get(key) if isinstance(key, str) else None
    if not isinstance(entry, dict):
        return None
    try:
        return StoredToken(**entry)
    except TypeError:
        return None


def forget(broker: str | None = None) -> StoredToken | None:
    data = _read()
    key = broker or data.get("current")
    entry = data["brokers"].pop(key, None) if isinstance(key, str) else None
    if data.get("current") == key:
        data["current"] = next(iter(data["brokers"]), None)
    _write(data)
    return StoredToken(**entry) if isinstance(entry, dict) else None
