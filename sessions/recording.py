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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sessions.clock import Clock
from sessions.errors import SessionsError
from sessions.files import fsync_dir, is_temp_name, write_all, write_atomic

FORMAT_VERSION = 1
CHAIN_FILE = "chain.jsonl"
MANIFEST_FILE = "manifest.json"
ENTRY_DOMAIN = b"conduit-recording-chain-v1\n"
MANIFEST_DOMAIN = b"conduit-recording-manifest-v1\n"
GENESIS_DOMAIN = b"conduit-recording-v1\n"
KIND_EXTENSIONS: Mapping[str, str] = {"asciicast": "cast", "pcap": "pcap", "ops_jsonl": "jsonl"}
DEFAULT_MAX_CHUNK_BYTES = 4 << 20

_RECORDING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_EXTENSION = re.compile(r"[a-z0-9]{1,16}")
_CHUNK_NAME = re.compile(r"chunk-(\d{6,})\.([a-z0-9]{1,16})")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RecordingError(SessionsError):
    """A recording could not be written or read (disk full, permissions, bad key, no such dir).

    A strict-mode session must end when its writer raises this; a best-effort one may go on
    unrecorded. Never raised for a recording that is readable but fails verification: that is
    a :class:`VerifyResult` with status ``broken``.
    """

    code = "recording_failed"


# --------------------------------------------------------------------------- helpers


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the bytes that are hashed and signed."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- keys


def public_key_openssh(key: Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA...`` (no comment)."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def fingerprint(key: Ed25519PublicKey) -> str:
    """OpenSSH-style ``SHA256:<base64, unpadded>`` of the public key blob."""
    blob = base64.b64decode(public_key_openssh(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from OpenSSH (``ssh-ed25519 AAAA... [comment]``) or PEM text.

    Raises :class:`RecordingError` (``bad_public_key``) for anything else, including other
    key types and private keys.
    """
    text = data.strip()
    try:
        if text.startswith(b"ssh-ed25519 "):
            key: object = serialization.load_ssh_public_key(b" ".join(text.split()[:2]))
        elif text.startswith(b"-----BEGIN PUBLIC KEY-----"):
            key = serialization.load_pem_public_key(text)
        else:
            raise ValueError("neither an OpenSSH nor a PEM public key")
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RecordingError(f"reading public key: {exc}", code="bad_public_key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise RecordingError("reading public key: not an Ed25519 key", code="bad_public_key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """:func:`parse_public_key` on a file; unreadable files raise ``bad_public_key`` too."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(
            f"reading public key {path}: {exc.strerror}", code="bad_public_key"
        ) from exc
    return parse_public_key(data)


class Signer(Protocol):
    """Signs chain entries and manifests; the recording stores ``fingerprint`` as ``signer``."""

    @property
    def public_key(self) -> Ed25519PublicKey: ...

    @property
    def fingerprint(self) -> str: ...

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data``."""
        ...


class Ed25519Signer:
    """:class:`Signer` over an in-memory Ed25519 private key (from ``cryptography``)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key()
        self._fingerprint = fingerprint(self._public)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path) -> Ed25519Signer:
        """Load an unencrypted OpenSSH or PKCS#8 PEM Ed25519 private key.

        Raises :class:`RecordingError` (``bad_key``) if unreadable or not Ed25519. File
        permissions are the caller's concern (see ``broker.recording_keys``).
        """
        try:
            data = path.read_bytes()
            if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
                key: object = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise RecordingError(f"reading signing key {path}: {exc}", code="bad_key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise RecordingError(f"signing key {path} is not Ed25519", code="bad_key")
        return cls(key)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._public

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def public_key_openssh(self) -> str:
        return public_key_openssh(self._public)

    def private_key_openssh(self) -> bytes:
        """The private key in OpenSSH format, unencrypted (for writing the 0600 key file)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


# --------------------------------------------------------------------------- storage


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
    if not _RECORDING_ID.fullmatch(recording_id) or ".." in recording_id:
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


# --------------------------------------------------------------------------- writing


class RecordingWriter:
    """Buffers bytes and commits them as signed, hash-chained chunks of one recording.

    Creating the writer creates the recording in ``store`` (:class:`RecordingError` if that
    fails or it exists). Threads: :meth:`write` is meant for the event loop (it only appends to
    a buffer under a lock and never blocks on disk); :meth:`flush` and :meth:`close` do blocking
    disk I/O and fsync, so run them in a worker thread (:class:`FlushTimer` does) — every method
    is safe against the others. The order of data is the order of :meth:`write` calls.

    Failure: the first I/O error makes the writer *failed*: that call and every later
    :meth:`write`, :meth:`flush` or :meth:`close` raise :class:`RecordingError`
    (``recording_failed``); what was flushed before stays verifiable (INCOMPLETE).
    """

    def __init__(
        self,
        store: RecordingStore,
        recording_id: str,
        *,
        kind: str,
        signer: Signer,
        clock: Clock,
        meta: Mapping[str, Any] | None = None,
        flush_interval_s: float = 1.0,
        extension: str | None = None,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    ) -> None:
        ext = extension or KIND_EXTENSIONS.get(kind, "bin")
        if not _EXTENSION.fullmatch(ext) or not kind or flush_interval_s <= 0:
            raise RecordingError(
                "RecordingWriter: kind, extension [a-z0-9] and flush_interval_s > 0 required",
                code="invalid",
            )
        try:
            self._meta = json.loads(canonical_json(dict(meta or {})))
        except (TypeError, ValueError) as exc:
            raise RecordingError(f"recording meta is not JSON: {exc}", code="invalid") from exc
        self.recording_id = check_recording_id(recording_id)
        self.kind = kind
        self.extension = ext
        self.flush_interval_s = flush_interval_s
        self.max_chunk_bytes = max_chunk_bytes
        self._signer = signer
        self._clock = clock
        self._buf = bytearray()
        self._buf_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._pending_since: float | None = None
        self._wake: Callable[[], None] | None = None
        self._seq = 0
        self._size = 0
        self._chain = genesis(self.recording_id)
        self._closed = False
        self._failed: RecordingError | None = None
        self.started_at = clock.now()
        self._sink = store.create(self.recording_id)

    # -- state, readable from any thread
    @property
    def chunks(self) -> int:
        return self._seq

    @property
    def size(self) -> int:
        """Bytes committed in chunks so far."""
        return self._size

    @property
    def chain_head(self) -> str:
        return self._chain

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def pending_since(self) -> float | None:
        """``time.monotonic()`` of the oldest unflushed byte, or None."""
        return self._pending_since

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> RecordingError | None:
        return self._failed

    def set_wake(self, callback: Callable[[], None] | None) -> None:
        """Called (from the writing thread) when the buffer reaches ``max_chunk_bytes``."""
        self._wake = callback

    def write(self, data: bytes) -> None:
        """Buffer ``data``; it becomes part of exactly one chunk. Never blocks on disk.

        Raises :class:`RecordingError` if the writer failed or was closed.
        """
        with self._buf_lock:
            self._check_open("writing")
            if not data:
                return
            if not self._buf:
                self._pending_since = time.monotonic()
            self._buf += data
            full = len(self._buf) >= self.max_chunk_bytes
        if full and self._wake is not None:
            self._wake()

    def flush(self) -> dict[str, Any] | None:
        """Commit the buffer as the next chunk and return its chain entry (None if empty).

        Durable when it returns. Raises :class:`RecordingError` on I/O errors (writer failed).
        """
        with self._io_lock:
            return self._flush_locked()

    def close(self, reason: str) -> dict[str, Any]:
        """Flush, write the signed manifest and return it. Idempotent only in the error sense:
        a second call raises ``recording_closed``; a failed writer raises its failure."""
        with self._io_lock:
            self._flush_locked()
            with self._buf_lock:
                self._check_open("closing")
                self._closed = True
            manifest: dict[str, Any] = {
                "v": FORMAT_VERSION,
                "recording_id": self.recording_id,
                "kind": self.kind,
                "extension": self.extension,
                "meta": self._meta,
                "chunks": self._seq,
                "size": self._size,
                "final_chain": self._chain,
                "started_at": format_time(self.started_at),
                "ended_at": format_time(self._clock.now()),
                "end_reason": reason,
                "signer": self._signer.fingerprint,
            }
            manifest["signature"] = _b64(
                self._signer.sign(MANIFEST_DOMAIN + canonical_json(manifest))
            )
            self._io("writing manifest.json", MANIFEST_FILE, canonical_json(manifest) + b"\n")
            return manifest

    def _check_open(self, what: str) -> None:
        if self._failed is not None:
            raise RecordingError(
                f"{what} recording {self.recording_id}: the writer failed earlier: "
                f"{self._failed.message}"
            )
        if self._closed:
            raise RecordingError(
                f"{what} recording {self.recording_id}: it is closed", code="recording_closed"
            )

    def _io(self, what: str, name: str, data: bytes, *, append: bool = False) -> None:
        try:
            if append:
                self._sink.append(name, data)
            else:
                self._sink.put(name, data)
        except OSError as exc:
            self._failed = RecordingError(f"{what} of recording {self.recording_id}: {exc}")
            raise self._failed from exc

    def _flush_locked(self) -> dict[str, Any] | None:
        with self._buf_lock:
            self._check_open("flushing")
            # Swap the buffer out (copy it below, outside the lock): the event loop's write()
            # waits on this lock, and copying a megabyte under it showed in bulk profiles.
            swapped, self._buf = self._buf, bytearray()
            self._pending_since = None
        data = bytes(swapped)
        if not data:
            return None
        seq = self._seq + 1
        name = chunk_name(seq, self.extension)
        digest = hashlib.sha256(data).hexdigest()
        entry: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "recording_id": self.recording_id,
            "kind": self.kind,
            "seq": seq,
            "file": name,
            "size": len(data),
            "sha256": digest,
            "prev": self._chain,
            "chain": link(self._chain, digest, seq),
            "at": format_time(self._clock.now()),
            "signer": self._signer.fingerprint,
        }
        entry["sig"] = _b64(self._signer.sign(ENTRY_DOMAIN + canonical_json(entry)))
        self._io(f"writing {name}", name, data)
        self._io(
            f"appending {name} to chain.jsonl",
            CHAIN_FILE,
            canonical_json(entry) + b"\n",
            append=True,
        )
        self._seq, self._size, self._chain = seq, self._size + len(data), entry["chain"]
        return entry


class FlushTimer:
    """The one background task that flushes a :class:`RecordingWriter` (owner: the session).

    Flushes (in a worker thread) no later than ``interval_s`` (default: the writer's
    ``flush_interval_s``) after the oldest unflushed write, and at once when the buffer is full.
    On :class:`RecordingError` it stores the error in :attr:`error`, calls ``on_error`` (e.g.
    terminate a strict-mode session) and stops. :meth:`aclose` stops the task; it neither
    flushes nor closes the writer (call ``writer.close`` afterwards, off the event loop).
    """

    def __init__(
        self,
        writer: RecordingWriter,
        *,
        interval_s: float | None = None,
        on_error: Callable[[RecordingError], None] | None = None,
    ) -> None:
        self._writer = writer
        self._interval = interval_s or writer.flush_interval_s
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.error: RecordingError | None = None

    def start(self) -> None:
        """Start the task on the running loop (once)."""
        if self._task is not None:
            raise RecordingError("FlushTimer already started", code="invalid")
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        self._writer.set_wake(wake)
        self._task = loop.create_task(self._run(), name=f"flush {self._writer.recording_id}")

    async def aclose(self) -> None:
        """Cancel the task and wait for it; idempotent. An in-flight flush still completes."""
        self._writer.set_wake(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> FlushTimer:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        writer = self._writer
        while not writer.closed:
            since = writer.pending_since
            due = self._interval if since is None else since + self._interval - time.monotonic()
            if due > 0 and writer.pending < writer.max_chunk_bytes:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._wake.wait()
                continue
            try:
                await asyncio.to_thread(writer.flush)
            except RecordingError as exc:
                if writer.closed and writer.failed is None:
                    return
                self.error = exc
                if self._on_error is not None:
                    self._on_error(exc)
                return


# --------------------------------------------------------------------------- verification


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


_ENTRY_FIELDS: Mapping[str, type] = {
    "v": int, "recording_id": str, "kind": str, "seq": int, "file": str, "size": int,
    "sha256": str, "prev": str, "chain": str, "at": str, "signer": str, "sig": str,
}  # fmt: skip
_MANIFEST_FIELDS: Mapping[str, type] = {
    "v": int, "recording_id": str, "kind": str, "extension": str, "meta": dict, "chunks": int,
    "size": int, "final_chain": str, "started_at": str, "ended_at": str, "end_reason": str,
    "signer": str, "signature": str,
}  # fmt: skip


def _parse(raw: bytes, fields: Mapping[str, type], what: str) -> dict[str, Any]:
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


def _chain_lines(path: Path) -> tuple[list[bytes], bool]:
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
        lines, partial = _chain_lines(path)
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
            entry = _parse(line, _ENTRY_FIELDS, f"chain.jsonl line {seq}")
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
        match = _CHUNK_NAME.fullmatch(file)
        if match is None or int(match[1]) != seq or file in chained:
            raise _Broken("chain entry names the wrong file", seq, file)
        if entry["prev"] != prev:
            raise _Broken("chain link broken (prev does not match the previous chunk)", seq, file)
        if not _HEX64.fullmatch(entry["sha256"]) or entry["chain"] != link(
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
        match = _CHUNK_NAME.fullmatch(name)
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
        m = _parse((path / MANIFEST_FILE).read_bytes(), _MANIFEST_FIELDS, "manifest.json")
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


# --------------------------------------------------------------------------- reading


def iter_chunks(path: Path) -> Iterator[bytes]:
    """The chunks' bytes in chain order (complete chain lines only); does not verify.

    Raises :class:`RecordingError` (``not_found``) if chain.jsonl or a chained file is
    unreadable, ``invalid`` if chain.jsonl is malformed. Verify first for trusted output.
    """
    try:
        lines, _ = _chain_lines(path)
    except OSError as exc:
        raise RecordingError(
            f"reading {path / CHAIN_FILE}: {exc.strerror}", code="not_found"
        ) from exc
    for n, line in enumerate(lines, 1):
        try:
            file = _parse(line, _ENTRY_FIELDS, f"chain.jsonl line {n}")["file"]
        except ValueError as exc:
            raise RecordingError(f"reading {path}: {exc}", code="invalid") from exc
        if not _CHUNK_NAME.fullmatch(file):
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
