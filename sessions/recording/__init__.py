"""Tamper-evident session recordings: chunked, hash-chained, signed; format-agnostic.

A recording is a directory (one per ``recording_id``) in a :class:`RecordingStore`::

    chain.jsonl            one signed entry per chunk, appended and fsynced at every flush
    chunk-000001.<ext>     the bytes of one flush (asciicast lines, pcap records, JSONL ...)
    chunk-000002.<ext>
    manifest.json          written once by :meth:`RecordingWriter.close`, signed

Chain entry ``n`` (a canonical JSON object on one line)::

    {v, recording_id, kind, seq: n, file, size, sha256, prev, chain, at, signer, sig}
    chain = sha256(bytes(prev) || bytes(sha256) || n as 8-byte big-endian), hex
    prev  = chain of entry n-1; for n = 1 the genesis sha256("conduit-recording-v1\\n" || id)
    sig   = Ed25519(ENTRY_DOMAIN || canonical JSON of the entry without "sig"), base64

The manifest carries ``recording_id, kind, extension, meta, chunks`` (the count), ``size``,
``final_chain, started_at, ended_at, end_reason, signer`` and ``signature`` (Ed25519 over
MANIFEST_DOMAIN || canonical JSON without "signature"). The final chain commits to every chunk,
so the manifest does not repeat the per-chunk hashes.

Guarantees: a chunk always holds whole :meth:`RecordingWriter.write` calls (so an asciicast
recording cut at any flush is still a valid ``.cast`` file). Whole files (chunks, the manifest)
are written atomically (:func:`sessions.files.write_atomic`: a temporary dot file in the same
directory, fsync, rename, fsync of the directory), so no reader ever sees one half-written;
chain.jsonl only grows, by one fsynced line per flush, after its chunk is in place. After a
crash (even SIGKILL) everything flushed verifies; :class:`FlushTimer` flushes data no later
than ``flush_interval_s`` after it was written. :func:`verify_recording` names the first broken
chunk; without a manifest it reports INCOMPLETE up to the last signed entry, and a recording
still being written verifies as INCOMPLETE (then OK once closed), never as BROKEN. Removing whole
chunks *from the end* of a recording whose manifest was also removed looks like a crash here:
such a recording only ever verifies as INCOMPLETE, never OK. The audit log tells the two apart:
a clean end is recorded there with the final chain (:mod:`sessions.recording_end`), and a
recording the log shows as ended cleanly but which lacks that end is BROKEN.

Secrets: ``meta`` is stored and signed as given; callers must not put secrets in it.
Only the standard library and ``cryptography`` are used here (no database, no web code).

Modules: :mod:`.format` (constants, chain links, canonical JSON), :mod:`.keys` (signer, public
keys), :mod:`.store` (where recordings live), :mod:`.writer` (writing, flushing),
:mod:`.verify` and :mod:`.read`. This package re-exports their public names, so callers import
from ``sessions.recording``.
"""

from __future__ import annotations

from sessions.recording.format import (
    CHAIN_FILE,
    CHUNK_NAME_RE,
    DEFAULT_MAX_CHUNK_BYTES,
    ENTRY_DOMAIN,
    EXTENSION_RE,
    FORMAT_VERSION,
    GENESIS_DOMAIN,
    HEX64_RE,
    KIND_EXTENSIONS,
    MANIFEST_DOMAIN,
    MANIFEST_FILE,
    RECORDING_ID_RE,
    RecordingError,
    b64,
    canonical_json,
    chunk_name,
    format_time,
    genesis,
    link,
)
from sessions.recording.keys import (
    Ed25519Signer,
    Signer,
    fingerprint,
    load_public_key,
    parse_public_key,
    public_key_openssh,
)
from sessions.recording.read import assemble, iter_chunks
from sessions.recording.store import LocalStore, RecordingSink, RecordingStore, check_recording_id
from sessions.recording.verify import (
    ENTRY_FIELDS,
    VerifyResult,
    VerifyStatus,
    chain_lines,
    parse_line,
    verify_recording,
)
from sessions.recording.writer import FlushTimer, RecordingWriter

__all__ = [
    "CHAIN_FILE",
    "CHUNK_NAME_RE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "ENTRY_DOMAIN",
    "ENTRY_FIELDS",
    "EXTENSION_RE",
    "FORMAT_VERSION",
    "GENESIS_DOMAIN",
    "HEX64_RE",
    "KIND_EXTENSIONS",
    "MANIFEST_DOMAIN",
    "MANIFEST_FILE",
    "RECORDING_ID_RE",
    "Ed25519Signer",
    "FlushTimer",
    "LocalStore",
    "RecordingError",
    "RecordingSink",
    "RecordingStore",
    "RecordingWriter",
    "Signer",
    "VerifyResult",
    "VerifyStatus",
    "assemble",
    "b64",
    "canonical_json",
    "chain_lines",
    "check_recording_id",
    "chunk_name",
    "fingerprint",
    "format_time",
    "genesis",
    "iter_chunks",
    "link",
    "load_public_key",
    "parse_line",
    "parse_public_key",
    "public_key_openssh",
    "verify_recording",
]
