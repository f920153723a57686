"""Where recordings live: the :class:`RecordingStore` protocol and the local directory store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol

from sessions.files import fsync_dir, is_temp_name, write_all, write_atomic
from sessions.recording.format import CHAIN_FILE, RECORDING_ID_RE, RecordingError


class RecordingSink(Protocol):
    """The write side of one recording. Both methods are durable when they return."""

    def put(self, name: str, data: bytes) -> None:
        """Create file ``name`` (must not exist) with ``data``, atomically: readers see the
        whole file or none. Raises :class:`OSError`."""
        ...

    def append(self, name: str, data: bytes) -> None:
        """Append ``data`` to file ``name`` (created if missing); raises :class:`OSError`."""
        ...


class RecordingStore(Protocol):
    """Where recordings live. Local disk now (:class:`LocalStore`); object storage later."""

    def create(self, recording_id: str) -> RecordingSink:
        """A new, empty recording; :class:`RecordingError` if it exists or cannot be made."""
        ...

    def open(self, recording_id: str, name: str) -> BinaryIO:
        """Read one file of a recording; :class:`RecordingError` (``not_found``) if absent."""
        ...

    def list_files(self, recording_id: str) -> list[str]:
        """The file names of a recording, sorted."""
        ...


def check_recording_id(recording_id: str) -> str:
    """Return ``recording_id`` if it is a safe single path component, else raise."""
    if not RECORDING_ID_RE.fullmatch(recording_id) or ".." in recording_id:
        raise RecordingError(
            f"recording id {recording_id!r} is not [A-Za-z0-9_.-]{{1,128}}",
            code="invalid_recording_id",
        )
    return recording_id


class _LocalSink:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise RecordingError(f"recording file name {name!r} is invalid", code="invalid")
        return self.directory / name

    def put(self, name: str, data: bytes) -> None:
        # Atomic: a live verify or playback sees the whole file or no file, never a part.
        write_atomic(self._path(name), data, mode=0o600, replace=False)

    def append(self, name: str, data: bytes) -> None:
        fd = os.open(self._path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalStore:
    """Recordings as directories under ``root`` (directories 0700, files 0600)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, recording_id: str) -> Path:
        """The local directory of a recording (for :func:`verify_recording` / :func:`assemble`)."""
        return self.root / check_recording_id(recording_id)

    def create(self, recording_id: str) -> RecordingSink:
        directory = self.path(recording_id)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(f"creating recording store {self.root}: {exc}") from exc
        try:
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
            sink = _LocalSink(directory)
            sink.append(CHAIN_FILE, b"")
            fsync_dir(directory)
            fsync_dir(self.root)
        except FileExistsError as exc:
            raise RecordingError(
                f"creating recording {recording_id}: it already exists", code="recording_exists"
            ) from exc
        except OSError as exc:
            raise RecordingError(f"creating recording {recording_id}: {exc}") from exc
        return sink

    def open(self, recording_id: str, name: str) -> BinaryIO:
        try:
            return _LocalSink(self.path(recording_id))._path(name).open("rb")
        except OSError as exc:
            raise RecordingError(
                f"opening {name} of recording {recording_id}: {exc.strerror}", code="not_found"
            ) from exc

    def list_files(self, recording_id: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path(recording_id)) if not is_temp_name(n))
        except OSError as exc:
            raise RecordingError(
                f"listing recording {recording_id}: {exc.strerror}", code="not_found"
            ) from exc
