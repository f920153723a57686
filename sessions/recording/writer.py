"""Writing one recording: :class:`RecordingWriter` (chunks, chain, manifest) and
:class:`FlushTimer` (flush at least every interval)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sessions.clock import Clock
from sessions.recording.format import (
    CHAIN_FILE,
    DEFAULT_MAX_CHUNK_BYTES,
    ENTRY_DOMAIN,
    EXTENSION_RE,
    FORMAT_VERSION,
    KIND_EXTENSIONS,
    MANIFEST_DOMAIN,
    MANIFEST_FILE,
    RecordingError,
    b64,
    canonical_json,
    chunk_name,
    format_time,
    genesis,
    link,
)
from sessions.recording.keys import Signer
from sessions.recording.store import RecordingStore, check_recording_id


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
        if not EXTENSION_RE.fullmatch(ext) or not kind or flush_interval_s <= 0:
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
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> RecordingError | None:
        return self._failed

    def set_wake(self, callback: Callable[[], None] | None) -> None:
        """Called (from the writing thread) when the buffer gets its first unflushed byte and
        when it reaches ``max_chunk_bytes``: the flush timer's two cues."""
        self._wake = callback

    def write(self, data: bytes) -> None:
        """Buffer ``data``; it becomes part of exactly one chunk. Never blocks on disk.

        Raises :class:`RecordingError` if the writer failed or was closed.
        """
        with self._buf_lock:
            self._check_open("writing")
            if not data:
                return
            first = not self._buf
            self._buf += data
            full = len(self._buf) >= self.max_chunk_bytes
        if (first or full) and self._wake is not None:
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
            manifest["signature"] = b64(
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
        entry["sig"] = b64(self._signer.sign(ENTRY_DOMAIN + canonical_json(entry)))
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

    async def _until_full(self) -> None:
        writer = self._writer
        while True:
            self._wake.clear()
            if writer.closed or not 0 < writer.pending < writer.max_chunk_bytes:
                return
            await self._wake.wait()

    async def _run(self) -> None:
        writer = self._writer
        while not writer.closed:
            self._wake.clear()  # before looking: a wake from now on is not lost
            if writer.pending == 0:  # idle: until the first byte (re-checking closed)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
                continue
            # The first byte's wake started this interval: no clock read needed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._until_full()
            try:
                await asyncio.to_thread(writer.flush)
            except RecordingError as exc:
                if writer.closed and writer.failed is None:
                    return
                self.error = exc
                if self._on_error is not None:
                    self._on_error(exc)
                return
