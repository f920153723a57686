"""One connected agent as this broker sees it: health for the admin views, the channels it
carries, and its control-frame budget (the flood guard)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import asyncssh

from agents.wire import WireError

FLOOD_WINDOW_S = 1.0


@dataclass(eq=False)
class LiveAgent:
    """One connected agent, as this broker sees it (health for the admin views)."""

    agent_id: str
    name: str
    conn: asyncssh.SSHClientConnection
    peer: str
    connected_at: datetime
    last_seen: datetime
    version: str = ""
    hostname: str = ""
    endpoints: int = 0
    kill_switch: bool = False
    channels: int = 0  # channels this broker opened and has not seen closed
    agent_channels: int = 0  # what the agent's last heartbeat reported
    control: asyncssh.SSHClientChannel[bytes] | None = None
    hello: asyncio.Event = field(default_factory=asyncio.Event)
    # Refs of channels this broker asked for whose close/refusal the agent has not reported:
    # those reports are expected protocol traffic, exempt from the flood guard (once each).
    expected: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _window_start: datetime | None = None
    _window_frames: int = 0

    def expect(self, ref: str, limit: int) -> None:
        self.expected[ref] = None
        while len(self.expected) > limit:  # channels whose report never came: forget the oldest
            self.expected.popitem(last=False)

    def charge(self, frames: int, now: datetime, per_second: int) -> None:
        """Count ``frames`` the agent sent on its own; :class:`WireError` (``flood``) past
        ``per_second`` in one window. A clock that went back starts a new window."""
        start = self._window_start
        if start is None or not 0 <= (now - start).total_seconds() < FLOOD_WINDOW_S:
            self._window_start, self._window_frames = now, 0
        self._window_frames += frames
        if self._window_frames > per_second:
            raise WireError("control frame rate exceeded", code="flood")
