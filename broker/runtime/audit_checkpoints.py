"""The broker's audit checkpointer: signs the audit chain head and ships it off the database.

A checkpoint (:mod:`sessions.checkpoints`) is signed with the recording key

* for every ``checkpoint_events``-th event (seq = last + N, last + 2N, … exactly, so no more
  than N events are ever uncovered by a checkpoint once it is written),
* for the head once the oldest event not yet covered is ``checkpoint_interval_s`` old (by the
  injected clock and the events' timestamps; checked every ``poll_s``), so no event waits
  longer than that for a checkpoint; and for the head at start-up and at shut-down,

and shipped to every target: a file (one JSON line, appended and fsynced), syslog (RFC 5424 over
UDP, TCP with octet counting, or a local datagram socket) and the signed webhook. The state
(the last checkpoint) lives in the file, so no database table is involved: at start-up the
newest checkpoint in the file is read back and compared with the database; a log that no
longer reaches it, or has another hash there, is reported at once (``audit.checkpoint.mismatch``).

Each in-process append wakes the task (``AuditLog.listeners``); appends by other processes are
picked up by polling the head every ``poll_s``. Shipping failures are logged, reported through
``on_status`` (alert, ``/healthz``) and retried on the next round while no target took the
checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sessions.audit import AuditLog
from sessions.checkpoints import (
    CHECKPOINT_TYPE,
    Checkpoint,
    CheckpointError,
    parse_checkpoint,
    sign_checkpoint,
)
from sessions.clock import Clock
from sessions.files import fsync_dir, write_all
from sessions.recording import Signer

log = logging.getLogger("conduit.audit")
TAIL_BYTES = 64 << 10
SYSLOG_PRI = 10 * 8 + 5  # facility authpriv (10), severity notice (5)


class CheckpointTarget(Protocol):
    """Where checkpoints go. ``ship`` blocks (called in a worker thread) and raises OSError."""

    name: str

    def ship(self, checkpoint: Checkpoint) -> None: ...


class FileTarget:
    """One JSON line per checkpoint, appended with O_APPEND and fsynced (file 0600, dir 0700)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file {path}"

    def ship(self, checkpoint: Checkpoint) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            write_all(fd, (checkpoint.line() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)

    def last(self, public_key: Ed25519PublicKey) -> Checkpoint | None:
        """The newest checkpoint in the file that verifies (None if there is none)."""
        try:
            with self.path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - TAIL_BYTES))
                tail = fh.read()
        except FileNotFoundError:
            return None
        best: Checkpoint | None = None
        for raw in tail.split(b"\n"):
            if CHECKPOINT_TYPE.encode() not in raw:
                continue
            with contextlib.suppress(CheckpointError):
                cp = parse_checkpoint(raw[raw.find(b"{") :], public_key)
                if best is None or cp.seq >= best.seq:
                    best = cp
        return best


class SyslogTarget:
    """RFC 5424 messages (``conduit`` / msgid ``audit-checkpoint``), the checkpoint as the text.

    ``udp://host:port`` (one datagram), ``tcp://host:port`` (RFC 6587 octet counting, one
    connection per message) or ``unix:/dev/log`` (a local datagram socket).
    """

    def __init__(self, address: str, *, timeout_s: float = 5.0) -> None:
        self.address = address
        self.name = f"syslog {address}"
        self._timeout = timeout_s
        self._hostname = socket.gethostname() or "-"

    def message(self, checkpoint: Checkpoint) -> bytes:
        header = f"<{SYSLOG_PRI}>1 {checkpoint.at} {self._hostname} conduit {os.getpid()} "
        return (header + f"audit-checkpoint - {checkpoint.line()}").encode()

    def ship(self, checkpoint: Checkpoint) -> None:
        data = self.message(checkpoint)
        if self.address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self._timeout)
                sock.sendto(data, self.address.removeprefix("unix:"))
            return
        parts = urlsplit(self.address)
        host, port = parts.hostname or "", parts.port or 514
        if parts.scheme == "udp":
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self._timeout)
                sock.sendto(data, (host, port))
            return
        with socket.create_connection((host, port), timeout=self._timeout) as sock:
            sock.sendall(f"{len(data)} ".encode() + data)


class WebhookTarget:
    """Queues the checkpoint on the broker's signed webhook (event ``audit.checkpoint``)."""

    name = "webhook"

    def __init__(self, notify: Callable[[str, str, dict[str, object]], None]) -> None:
        self._notify = notify

    def ship(self, checkpoint: Checkpoint) -> None:
        self._notify("audit.checkpoint", f"audit:{checkpoint.seq}", checkpoint.record())


class AuditCheckpointer:
    """Owns the checkpoint task: :meth:`start` inside the event loop, :meth:`aclose` at exit."""

    def __init__(
        self,
        audit: AuditLog,
        signer: Signer,
        clock: Clock,
        targets: list[CheckpointTarget],
        *,
        every_events: int,
        every_s: float,
        poll_s: float = 1.0,
        on_status: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self._audit, self._signer, self._clock = audit, signer, clock
        self._targets = targets
        self._every_events, self._every_s = every_events, every_s
        self._poll_s = min(poll_s, every_s)
        self._on_status = on_status
        self._lock = threading.Lock()  # one round at a time (task, start-up, shut-down)
        self._last_seq = 0
        self._continuing = False  # a checkpoint to continue from (file or this run)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.problem: str | None = None
        self.mismatch: str | None = None
        self.shipped = 0

    @property
    def file_target(self) -> FileTarget | None:
        return next((t for t in self._targets if isinstance(t, FileTarget)), None)

    # -- life cycle
    def resume(self) -> None:
        """Blocking: pick up the last checkpoint from the file and compare it with the log."""
        target = self.file_target
        last = target.last(self._signer.public_key) if target is not None else None
        if last is None:
            return
        self._last_seq, self._continuing = last.seq, True
        event = self._audit.event_at(last.seq)
        if event is None:
            head = self._audit.head()
            ends = f"ends at event {head[0]}" if head else "is empty"
            self.mismatch = (
                f"the audit log {ends} but the checkpoint signed at {last.at} covers event "
                f"{last.seq}: events were removed"
            )
        elif event.hash != last.head:
            self.mismatch = (
                f"event {last.seq} differs from the checkpoint signed at {last.at}: the audit "
                "chain was rewritten"
            )
        if self.mismatch is not None:
            log.error("audit log does not match its checkpoints: %s", self.mismatch)
            self._last_seq, self._continuing = 0, False  # sign the present head: evidence of both
            if self._on_status is not None:
                self._on_status("audit.checkpoint.mismatch", self.mismatch)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await asyncio.to_thread(self.resume)
        self._audit.listeners.append(self._appended)
        self._task = self._loop.create_task(self._run(), name="audit checkpoints")

    async def aclose(self) -> None:
        """Stop the task, then sign and ship the final head (a clean stop leaves no gap)."""
        with contextlib.suppress(ValueError):
            self._audit.listeners.remove(self._appended)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.round, True)

    def _appended(self, seq: int, _hash: str) -> None:
        if seq - self._last_seq >= self._every_events and self._loop is not None:
            wake = self._wake
            if wake is not None:
                with contextlib.suppress(RuntimeError):  # loop closed at shut-down
                    self._loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        first = True
        while True:
            try:
                await asyncio.to_thread(self.round, first)
                first = False
            except Exception:  # a failing round must not stop checkpointing
                log.exception("audit checkpoint round failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()

    # -- one round
    def round(self, force: bool = False) -> list[Checkpoint]:
        """Blocking: sign and ship whatever is due; ``force`` also signs a moved head now."""
        with self._lock:
            head = self._audit.head()
            if head is None:
                return []
            made: list[Checkpoint] = []
            if not self._continuing:  # nothing to continue from: the head vouches for all
                cp = self._sign(head[0])
                if cp is not None and self._ship(cp):
                    made.append(cp)
                return made
            while head[0] - self._last_seq >= self._every_events:
                seq = self._last_seq + self._every_events
                cp = self._sign(seq)
                if cp is None or not self._ship(cp):
                    return made
                made.append(cp)
            if head[0] > self._last_seq and (force or self._waited(self._last_seq + 1)):
                cp = self._sign(head[0])
                if cp is not None and self._ship(cp):
                    made.append(cp)
            return made

    def _waited(self, seq: int) -> bool:
        """Has event ``seq`` (the oldest not yet covered) waited ``every_s`` or longer?"""
        event = self._audit.event_at(seq)
        if event is None:
            return True
        return self._clock.now() - event.ts >= timedelta(seconds=self._every_s)

    def _sign(self, seq: int) -> Checkpoint | None:
        event = self._audit.event_at(seq)
        if event is None:  # the log shrank under us: verification will say so
            self._status(f"audit event {seq} vanished before it was checkpointed")
            return None
        return sign_checkpoint(seq, event.hash, event.ts, self._clock.now(), self._signer)

    def _ship(self, cp: Checkpoint) -> bool:
        failures: list[str] = []
        for target in self._targets:
            try:
                target.ship(cp)
            except OSError as exc:
                failures.append(f"{target.name}: {exc.strerror or exc}")
        if len(failures) == len(self._targets):
            self._status("; ".join(failures))
            return False
        self._last_seq, self._continuing = cp.seq, True
        self.shipped += 1
        self._status("; ".join(failures) or None)
        return True

    def _status(self, problem: str | None) -> None:
        changed = (problem is None) != (self.problem is None)
        self.problem = problem
        if not changed:
            return
        if problem is None:
            log.warning("audit checkpoints are shipped again")
        else:
            log.error("audit checkpoints cannot be shipped: %s", problem)
        if self._on_status is not None:
            kind = "audit.checkpoint.recovered" if problem is None else "audit.checkpoint.failed"
            self._on_status(kind, problem)
