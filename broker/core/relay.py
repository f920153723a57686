"""One forwarded TCP connection (``ssh -L`` / ``conduit forward``): vendor ⇄ agent channel.

Every connection is recorded as pcap (synthetic TCP/IP headers: tshark decodes Modbus, OPC UA,
S7, EtherNet/IP). For an inspected protocol (:mod:`sessions.ot.registry`: Modbus/TCP, S7comm,
EtherNet/IP) its :class:`sessions.ot.base.Inspector` sits in the middle: requests the
obligations refuse get the protocol's own refusal from the broker and never reach the PLC,
the allowed ones are paced to the policy's rate, every operation goes to the JSONL operations
log, and refused, engineering or dangerous operations raise an alert (``ot.refused``,
``ot.dangerous``; audit event and the broker's webhook; ``details.protocol`` names the
protocol). A malformed frame closes the connection: it is audited (``ot.malformed``, outcome
``refused``), its bytes and everything after it in the same read are written to the pcap in
the direction they were sent (never forwarded), and the ops log gets a ``refused`` record with
their hex. Other protocols are relayed as bytes with counts and timing.

Ending: :meth:`ForwardRelay.stop` stops new requests, lets transactions already sent to the
PLC be answered for up to ``drain_s`` (inspected protocols), then cuts the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from broker.gateway.channel import AgentChannel
from broker.runtime.live_sessions import LiveSession
from broker.runtime.session_recorder import TcpRecording
from sessions.clock import Clock
from sessions.models import AuditOutcome
from sessions.ot.base import Inspector, OpClass, Verdicts

log = logging.getLogger("conduit.forward")

CHUNK = 65536
ASSET_CLOSED = "asset closed the connection"  # what run() returns when the agent side ended
# What the audit event of a malformed frame carries from its ops-log record.
_MALFORMED_DETAILS = ("protocol", "transaction_id", "unit", "function", "raw", "raw_length")


class StreamReader(Protocol):
    async def read(self, n: int = -1, /) -> bytes: ...


class StreamWriter(Protocol):
    def write(self, data: bytes, /) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...


# (audit kind, details) — audited, and sent to the webhook when it is an alert
Alert = Callable[[str, dict[str, Any]], None]
# The audit outcome of each alert kind: a refused request is the policy's deny; a malformed
# frame is stopped on the wire by the broker itself.
ALERT_OUTCOMES: Mapping[str, str] = {
    "ot.refused": AuditOutcome.DENY,
    "ot.dangerous": AuditOutcome.OK,
    "ot.malformed": AuditOutcome.REFUSED,
}


class ForwardRelay:
    """Relays one connection; ``run`` returns the end reason. Event-loop confined."""

    def __init__(
        self,
        *,
        vendor_in: StreamReader,
        vendor_out: StreamWriter,
        channel: AgentChannel,
        session: LiveSession | None,
        clock: Clock,
        recording: TcpRecording | None,
        inspector: Inspector | None,
        alert: Alert,
        drain_s: float = 2.0,
    ) -> None:
        self._in, self._out, self._channel = vendor_in, vendor_out, channel
        self._session, self._clock = session, clock
        self._recording, self._inspector, self._alert = recording, inspector, alert
        self._drain_s = drain_s
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._poll: asyncio.TimerHandle | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.end_reason = ""

    # ---- bookkeeping --------------------------------------------------------------------

    def _activity(self, up: int = 0, down: int = 0) -> None:
        self.bytes_up += up
        self.bytes_down += down
        if self._session is not None:
            self._session.bytes_up += up
            self._session.bytes_down += down
            self._session.last_activity = self._clock.now()

    def _to_server(self, data: bytes) -> None:
        if data:
            self._channel.write(data)
            if self._recording is not None:
                self._recording.client_data(data)
            self._activity(up=len(data))

    def _to_client(self, data: bytes, *, from_broker: bool = False) -> None:
        if data:
            self._out.write(data)
            if self._recording is not None:
                # Exception answers the broker made up are in the pcap too (as the PLC's side):
                # the capture shows what the vendor's tool saw.
                self._recording.server_data(data)
            self._activity(down=0 if from_broker else len(data))

    def _apply(self, verdicts: Verdicts, *, plc_answers: bool = False) -> None:
        self._to_server(verdicts.to_server)
        self._to_client(verdicts.to_client, from_broker=not plc_answers)
        if verdicts.malformed and self._recording is not None:
            # Stopped bytes are evidence: kept in the direction they were sent, never relayed.
            if plc_answers:
                self._recording.server_data(verdicts.malformed)
            else:
                self._recording.client_data(verdicts.malformed)
        malformed: dict[str, Any] = {}
        for record in verdicts.records:
            if self._recording is not None:
                self._recording.operation(record)
            if "raw" in record:  # the malformed frame: reported once, as ot.malformed
                malformed = {k: record.get(k) for k in _MALFORMED_DETAILS}
                continue
            refused = record.get("allowed") is False
            dangerous = record.get("class") in OpClass.ALERTED
            if refused or dangerous:
                kind = "ot.refused" if refused else "ot.dangerous"
                self._alert(kind, dict(record))
        if verdicts.close and not self._stop.is_set():
            self._alert("ot.malformed", {**malformed, "reason": verdicts.close})
            self.stop(verdicts.close)
        if verdicts.poll_at is not None:
            self._schedule_poll(verdicts.poll_at)

    def _schedule_poll(self, when: datetime) -> None:
        if self._poll is not None:
            self._poll.cancel()
        delay = max(0.0, (when - self._clock.now()).total_seconds())
        self._poll = asyncio.get_running_loop().call_later(delay, self._on_poll)

    def _on_poll(self) -> None:
        self._poll = None
        if self._inspector is not None:
            self._apply(self._inspector.poll())

    # ---- the two directions -------------------------------------------------------------

    async def _upstream(self) -> None:
        while True:
            data = await self._in.read(CHUNK)
            if not data:
                return
            if self._inspector is None:
                self._to_server(data)
            else:
                self._apply(self._inspector.from_client(data))
                # The inspector is sans-IO (no event to wait on); this wait is short and rare.
                while not self._inspector.accepting and not self._stop.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # back-pressure: queue full, stop reading
            await self._channel.drain()

    async def _downstream(self) -> None:
        while True:
            data = await self._channel.read(CHUNK)
            if not data:
                return
            if self._inspector is None:
                self._to_client(data)
            else:
                self._apply(self._inspector.from_server(data), plc_answers=True)
            await self._out.drain()

    # ---- lifecycle ----------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def run(self) -> str:
        reason = "closed"
        up = asyncio.create_task(self._upstream())
        down = asyncio.create_task(self._downstream())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({up, down, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                reason = self._stop_reason
            elif up in done:
                reason = "vendor closed the connection"
                self._channel.write_eof()
                # The PLC may still answer what it was sent.
                await asyncio.wait(
                    {down, stop}, timeout=self._drain_s, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                reason = ASSET_CLOSED
            if self._inspector is not None and not down.done():
                self._apply(self._inspector.begin_close(reason))
                deadline = asyncio.get_running_loop().time() + self._drain_s
                while not self._inspector.drained and not down.done():
                    if asyncio.get_running_loop().time() >= deadline:
                        break
                    await asyncio.sleep(0.01)
            return reason
        finally:
            for task in (up, down, stop):
                task.cancel()
            for task in (up, down, stop):
                with contextlib.suppress(BaseException):
                    await task
            if self._poll is not None:
                self._poll.cancel()
            if self._inspector is not None:
                for record in self._inspector.finish():
                    if self._recording is not None:
                        self._recording.operation(record)
            self._channel.close()
            with contextlib.suppress(Exception):
                self._out.close()
            self.end_reason = reason
            if self._recording is not None:
                await self._recording.aclose(reason)
