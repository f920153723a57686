"""Reading a recording's bytes back in chain order (no verification)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sessions.recording.format import CHAIN_FILE, CHUNK_NAME_RE, RecordingError
from sessions.recording.verify import ENTRY_FIELDS, chain_lines, parse_line


def iter_chunks(path: Path) -> Iterator[bytes]:
    """The chunks' bytes in chain order (complete chain lines only); does not verify.

    Raises :class:`RecordingError` (``not_found``) if chain.jsonl or a chained file is
    unreadable, ``invalid`` if chain.jsonl is malformed. Verify first for trusted output.
    """
    try:
        lines, _ = chain_lines(path)
    except OSError as exc:
        raise RecordingError(
            f"reading {path / CHAIN_FILE}: {exc.strerror}", code="not_found"
        ) from exc
    for n, line in enumerate(lines, 1):
        try:
            file = parse_line(line, ENTRY_FIELDS, f"chain.jsonl line {n}")["file"]
        except ValueError as exc:
            raise RecordingError(f"reading {path}: {exc}", code="invalid") from exc
        if not CHUNK_NAME_RE.fullmatch(file):
            raise RecordingError(f"reading {path}: bad chunk name {file!r}", code="invalid")
        try:
            yield (path / file).read_bytes()
        except OSError as exc:
            raise RecordingError(
                f"reading {path / file}: {exc.strerror}", code="not_found"
            ) from exc


def assemble(path: Path) -> bytes:
    """The recording's content: its chunks concatenated in chain order (see :func:`iter_chunks`)."""
    return b"".join(iter_chunks(path))
