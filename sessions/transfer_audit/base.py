"""What both transfer auditors share: events, the auditor protocol, limits, per-direction
byte streams with a reorder budget, and the packet reader (see :mod:`sessions.transfer_audit`)."""

from __future__ import annotations

import hashlib
import heapq
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

log = logging.getLogger(__name__)

Direction = Literal["upload", "download"]
TransferProtocol = Literal["sftp", "scp"]

MAX_SFTP_PACKET: Final = 256 * 1024 + 1024  # OpenSSH's SFTP_MAX_MSG_LENGTH plus slack
REORDER_LIMIT: Final = 8 * 1024 * 1024
REORDER_CHUNKS: Final = 4096
MAX_OUTSTANDING: Final = 65536  # tracked SFTP requests awaiting a reply
MAX_HANDLES: Final = 4096
MAX_SCP_LINE: Final = 16 * 1024
MAX_SCP_AHEAD: Final = 64 * 1024  # sender bytes buffered while waiting for an acknowledgement
TRUNCATED: Final = "truncated at session end"


@dataclass(frozen=True, slots=True)
class TransferEvent:
    """One file transferred (or attempted) over a relayed channel.

    ``direction``: "upload" is vendor→asset, "download" asset→vendor. ``path``: as the client
    named it (non-UTF-8 bytes backslash-escaped). ``size``: content bytes that crossed the
    channel. ``sha256``: hex digest of the first ``hashed_size`` bytes of content in file
    order. ``complete``: the content was contiguous from offset 0 without gaps or overlaps and
    the transfer ended normally, so ``sha256`` is the hash of exactly what was transferred.
    ``note`` says why not (or is None). ``remote``: scp only, the remote command's path
    argument(s).
    """

    direction: Direction
    path: str
    size: int
    sha256: str
    complete: bool
    protocol: TransferProtocol
    hashed_size: int
    note: str | None = None
    remote: str | None = None


EventSink = Callable[[TransferEvent], None]


class TransferAuditor(Protocol):
    """What the relay drives; see the module docstring for the contract."""

    @property
    def broken(self) -> bool: ...

    def from_client(self, data: bytes) -> None: ...

    def from_server(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class Budget:
    """Reorder-buffer space shared by every stream of one auditor."""

    def __init__(self) -> None:
        self.bytes = 0
        self.chunks = 0

    def fits(self, size: int) -> bool:
        return self.bytes + size <= REORDER_LIMIT and self.chunks < REORDER_CHUNKS


class Stream:
    """Content of one file in one direction, fed as (offset, bytes) pieces in any order."""

    def __init__(self, budget: Budget, kind: str) -> None:
        self._budget = budget
        self._kind = kind  # "writes" or "reads", for notes
        self._hash = hashlib.sha256()
        self._heap: list[tuple[int, int, bytes]] = []
        self._seq = 0
        self.next = 0  # content [0, next) is hashed
        self.size = 0
        self.problem: str | None = None  # set once: the content is no longer contiguous
        self.gave_up = False

    def feed(self, offset: int, data: bytes) -> None:
        self.size += len(data)
        if self.gave_up or not data:
            return
        if offset > self.next:
            if not self._budget.fits(len(data)):
                self._give_up(f"non-sequential {self._kind} beyond the reorder buffer")
                return
            self._budget.bytes += len(data)
            self._budget.chunks += 1
            self._seq += 1
            heapq.heappush(self._heap, (offset, self._seq, data))
            return
        self._take(offset, data)
        while self._heap and self._heap[0][0] <= self.next:
            off, _, chunk = heapq.heappop(self._heap)
            self._budget.bytes -= len(chunk)
            self._budget.chunks -= 1
            self._take(off, chunk)

    def _take(self, offset: int, data: bytes) -> None:
        if offset < self.next:
            self.problem = self.problem or f"overlapping {self._kind}"
            data = data[self.next - offset :]
        if data:
            self._hash.update(data)
            self.next += len(data)

    def _give_up(self, note: str) -> None:
        self.problem = self.problem or note
        self.gave_up = True
        self.release()

    def fail(self, note: str) -> None:
        """The transfer went wrong (not a content-order problem); keep hashing what comes."""
        self.problem = self.problem or note

    def release(self) -> None:
        for _, _, chunk in self._heap:
            self._budget.bytes -= len(chunk)
            self._budget.chunks -= 1
        self._heap.clear()

    def settle(self) -> str | None:
        """Release the buffer; return why the content is not complete, or None."""
        if self._heap and not self.gave_up:
            self.problem = (
                self.problem or f"non-sequential {self._kind} (gap at offset {self.next})"
            )
        self.release()
        return self.problem

    def digest(self) -> str:
        return self._hash.hexdigest()


def printable(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def emit(on_event: EventSink, event: TransferEvent) -> None:
    try:
        on_event(event)
    except Exception:
        log.exception("transfer audit: event sink failed for %s %s", event.direction, event.path)


class Malformed(Exception):
    pass


class Reader:
    """Big-endian SFTP field reader over one packet body."""

    def __init__(self, body: bytes) -> None:
        self._b, self._i = body, 0

    def _take(self, n: int) -> bytes:
        if self._i + n > len(self._b):
            raise Malformed("short packet")
        out = self._b[self._i : self._i + n]
        self._i += n
        return out

    def u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.u32())
