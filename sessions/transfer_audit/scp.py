"""The legacy scp auditor (see :mod:`sessions.transfer_audit`)."""

from __future__ import annotations

import hashlib
import logging
import posixpath

from sessions.transfer_audit.base import (
    MAX_SCP_AHEAD,
    MAX_SCP_LINE,
    TRUNCATED,
    Direction,
    EventSink,
    Malformed,
    TransferEvent,
    emit,
    printable,
)

log = logging.getLogger(__name__)


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
                    raise Malformed("receiver sent more than acknowledgements")
            self._run()
        except Malformed as exc:
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
                        raise Malformed("sender did not wait for an acknowledgement")
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
                raise Malformed("message line too long")
            return False
        line = bytes(self._send[:end])
        del self._send[: end + 1]
        tag, body = line[:1], line[1:]
        if tag == b"C":
            mode_size_name = body.split(b" ", 2)
            if len(mode_size_name) != 3 or not mode_size_name[1].isdigit():
                raise Malformed("bad C line")
            name = printable(mode_size_name[2])
            self._file = _ScpFile(posixpath.join(*self._dirs, name), int(mode_size_name[1]))
        elif tag == b"D":
            parts = body.split(b" ", 2)
            if len(parts) != 3:
                raise Malformed("bad D line")
            self._pending_dir = printable(parts[2])
        elif tag not in (b"E", b"T"):
            raise Malformed(f"unknown message {tag!r}")
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
        emit(
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

    Returns (ok, message) or None when incomplete; raises Malformed on anything else.
    """
    if not buf:
        return None
    if buf[0] == 0:
        del buf[:1]
        return True, ""
    if buf[0] not in (1, 2):
        raise Malformed(f"unexpected byte {buf[0]:#04x}")
    end = buf.find(b"\n")
    if end < 0:
        if len(buf) > MAX_SCP_LINE:
            raise Malformed("error line too long")
        return None
    message = printable(bytes(buf[1:end]))[:200]
    del buf[: end + 1]
    return False, message
