"""Verifying a recording: chain, signatures, files and manifest; names the first broken chunk."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sessions.files import is_temp_name
from sessions.recording.format import (
    CHAIN_FILE,
    CHUNK_NAME_RE,
    ENTRY_DOMAIN,
    HEX64_RE,
    MANIFEST_DOMAIN,
    MANIFEST_FILE,
    RecordingError,
    canonical_json,
    chunk_name,
    genesis,
    link,
)
from sessions.recording.keys import fingerprint


class VerifyStatus:
    OK = "ok"
    INCOMPLETE = "incomplete"  # no manifest: verified up to the last signed chain entry
    BROKEN = "broken"
    ALL: ClassVar[tuple[str, ...]] = (OK, INCOMPLETE, BROKEN)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_recording`.

    ``chunks``/``size`` count what verified (for BROKEN: the chunks before the first broken
    one). ``broken_seq``/``broken_file`` name the first broken chunk (None if the fault is not
    a chunk's, e.g. the manifest). ``last_at`` is the ``at`` of the last verified chunk;
    ``head`` the chain hash of the last verified chunk (None before the first).
    """

    status: str
    signer: str
    chunks: int = 0
    size: int = 0
    recording_id: str | None = None
    kind: str | None = None
    last_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    end_reason: str | None = None
    reason: str = ""
    broken_seq: int | None = None
    broken_file: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    head: str | None = None

    @property
    def ok(self) -> bool:
        """True unless BROKEN (an INCOMPLETE recording is trustworthy as far as it goes)."""
        return self.status != VerifyStatus.BROKEN

    def summary(self) -> str:
        """One line: ``OK: ...``, ``INCOMPLETE: ...`` or ``BROKEN: ...``."""
        if self.status == VerifyStatus.OK:
            return (
                f"OK: {self.chunks} chunks, {self.size} bytes, kind {self.kind}, "
                f"signed by {self.signer}"
            )
        if self.status == VerifyStatus.INCOMPLETE:
            upto = f" up to {self.last_at}" if self.last_at else ""
            return (
                f"INCOMPLETE: verified {self.chunks} chunks, {self.size} bytes{upto}, signed by "
                f"{self.signer}; no manifest (session did not end cleanly)"
            )
        return f"BROKEN: {self.reason}"


class _Broken(Exception):
    def __init__(self, reason: str, seq: int | None = None, file: str | None = None) -> None:
        where = f"chunk {seq} ({file})" if seq is not None and file else None
        super().__init__(f"{where}: {reason}" if where else reason)
        self.seq, self.file = seq, file


ENTRY_FIELDS: Mapping[str, type] = {
    "v": int, "recording_id": str, "kind": str, "seq": int, "file": str, "size": int,
    "sha256": str, "prev": str, "chain": str, "at": str, "signer": str, "sig": str,
}  # fmt: skip
_MANIFEST_FIELDS: Mapping[str, type] = {
    "v": int, "recording_id": str, "kind": str, "extension": str, "meta": dict, "chunks": int,
    "size": int, "final_chain": str, "started_at": str, "ended_at": str, "end_reason": str,
    "signer": str, "signature": str,
}  # fmt: skip


def parse_line(raw: bytes, fields: Mapping[str, type], what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON") from exc
    if not isinstance(obj, dict) or set(obj) != set(fields):
        raise ValueError(f"{what} does not have exactly the expected fields")
    for key, typ in fields.items():
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            raise ValueError(f"{what}: field {key!r} is not {typ.__name__}")
    return obj


def _check_sig(
    key: Ed25519PublicKey, given: str, obj: dict[str, Any], sig_field: str, domain: bytes
) -> str | None:
    unsigned = {k: v for k, v in obj.items() if k != sig_field}
    try:
        key.verify(
            base64.b64decode(obj[sig_field], validate=True), domain + canonical_json(unsigned)
        )
    except (InvalidSignature, ValueError):
        if obj["signer"] != given:
            return f"signed by {obj['signer']}, not by the given public key {given}"
        return "signature invalid"
    return None


def _sha256_file(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def chain_lines(path: Path) -> tuple[list[bytes], bool]:
    """Complete lines of chain.jsonl, and whether a partial last line was dropped."""
    lines = (path / CHAIN_FILE).read_bytes().split(b"\n")
    partial = lines.pop() != b""
    return lines, partial


def verify_recording(path: Path, public_key: Ed25519PublicKey) -> VerifyResult:
    """Check a recording directory offline against ``public_key``; never trusts its contents.

    Checks, in chunk order, each chain entry's fields, signature, seq, recording id, file name,
    link to the previous entry, chain hash, and the chunk file's size and SHA-256; then that no
    other files exist; then the manifest's signature, counts and final chain. Returns the first
    fault as BROKEN. Without a manifest the result is INCOMPLETE (a crash, or a recording still
    being written): a partial last line of chain.jsonl, one chunk file written but not yet
    chained, and an empty directory (created, chain.jsonl not yet) are then tolerated and
    noted. Temporary files of atomic writes (:func:`sessions.files.is_temp_name`: a file being
    written, or left by a crash) are never read and only noted. Safe to run while the writer
    is working: the manifest, the last file written, is looked for first.

    Raises :class:`RecordingError` (``not_found``) only if ``path`` is not a readable directory.
    """
    given = fingerprint(public_key)
    try:
        listed = set(os.listdir(path))
    except OSError as exc:
        raise RecordingError(f"reading recording {path}: {exc.strerror}", code="not_found") from exc
    notes = [f"ignored {n}: a temporary file (being written, or left by a crash)"
             for n in sorted(n for n in listed if is_temp_name(n))]  # fmt: skip
    names = {n for n in listed if not is_temp_name(n)}
    has_manifest = MANIFEST_FILE in names
    state: dict[str, Any] = {"chunks": 0, "size": 0}
    if not names:  # made by LocalStore.create a moment ago, chain.jsonl not in it yet
        notes.append("empty: nothing recorded yet")
        return VerifyResult(status=VerifyStatus.INCOMPLETE, signer=given, notes=tuple(notes))
    try:
        if CHAIN_FILE not in names:
            raise _Broken("chain.jsonl is missing")
        lines, partial = chain_lines(path)
        if partial:
            if has_manifest:
                raise _Broken("chain.jsonl ends with a truncated line")
            notes.append("ignored a partial last line of chain.jsonl (crash while appending)")
        chained, head = _verify_chain(path, public_key, given, lines, state)
        _check_files(names - chained - {CHAIN_FILE, MANIFEST_FILE}, has_manifest, len(lines), notes)
        if has_manifest:
            _verify_manifest(path, public_key, given, head, state)
    except _Broken as exc:
        return VerifyResult(
            status=VerifyStatus.BROKEN, signer=given, reason=str(exc), broken_seq=exc.seq,
            broken_file=exc.file, notes=tuple(notes), **state,
        )  # fmt: skip
    except OSError as exc:
        return VerifyResult(
            status=VerifyStatus.BROKEN, signer=given, reason=f"reading: {exc}", **state
        )
    status = VerifyStatus.OK if has_manifest else VerifyStatus.INCOMPLETE
    return VerifyResult(status=status, signer=given, notes=tuple(notes), **state)


def _verify_chain(
    path: Path, key: Ed25519PublicKey, given: str, lines: list[bytes], state: dict[str, Any]
) -> tuple[set[str], str]:
    """Verify every entry in order; return the chained file names and the chain head."""
    chained: set[str] = set()
    prev = ""
    for seq, line in enumerate(lines, 1):
        try:
            entry = parse_line(line, ENTRY_FIELDS, f"chain.jsonl line {seq}")
        except ValueError as exc:
            raise _Broken(str(exc), seq, "chain.jsonl") from exc
        file = entry["file"]
        if (problem := _check_sig(key, given, entry, "sig", ENTRY_DOMAIN)) is not None:
            raise _Broken(f"chain entry {problem}", seq, file)
        if entry["seq"] != seq:
            raise _Broken(f"chain entry out of order (it says seq {entry['seq']})", seq, file)
        if seq == 1:
            state["recording_id"], state["kind"] = entry["recording_id"], entry["kind"]
            prev = genesis(entry["recording_id"])
        elif (entry["recording_id"], entry["kind"]) != (state["recording_id"], state["kind"]):
            raise _Broken("chain entry belongs to another recording", seq, file)
        match = CHUNK_NAME_RE.fullmatch(file)
        if match is None or int(match[1]) != seq or file in chained:
            raise _Broken("chain entry names the wrong file", seq, file)
        if entry["prev"] != prev:
            raise _Broken("chain link broken (prev does not match the previous chunk)", seq, file)
        if not HEX64_RE.fullmatch(entry["sha256"]) or entry["chain"] != link(
            prev, entry["sha256"], seq
        ):
            raise _Broken("chain hash mismatch", seq, file)
        if not (path / file).is_file():
            raise _Broken("chunk file missing", seq, file)
        size, digest = _sha256_file(path / file)
        if size != entry["size"]:
            raise _Broken(f"size mismatch ({size} bytes, chain says {entry['size']})", seq, file)
        if digest != entry["sha256"]:
            raise _Broken("sha256 mismatch", seq, file)
        chained.add(file)
        prev = entry["chain"]
        state.update(chunks=seq, size=state["size"] + size, last_at=entry["at"], head=prev)
    return chained, prev


def _check_files(extra: set[str], has_manifest: bool, chained: int, notes: list[str]) -> None:
    tolerated = None if has_manifest else chunk_name(chained + 1, "")
    for name in sorted(extra):
        match = CHUNK_NAME_RE.fullmatch(name)
        seq = int(match[1]) if match else None
        if tolerated is not None and name.startswith(tolerated):
            notes.append(f"ignored {name}: written but not chained (crash during a flush)")
            tolerated = None
            continue
        raise _Broken("not in the chain" if match else f"unexpected file {name}", seq, name)


def _verify_manifest(
    path: Path, key: Ed25519PublicKey, given: str, head: str, state: dict[str, Any]
) -> None:
    try:
        m = parse_line((path / MANIFEST_FILE).read_bytes(), _MANIFEST_FIELDS, "manifest.json")
    except ValueError as exc:
        raise _Broken(str(exc)) from exc
    if (problem := _check_sig(key, given, m, "signature", MANIFEST_DOMAIN)) is not None:
        raise _Broken(f"manifest.json {problem}")
    chunks = state["chunks"]
    if chunks and (m["recording_id"], m["kind"]) != (state["recording_id"], state["kind"]):
        raise _Broken("manifest.json belongs to another recording")
    if m["chunks"] > chunks:
        seq = chunks + 1
        raise _Broken("listed in the manifest but missing from chain.jsonl", seq,
                      chunk_name(seq, m["extension"]))  # fmt: skip
    if m["chunks"] < chunks:
        seq = m["chunks"] + 1
        raise _Broken("chained after the manifest was signed", seq, chunk_name(seq, m["extension"]))
    if (m["final_chain"] != (head or genesis(m["recording_id"]))) or m["size"] != state["size"]:
        raise _Broken("manifest.json final chain or size does not match chain.jsonl")
    state.update(
        recording_id=m["recording_id"], kind=m["kind"], started_at=m["started_at"],
        ended_at=m["ended_at"], end_reason=m["end_reason"],
    )  # fmt: skip
