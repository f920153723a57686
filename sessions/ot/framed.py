"""The skeleton the request/response inspectors share (S7comm, EtherNet/IP).

A subclass supplies two framers (one per direction, each splitting a byte stream into whole
frames and breaking for good on the first bad header) and two judgements: what one client
frame becomes (bytes to forward, a refusal to answer, a record) and what one server frame
answers. The base feeds the framers, paces requests through :class:`RequestFlow`, keeps
refusals in request order, and turns a malformed frame into one ``refused`` record that
stops the connection (what came before it still goes). Modbus keeps its own loop: it
matches answers by transaction id and unit and writes its own exception replies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import ClassVar, Generic, Protocol, TypeVar

from sessions.clock import Clock
from sessions.errors import SessionsError
from sessions.ot.base import Record, Verdicts, malformed_record
from sessions.ot.pacing import RequestFlow, TokenBucket


class OtProtocolError(SessionsError):
    """A frame breaks its protocol's layout; the connection must be closed."""

    code = "ot_malformed"


class Frame(Protocol):
    @property
    def raw(self) -> bytes: ...


F = TypeVar("F", bound=Frame)


class Framer(Protocol[F]):
    def feed(self, data: bytes) -> tuple[list[F], bytes, OtProtocolError | None]:
        """Frames completed by ``data``; on a bad header also the bytes from it on and why."""
        ...

    def fail(self, message: str) -> bytes:
        """Break the framer (a later layer found the stream malformed); return what it held."""
        ...


class FramedInspector(ABC, Generic[F]):
    """One client connection of a request/response protocol (see the module docstring)."""

    protocol: ClassVar[str]  # the registry key and the records' ``protocol``: "s7"
    label: ClassVar[str]  # for people: "S7", "EtherNet/IP"

    def __init__(
        self,
        clock: Clock,
        client: Framer[F],
        server: Framer[F],
        *,
        limiter: TokenBucket | None,
        max_queued: int,
    ) -> None:
        self._clock = clock
        self._flow = RequestFlow(limiter, max_queued)
        self._client, self._server = client, server

    @abstractmethod
    def _client_frame(self, now: datetime, frame: F) -> tuple[bytes, bytes, Record | None]:
        """(bytes to forward, refusal to answer, record) for one client frame; raises
        :class:`OtProtocolError` if it is malformed."""

    @abstractmethod
    def _server_frame(self, now: datetime, frame: F) -> Record | None:
        """The record one server frame answers, if any; raises :class:`OtProtocolError`."""

    def _held_request(self) -> bytes:
        """Request bytes held back (fragments) that a malformed stream also stops."""
        return b""

    @property
    def accepting(self) -> bool:
        return self._flow.accepting

    @property
    def drained(self) -> bool:
        return self._flow.drained

    def from_client(self, data: bytes) -> Verdicts:
        now = self._clock.now()
        if self._flow.closed is not None or self._flow.closing:
            return Verdicts(close=self._flow.closed)
        frames, rest, error = self._client.feed(data)
        records = self._flow.expire(now)
        forward, replies = bytearray(), bytearray(self._flow.ready())
        for i, frame in enumerate(frames):
            try:
                out, reply, record = self._client_frame(now, frame)
            except OtProtocolError as exc:
                error, rest = exc, b"".join(f.raw for f in frames[i:]) + rest
                break
            forward += out
            replies += reply
            if record is not None:
                records.append(record)
        forward += self._flow.release(now)  # what came before a malformed frame still goes
        if error is not None:
            return self._malformed(
                now, "request", error, rest, records, bytes(forward), bytes(replies)
            )
        return Verdicts(
            bytes(forward), bytes(replies), tuple(records), None, self._flow.next_at(now)
        )

    def from_server(self, data: bytes) -> Verdicts:
        now = self._clock.now()
        frames, rest, error = self._server.feed(data)
        records = self._flow.expire(now)
        answers = bytearray(self._flow.ready())
        for i, frame in enumerate(frames):
            try:
                record = self._server_frame(now, frame)
            except OtProtocolError as exc:
                error, rest = exc, b"".join(f.raw for f in frames[i:]) + rest
                break
            answers += frame.raw + self._flow.ready()
            if record is not None:
                records.append(record)
        if error is not None:
            return self._malformed(now, "response", error, rest, records, b"", bytes(answers))
        return Verdicts(self._flow.release(now), bytes(answers), tuple(records), self._flow.closed,
                        self._flow.next_at(now))  # fmt: skip

    def poll(self) -> Verdicts:
        now = self._clock.now()
        records = tuple(self._flow.expire(now))
        to_client = self._flow.ready()
        return Verdicts(
            self._flow.release(now), to_client, records, poll_at=self._flow.next_at(now)
        )

    def begin_close(self, reason: str) -> Verdicts:
        self._flow.closing = True
        records = tuple(self._flow.discard(f"session closing: {reason}"))
        return Verdicts(to_client=self._flow.ready(), records=records)

    def finish(self) -> list[Record]:
        return self._flow.finish()

    def _malformed(self, now: datetime, what: str, error: OtProtocolError, rest: bytes,
                   records: list[Record], forward: bytes, replies: bytes) -> Verdicts:  # fmt: skip
        framer = self._client if what == "request" else self._server
        stopped = rest + framer.fail(error.message)
        if what == "request":
            stopped = self._held_request() + stopped
        closed = self._flow.closed = (
            self._flow.closed or f"malformed {self.label} {what}: {error.message}"
        )
        records.append(malformed_record(now, self.protocol, stopped, closed))
        records += self._flow.discard(closed)
        return Verdicts(forward, replies, tuple(records), closed, None, stopped)
