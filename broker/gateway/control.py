"""An agent's control channel: its frames read, validated and acted on.

Every frame is size-limited and validated (:mod:`agents.wire`); any violation drops the
agent's connection with an ``agent.protocol_error`` audit event. The flood guard
(``agents.max_frames_per_s``) counts only what the agent says on its own: its hello and
heartbeats and anything unexpected. A ``closed``/``refused`` report for a channel this broker
asked for is the protocol's own traffic and costs nothing, once per channel; a report for a
channel nobody asked for, or a second one for the same channel, counts like any other frame.
After a valid hello the broker sends ``welcome`` (offering ``events`` frames).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from agents.wire import (
    MAX_FRAME,
    ChannelEvent,
    Heartbeat,
    Hello,
    LineFramer,
    Welcome,
    WireError,
    parse_events,
)
from broker.gateway.agent_audit import AgentAudit
from broker.gateway.live_agent import LiveAgent
from sessions.clock import Clock

log = logging.getLogger("conduit.gateway")

CHANNEL_REPORTS = ("refused", "closed", "events")


class ControlFrames:
    """Acts on the frames of every agent's control channel (on the event loop; never blocks).

    ``on_hello(live, hello)`` is called once per tunnel, after its hello was accepted.
    """

    def __init__(
        self,
        audit: AgentAudit,
        clock: Clock,
        max_frames_per_s: int,
        on_hello: Callable[[LiveAgent, Hello], None],
    ) -> None:
        self._audit, self._clock = audit, clock
        self._max_frames_per_s, self._on_hello = max_frames_per_s, on_hello

    def on_frame(self, live: LiveAgent, frame: dict[str, Any]) -> None:
        """Act on one frame; :class:`WireError` when it is malformed, unexpected or a flood."""
        kind = frame.get("type")
        if live.hello.is_set() and kind in CHANNEL_REPORTS:
            self._channel_reports(live, str(kind), frame)
            return
        live.charge(1, self._clock.now(), self._max_frames_per_s)
        live.last_seen = self._clock.now()
        if not live.hello.is_set():
            self._hello(live, Hello.parse(frame))
        elif kind == "heartbeat":
            beat = Heartbeat.parse(frame)
            live.agent_channels, live.kill_switch = beat.count, beat.kill_switch
        else:
            raise WireError(f"unexpected control frame {str(kind)[:40]!r}", code="unexpected")

    def protocol_error(self, live: LiveAgent, code: str, message: str) -> None:
        """Drop the agent's tunnel for a protocol violation (audited once)."""
        if live.conn.is_closed():
            return
        log.warning("agent %s: protocol error %s: %s; dropping", live.agent_id, code, message)
        self._audit.post("agent.protocol_error", live, outcome="error", code=code, message=message)
        live.conn.close()

    def _channel_reports(self, live: LiveAgent, kind: str, frame: dict[str, Any]) -> None:
        events = parse_events(frame) if kind == "events" else (ChannelEvent.parse(frame),)
        unexpected = 0
        for event in events:
            if event.ref in live.expected:
                del live.expected[event.ref]
            else:
                unexpected += 1
        if unexpected:  # a frame reporting only channels we asked for costs nothing
            frames = 1 + unexpected if kind == "events" else 1
            live.charge(frames, self._clock.now(), self._max_frames_per_s)
        live.last_seen = self._clock.now()
        for event in events:
            self._audit.post(
                f"agent.channel.{event.kind}",
                live,
                outcome="deny" if event.kind == "refused" else "ok",
                ref=event.ref,
                endpoint=f"{event.host}:{event.port}",
                reason=event.reason,
            )

    def _hello(self, live: LiveAgent, hello: Hello) -> None:
        if hello.agent_id != live.agent_id:
            raise WireError("hello names another agent", code="identity")
        live.version, live.hostname = hello.version, hello.hostname
        live.endpoints, live.kill_switch = len(hello.endpoints), hello.kill_switch
        live.hello.set()
        if live.control is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                live.control.write(Welcome().encode())
        self._on_hello(live, hello)


class ControlSession(asyncssh.SSHClientSession[bytes]):
    """The broker's end of one agent's control channel."""

    def __init__(self, frames: ControlFrames, live: LiveAgent) -> None:
        self._frames, self._live = frames, live
        self._framer = LineFramer(MAX_FRAME)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        try:
            frames = self._framer.feed(data)
        except WireError as exc:
            self._frames.protocol_error(self._live, exc.code, exc.message)
            return
        for frame in frames:
            try:
                self._frames.on_frame(self._live, frame)
            except WireError as exc:
                self._frames.protocol_error(self._live, exc.code, exc.message)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        live = self._live
        if live.control is not None and not live.conn.is_closed():
            # The control channel is the agent's lifeline: without it, the tunnel is dropped.
            live.conn.close()
