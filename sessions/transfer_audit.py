"""File-transfer audit for relayed SFTP and legacy scp channels: name, size, SHA-256, direction.

The SSH front door relays a vendor's channel to an asset's channel byte for byte. An auditor
watches both byte streams of one channel *without changing them* and reports one
:class:`TransferEvent` per transferred file::

    audit = auditor_for(subsystem, command, on_event)   # None: not a file-transfer channel
    audit.from_client(data)    # every vendor→asset byte, in order, before/when it is forwarded
    audit.from_server(data)    # every asset→vendor stdout byte (never stderr), in order
    audit.finish()             # channel gone: report files still in flight as incomplete

Contracts (both auditors):

* Input may be split or coalesced arbitrarily; only the order within each direction matters,
  plus causality across directions (a reply is fed after the request it answers, which holds
  when the relay feeds each chunk as it passes through).
* Nothing here raises on peer input. Malformed or oversized input sets :attr:`broken` (with a
  reason in :attr:`error`) and auditing of that channel stops; the relay carries on untouched.
  Exceptions raised by ``on_event`` are logged and swallowed.
* Memory is bounded: whole files are never kept, only running hashes, the chunk being fed,
  a parse buffer (under one SFTP packet, :data:`MAX_SFTP_PACKET`) and a reorder buffer for pipelined
  SFTP requests that arrive out of order (:data:`REORDER_LIMIT` bytes / :data:`REORDER_CHUNKS`
  chunks per auditor, after which the affected file is reported ``complete=False``).
* ``sha256`` is over the content in file order from offset 0, as far as it was contiguous
  (``hashed_size`` bytes); ``size`` counts every content byte that crossed the channel. For a
  ``complete`` event both describe exactly the transferred file content. For SFTP the hash
  covers what was transferred, not the resulting file (a write-only open without TRUNC can
  leave older bytes beyond the written range).

SFTP (version 3, as spoken by OpenSSH): OPEN → HANDLE maps a handle to its path; WRITE data is
an upload, READ + DATA replies a download; the event is emitted when the CLOSE reply arrives.
Upload events are emitted for every handle opened for writing (so empty uploads are seen);
download events for every handle that was read from. Metadata operations (REMOVE, RENAME,
MKDIR, SETSTAT, ...) and server-side copies (``copy-data``) are not reported here.

Legacy scp (``scp -t`` = upload to the asset, ``scp -f`` = download): the sender's ``C``, ``D``,
``E`` and ``T`` messages are parsed, with the receiver's acknowledgements deciding whether file
data follows. The wire protocol carries base names only: ``path`` is the name joined under any
``D`` directories, and :attr:`TransferEvent.remote` holds the path argument(s) of the remote
``scp`` command. Files the receiver refuses before any data are not reported.

Only the standard library is used (no asyncssh), so this module can be tested on recorded
byte streams from real OpenSSH programs.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import posixpath
import shlex
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


def auditor_for(
    subsystem: str | None, command: str | None, on_event: EventSink
) -> TransferAuditor | None:
    """The auditor for a channel opened with this subsystem or exec command, or None.

    ``sftp`` subsystems and exec'd ``sftp-server`` get an :class:`SftpAuditor`; exec'd
    ``scp -t``/``scp -f`` (legacy protocol) a :class:`ScpAuditor`. Anything else (shells,
    other commands, unparseable command lines) is not a file transfer: None.
    """
    if subsystem is not None:
        return SftpAuditor(on_event) if subsystem == "sftp" else None
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv:
        return None
    program = posixpath.basename(argv[0])
    if program == "sftp-server":
        return SftpAuditor(on_event)
    if program != "scp":
        return None
    flags: set[str] = set()
    rest: list[str] = []
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            rest = argv[i + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            rest = argv[i:]
            break
        flags.update(arg[1:])
    if ("t" in flags) == ("f" in flags):
        return None
    direction: Direction = "upload" if "t" in flags else "download"
    return ScpAuditor(on_event, direction, remote=" ".join(rest) or None)


class _Budget:
    """Reorder-buffer space shared by every stream of one auditor."""

    def __init__(self) -> None:
        self.bytes = 0
        self.chunks = 0

    def fits(self, size: int) -> bool:
        return self.bytes + size <= REORDER_LIMIT and self.chunks < REORDER_CHUNKS


class _Stream:
    """Content of one file in one direction, fed as (offset, bytes) pieces in any order."""

    def __init__(self, budget: _Budget, kind: str) -> None:
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


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _emit(on_event: EventSink, event: TransferEvent) -> None:
    try:
        on_event(event)
    except Exception:
        log.exception("transfer audit: event sink failed for %s %s", event.direction, event.path)


class _Malformed(Exception):
    pass


class _Reader:
    """Big-endian SFTP field reader over one packet body."""

    def __init__(self, body: bytes) -> None:
        self._b, self._i = body, 0

    def _take(self, n: int) -> bytes:
        if self._i + n > len(self._b):
            raise _Malformed("short packet")
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


# SFTP v3 packet types and flags (draft-ietf-secsh-filexfer-02)
_VERSION, _OPEN, _CLOSE, _READ, _WRITE = 2, 3, 4, 5, 6
_STATUS, _HANDLE, _DATA = 101, 102, 103
_FXF_WRITE = 0x02
_FX_OK, _FX_EOF = 0, 1


class _Handle:
    def __init__(self, path: str, pflags: int, budget: _Budget) -> None:
        self.path = path
        self.writable = bool(pflags & _FXF_WRITE)
        self.upload = _Stream(budget, "writes")
        self.download = _Stream(budget, "reads")
        self.read_requested = False


class SftpAuditor:
    """Audits one SFTP v3 channel; see the module docstring for the contract."""

    def __init__(self, on_event: EventSink) -> None:
        self._on_event = on_event
        self._budget = _Budget()
        self._bufs = {True: bytearray(), False: bytearray()}  # keyed by "from client"
        # request id -> ("open", path, pflags) | ("close", handle) | ("read", handle, offset)
        #               | ("write", handle)
        self._pending: dict[int, tuple[str, bytes, int]] = {}
        self._handles: dict[bytes, _Handle] = {}
        self._finished = False
        self.error: str | None = None

    @property
    def broken(self) -> bool:
        """True once malformed input stopped the audit (the reason is in :attr:`error`)."""
        return self.error is not None

    def from_client(self, data: bytes) -> None:
        """Feed vendor→asset bytes (requests)."""
        self._feed(True, data)

    def from_server(self, data: bytes) -> None:
        """Feed asset→vendor stdout bytes (replies)."""
        self._feed(False, data)

    def finish(self) -> None:
        """Report every still-open handle as incomplete, then ignore further input. Idempotent."""
        if self._finished:
            return
        self._finished = True
        note = f"audit stopped: {self.error}" if self.error else TRUNCATED
        for handle in list(self._handles.values()):
            self._report(handle, note)
        self._handles.clear()
        self._pending.clear()
        self._bufs[True].clear()
        self._bufs[False].clear()

    def _feed(self, client: bool, data: bytes) -> None:
        if self._finished or self.error is not None:
            return
        buf = self._bufs[client]
        buf += data
        try:
            while len(buf) >= 4:
                length = int.from_bytes(buf[:4], "big")
                if length == 0 or length > MAX_SFTP_PACKET:
                    raise _Malformed(f"bad packet length {length}")
                if len(buf) < 4 + length:
                    break
                packet = bytes(buf[4 : 4 + length])
                del buf[: 4 + length]
                if client:
                    self._request(packet)
                else:
                    self._reply(packet)
        except _Malformed as exc:
            self._stop(f"malformed SFTP {'request' if client else 'reply'}: {exc}")
        except Exception:
            log.exception("transfer audit: SFTP parser failed")
            self._stop("internal error")

    def _stop(self, reason: str) -> None:
        self.error = reason
        self._bufs[True].clear()
        self._bufs[False].clear()
        for handle in self._handles.values():
            handle.upload.release()
            handle.download.release()

    def _request(self, packet: bytes) -> None:
        kind, r = packet[0], _Reader(packet[1:])
        if kind not in (_OPEN, _CLOSE, _READ, _WRITE):
            return
        req_id = r.u32()
        if kind == _OPEN:
            path = r.string()
            self._track(req_id, ("open", path, r.u32()))
            return
        handle_id = r.string()
        handle = self._handles.get(handle_id)
        if handle is None:
            return  # a directory handle, or one opened before the audit started
        if kind == _CLOSE:
            self._track(req_id, ("close", handle_id, 0))
        elif kind == _READ:
            offset = r.u64()
            handle.read_requested = True
            self._track(req_id, ("read", handle_id, offset))
        else:
            offset = r.u64()
            handle.upload.feed(offset, r.string())
            self._track(req_id, ("write", handle_id, 0))

    def _track(self, req_id: int, op: tuple[str, bytes, int]) -> None:
        if len(self._pending) >= MAX_OUTSTANDING and req_id not in self._pending:
            raise _Malformed("too many outstanding requests")
        self._pending[req_id] = op

    def _reply(self, packet: bytes) -> None:
        kind, r = packet[0], _Reader(packet[1:])
        if kind == _VERSION:
            version = r.u32()
            if version != 3:
                raise _Malformed(f"unsupported SFTP version {version}")
            return
        if kind not in (_STATUS, _HANDLE, _DATA):
            return
        op = self._pending.pop(r.u32(), None)
        if op is None:
            return
        what, arg, number = op
        if what == "open":
            if kind == _HANDLE:
                self._opened(r.string(), _text(arg), number)
            return
        handle = self._handles.get(arg)
        if handle is None:
            return
        if what == "read":
            if kind == _DATA:
                handle.download.feed(number, r.string())
            elif kind == _STATUS and r.u32() not in (_FX_OK, _FX_EOF):
                handle.download.fail("a read failed")
        elif what == "write":
            if kind != _STATUS or r.u32() != _FX_OK:
                handle.upload.fail("a write failed")
        elif kind == _STATUS:  # close: the server frees the handle whatever the status
            del self._handles[arg]
            self._report(handle, None if r.u32() == _FX_OK else "close failed")

    def _opened(self, handle_id: bytes, path: str, pflags: int) -> None:
        old = self._handles.pop(handle_id, None)
        if old is not None:
            self._report(old, "handle reused before its close was seen")
        if len(self._handles) >= MAX_HANDLES:
            raise _Malformed("too many open handles")
        self._handles[handle_id] = _Handle(path, pflags, self._budget)

    def _report(self, handle: _Handle, end_problem: str | None) -> None:
        if handle.writable or handle.upload.size:
            self._event("upload", handle.path, handle.upload, end_problem)
        if handle.read_requested:
            self._event("download", handle.path, handle.download, end_problem)

    def _event(self, direction: Direction, path: str, s: _Stream, end: str | None) -> None:
        problem = s.settle()
        note = "; ".join(n for n in (problem, end) if n) or None
        _emit(
            self._on_event,
            TransferEvent(
                direction=direction,
                path=path,
                size=s.size,
                sha256=s.digest(),
                complete=note is None,
                protocol="sftp",
                hashed_size=s.next,
                note=note,
            ),
        )


class _ScpFile:
    def __init__(self, path: str, expected: int) -> None:
        self.path = path
        self.expected = expected
        self.remaining = expected
        self.hash = hashlib.sha256()
        self.problem: str | None = None


class ScpAuditor:
    """Audits one legacy-protocol scp channel; see the module docstring for the contract.

    ``direction`` is "upload" for ``scp -t`` (the vendor sends files) and "download" for
    ``scp -f`` (the asset sends files). ``remote``: the remote command's path argument(s).
    """

    def __init__(
        self, on_event: EventSink, direction: Direction, remote: str | None = None
    ) -> None:
        self._on_event = on_event
        self.direction: Direction = direction
        self.remote = remote
        self._send = bytearray()  # sender bytes not yet parsed
        self._recv = bytearray()  # an incomplete acknowledgement from the receiver
        # what the sender does next: "ack" (wait for the receiver), "msg", "data", "trailer"
        self._state = "ack"
        self._awaiting = "start"  # the message the awaited acknowledgement answers
        self._pending_dir: str | None = None
        self._dirs: list[str] = []
        self._file: _ScpFile | None = None
        self._finished = False
        self.error: str | None = None

    @property
    def broken(self) -> bool:
        """True once malformed input stopped the audit (the reason is in :attr:`error`)."""
        return self.error is not None

    def from_client(self, data: bytes) -> None:
        """Feed vendor→asset bytes."""
        self._feed(data, sender=self.direction == "upload")

    def from_server(self, data: bytes) -> None:
        """Feed asset→vendor stdout bytes."""
        self._feed(data, sender=self.direction == "download")

    def finish(self) -> None:
        """Report a file still in flight as incomplete, then ignore further input. Idempotent."""
        if self._finished:
            return
        self._finished = True
        if self._file is not None:
            self._report(f"audit stopped: {self.error}" if self.error else TRUNCATED)
        self._send.clear()
        self._recv.clear()

    def _feed(self, data: bytes, *, sender: bool) -> None:
        if self._finished or self.error is not None:
            return
        try:
            if sender:
                self._send += data
            else:
                self._recv += data
                if len(self._recv) > MAX_SCP_AHEAD:
                    raise _Malformed("receiver sent more than acknowledgements")
            self._run()
        except _Malformed as exc:
            self._stop(f"malformed scp {'message' if sender else 'acknowledgement'}: {exc}")
        except Exception:
            log.exception("transfer audit: scp parser failed")
            self._stop("internal error")

    def _stop(self, reason: str) -> None:
        self.error = reason
        self._send.clear()
        self._recv.clear()

    def _run(self) -> None:
        while True:
            if self._state == "ack":
                reply = _line_reply(self._recv)
                if reply is None:
                    if len(self._send) > MAX_SCP_AHEAD:
                        raise _Malformed("sender did not wait for an acknowledgement")
                    return
                self._acknowledged(*reply)
            elif self._state == "data":
                assert self._file is not None
                chunk = self._send[: self._file.remaining]
                if not chunk and self._file.remaining:
                    return
                self._file.hash.update(chunk)
                self._file.remaining -= len(chunk)
                del self._send[: len(chunk)]
                if not self._file.remaining:
                    self._state = "trailer"
            elif self._state == "trailer":
                reply = _line_reply(self._send)
                if reply is None:
                    return
                assert self._file is not None
                ok, message = reply
                if not ok:
                    self._file.problem = f"sender reported: {message}"
                self._state, self._awaiting = "ack", "data"
            else:
                if not self._message():
                    return

    def _message(self) -> bool:
        """Parse one sender message; False when more bytes are needed."""
        if not self._send:
            return False
        if self._send[0] in (1, 2):  # the sender's error line: no acknowledgement follows
            return _line_reply(self._send) is not None
        end = self._send.find(b"\n")
        if end < 0:
            if len(self._send) > MAX_SCP_LINE:
                raise _Malformed("message line too long")
            return False
        line = bytes(self._send[:end])
        del self._send[: end + 1]
        tag, body = line[:1], line[1:]
        if tag == b"C":
            mode_size_name = body.split(b" ", 2)
            if len(mode_size_name) != 3 or not mode_size_name[1].isdigit():
                raise _Malformed("bad C line")
            name = _text(mode_size_name[2])
            self._file = _ScpFile(posixpath.join(*self._dirs, name), int(mode_size_name[1]))
        elif tag == b"D":
            parts = body.split(b" ", 2)
            if len(parts) != 3:
                raise _Malformed("bad D line")
            self._pending_dir = _text(parts[2])
        elif tag not in (b"E", b"T"):
            raise _Malformed(f"unknown message {tag!r}")
        self._state, self._awaiting = "ack", tag.decode()
        return True

    def _acknowledged(self, ok: bool, message: str) -> None:
        awaiting, self._state = self._awaiting, "msg"
        if awaiting == "C" and self._file is not None:
            if not ok:
                self._file = None  # refused before any data: nothing transferred
            elif self._file.remaining == 0:
                self._state = "trailer"
            else:
                self._state = "data"
        elif awaiting == "D" and ok and self._pending_dir is not None:
            self._dirs.append(self._pending_dir)
        elif awaiting == "E" and ok and self._dirs:
            self._dirs.pop()
        elif awaiting == "data" and self._file is not None:
            self._report(None if ok else f"receiver reported: {message}")
        self._pending_dir = None

    def _report(self, end_problem: str | None) -> None:
        f, self._file = self._file, None
        assert f is not None
        note = "; ".join(n for n in (f.problem, end_problem) if n) or None
        done = f.expected - f.remaining
        _emit(
            self._on_event,
            TransferEvent(
                direction=self.direction,
                path=f.path,
                size=done,
                sha256=f.hash.hexdigest(),
                complete=note is None,
                protocol="scp",
                hashed_size=done,
                note=note,
                remote=self.remote,
            ),
        )


def _line_reply(buf: bytearray) -> tuple[bool, str] | None:
    """Consume one scp reply from ``buf``: NUL (ok) or a 1/2 byte and a line (error).

    Returns (ok, message) or None when incomplete; raises _Malformed on anything else.
    """
    if not buf:
        return None
    if buf[0] == 0:
        del buf[:1]
        return True, ""
    if buf[0] not in (1, 2):
        raise _Malformed(f"unexpected byte {buf[0]:#04x}")
    end = buf.find(b"\n")
    if end < 0:
        if len(buf) > MAX_SCP_LINE:
            raise _Malformed("error line too long")
        return None
    message = _text(bytes(buf[1:end]))[:200]
    del buf[: end + 1]
    return False, message
