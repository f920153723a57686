"""Whole files written atomically and durably: a reader sees all of a file or none of it.

:func:`write_atomic` (and :func:`atomic_output`, for streams) writes a temporary file in the
target's directory (named by :func:`temp_name`, so readers can recognise and skip it), fsyncs
it, renames it into place and fsyncs the directory. A crash leaves either the old state or the
new one, plus at worst a stray temporary file; a concurrent reader never sees a half-written
file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".tmp-"


def temp_name(name: str) -> str:
    """The temporary name :func:`write_atomic` uses for ``name`` (a dot file, random suffix)."""
    return f".{name}{TEMP_MARK}{secrets.token_hex(6)}"


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`temp_name` (a file being written, or left by a crash)."""
    return name.startswith(".") and TEMP_MARK in name


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextmanager
def atomic_output(path: Path, *, mode: int = 0o600, replace: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path``, atomically and durably, when the block succeeds.

    Permissions are exactly ``mode``. ``replace=True`` replaces an existing file (readers see
    the old or the new content); ``replace=False`` creates the file only if absent and raises
    :class:`FileExistsError` otherwise, leaving it untouched. If the block raises, ``path`` is
    unchanged. The temporary file is removed on every path; :class:`OSError` propagates.
    """
    tmp = path.with_name(temp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the mode given to open is masked by the umask
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-if-absent: EEXIST if another file won
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # after os.replace it is already gone
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = True) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_output` (same arguments, same errors)."""
    with atomic_output(path, mode=mode, replace=replace) as fh:
        fh.write(data)
