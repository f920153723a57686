"""The SFTP v3 auditor (see :mod:`sessions.transfer_audit`)."""

from __future__ import annotations

import logging

from sessions.transfer_audit.base import (
    MAX_HANDLES,
    MAX_OUTSTANDING,
    MAX_SFTP_PACKET,
    TRUNCATED,
    Budget,
    Direction,
    EventSink,
    Malformed,
    Reader,
    Stream,
    TransferEvent,
    emit,
    printable,
)

log = logging.getLogger(__name__)


# SFTP v3 packet types and flags (draft-ietf-secsh-filexfer-02)
_VERSION, _OPEN, _CLOSE, _READ, _WRITE = 2, 3, 4, 5, 6
_STATUS, _HANDLE, _DATA = 101, 102, 103
_FXF_WRITE = 0x02
_FX_OK, _FX_EOF = 0, 1


class _Handle:
    def __init__(self, path: str, pflags: int, budget: Budget) -> None:
        self.path = path
        self.writable = bool(pflags & _FXF_WRITE)
        self.upload = Stream(budget, "writes")
        self.download = Stream(budget, "reads")
        self.read_requested = False


class SftpAuditor:
    """Audits one SFTP v3 channel; see the module docstring for the contract."""

    def __init__(self, on_event: EventSink) -> None:
        self._on_event = on_event
        self._budget = Budget()
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
                    raise Malformed(f"bad packet length {length}")
                if len(buf) < 4 + length:
                    break
                packet = bytes(buf[4 : 4 + length])
                del buf[: 4 + length]
                if client:
                    self._request(packet)
                else:
                    self._reply(packet)
        except Malformed as exc:
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
        kind, r = packet[0], Reader(packet[1:])
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
            raise Malformed("too many outstanding requests")
        self._pending[req_id] = op

    def _reply(self, packet: bytes) -> None:
        kind, r = packet[0], Reader(packet[1:])
        if kind == _VERSION:
            version = r.u32()
            if version != 3:
                raise Malformed(f"unsupported SFTP version {version}")
            return
        if kind not in (_STATUS, _HANDLE, _DATA):
            return
        op = self._pending.pop(r.u32(), None)
        if op is None:
            return
        what, arg, number = op
        if what == "open":
            if kind == _HANDLE:
                self._opened(r.string(), printable(arg), number)
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
            raise Malformed("too many open handles")
        self._handles[handle_id] = _Handle(path, pflags, self._budget)

    def _report(self, handle: _Handle, end_problem: str | None) -> None:
        if handle.writable or handle.upload.size:
            self._event("upload", handle.path, handle.upload, end_problem)
        if handle.read_requested:
            self._event("download", handle.path, handle.download, end_problem)

    def _event(self, direction: Direction, path: str, s: Stream, end: str | None) -> None:
        problem = s.settle()
        note = "; ".join(n for n in (problem, end) if n) or None
        emit(
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
