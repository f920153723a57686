"""The recording format's constants and pure helpers: chain links, chunk names, canonical JSON
(see :mod:`sessions.recording` for the format)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from policies.canonical import canonical_bytes
from sessions.errors import SessionsError

FORMAT_VERSION = 1
CHAIN_FILE = "chain.jsonl"
MANIFEST_FILE = "manifest.json"
ENTRY_DOMAIN = b"conduit-recording-chain-v1\n"
MANIFEST_DOMAIN = b"conduit-recording-manifest-v1\n"
GENESIS_DOMAIN = b"conduit-recording-v1\n"
KIND_EXTENSIONS: Mapping[str, str] = {"asciicast": "cast", "pcap": "pcap", "ops_jsonl": "jsonl"}
DEFAULT_MAX_CHUNK_BYTES = 4 << 20

RECORDING_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
EXTENSION_RE = re.compile(r"[a-z0-9]{1,16}")
CHUNK_NAME_RE = re.compile(r"chunk-(\d{6,})\.([a-z0-9]{1,16})")
HEX64_RE = re.compile(r"[0-9a-f]{64}")


class RecordingError(SessionsError):
    """A recording could not be written or read (disk full, permissions, bad key, no such dir).

    A strict-mode session must end when its writer raises this; a best-effort one may go on
    unrecorded. Never raised for a recording that is readable but fails verification: that is
    a :class:`VerifyResult` with status ``broken``.
    """

    code = "recording_failed"


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the bytes that are hashed and signed
    (:func:`policies.canonical.canonical_bytes`, the project's one canonical JSON)."""
    return canonical_bytes(obj)


def format_time(dt: datetime) -> str:
    """ISO-8601 UTC with microseconds and ``Z`` (``dt`` must be timezone-aware)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def genesis(recording_id: str) -> str:
    """The ``prev`` of chunk 1: binds the chain to its recording id."""
    return hashlib.sha256(GENESIS_DOMAIN + recording_id.encode()).hexdigest()


def link(prev: str, chunk_sha256: str, seq: int) -> str:
    """``sha256(prev || chunk_sha256 || seq)`` over the raw bytes, hex."""
    return hashlib.sha256(
        bytes.fromhex(prev) + bytes.fromhex(chunk_sha256) + seq.to_bytes(8, "big")
    ).hexdigest()


def chunk_name(seq: int, extension: str) -> str:
    return f"chunk-{seq:06d}.{extension}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
