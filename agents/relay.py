"""Data channels at the agent: the declared-endpoint check, the TCP relay, expiry, kill switch.

Every channel the broker asks for passes :meth:`ChannelTable.admit` (kill switch off, endpoint
declared in the agent's own config, expiry in the future and within ``max_channel_s``, channel
limit) before any connection to the asset is attempted. An admitted channel is closed, whatever
the broker does, when its ``expires_at`` passes (by the agent's own clock), when the kill switch
is engaged, or when either side closes. Time comes from an injected ``wall`` clock function.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agents.config import AgentConfig
from agents.wire import KILL_SWITCH_REASON, ChannelInfo, OpenRequest

log = logging.getLogger("conduit.agent")

CHUNK = 256 * 1024
# What relay() returns when a peer, not the agent, ended the channel (nothing to explain).
PEER_CLOSES = ("broker side closed", "asset side closed")


class Refused(Exception):
    """The agent will not open this channel; the message is the reason sent to the broker."""


@dataclass
class Channel:
    request: OpenRequest
    broker: str
    task: asyncio.Task[None] | None = None
    bytes_up: int = 0  # broker → asset
    bytes_down: int = 0  # asset → broker
    close_reason: str = ""
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self) -> ChannelInfo:
        r = self.request
        return ChannelInfo(r.ref, r.host, r.port, r.expires_at, self.bytes_up, self.bytes_down)

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self._closed.set()


class ChannelTable:
    """All live data channels of one agent process, across every broker connection."""

    def __init__(self, config: AgentConfig, wall: Callable[[], float] = time.time) -> None:
        self._config, self._wall = config, wall
        self._channels: dict[str, Channel] = {}
        self.kill_switch = False

    def __len__(self) -> int:
        return len(self._channels)

    def infos(self) -> tuple[ChannelInfo, ...]:
        return tuple(c.info() for c in self._channels.values())

    def admit(self, request: OpenRequest, broker: str) -> Channel:
        """Register a channel or raise :class:`Refused` with the reason."""
        if self.kill_switch:
            raise Refused(KILL_SWITCH_REASON)
        if not self._config.declares(request.host, request.port):
            raise Refused(f"{request.host}:{request.port} is not declared by this agent")
        now = self._wall()
        if request.expires_at <= now:
            raise Refused("grant already expired")
        if request.expires_at > now + self._config.max_channel_s:
            raise Refused("expiry is beyond this agent's max_channel_s")
        if len(self._channels) >= self._config.max_channels:
            raise Refused("too many open channels")
        if request.ref in self._channels:
            raise Refused("duplicate channel ref")
        channel = Channel(request, broker)
        self._channels[request.ref] = channel
        return channel

    def release(self, channel: Channel) -> None:
        self._channels.pop(channel.request.ref, None)

    def close_all(self, reason: str, broker: str | None = None) -> int:
        """Close every channel (of ``broker`` only, if given); returns how many."""
        victims = [c for c in self._channels.values() if broker is None or c.broker == broker]
        for channel in victims:
            channel.close(reason)
        return len(victims)

    def engage_kill_switch(self) -> int:
        self.kill_switch = True
        return self.close_all(KILL_SWITCH_REASON)

    def release_kill_switch(self) -> None:
        self.kill_switch = False

    def seconds_left(self, channel: Channel) -> float:
        return max(0.0, channel.request.expires_at - self._wall())


class Reader(Protocol):
    async def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> None: ...

    async def drain(self) -> None: ...


async def _pump(src: Reader, dst: Writer, count: Callable[[int], None]) -> None:
    while True:
        data = await src.read(CHUNK)
        if not data:
            return
        dst.write(data)
        count(len(data))
        await dst.drain()


async def relay(
    table: ChannelTable,
    channel: Channel,
    chan_reader: Reader,
    chan_writer: Writer,
    asset_reader: asyncio.StreamReader,
    asset_writer: asyncio.StreamWriter,
) -> str:
    """Copy bytes both ways until a side closes, expiry, or a close request; returns why."""

    def up(n: int) -> None:
        channel.bytes_up += n

    def down(n: int) -> None:
        channel.bytes_down += n

    to_asset = asyncio.create_task(_pump(chan_reader, asset_writer, up))
    to_broker = asyncio.create_task(_pump(asset_reader, chan_writer, down))
    closed = asyncio.create_task(channel._closed.wait())
    expiry = asyncio.create_task(asyncio.sleep(table.seconds_left(channel)))
    tasks = {to_asset, to_broker, closed, expiry}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if expiry in done:
            reason = "grant expired"
        elif closed in done:
            reason = channel.close_reason or "closed"
        elif to_asset in done:
            reason = "broker side closed"
            # Half-close: let the asset's answer come back (bounded by expiry/close).
            with contextlib.suppress(OSError):
                if asset_writer.can_write_eof():
                    asset_writer.write_eof()
            done2, _ = await asyncio.wait(
                {to_broker, closed, expiry}, return_when=asyncio.FIRST_COMPLETED
            )
            if expiry in done2:
                reason = "grant expired"
            elif closed in done2:
                reason = channel.close_reason or "closed"
        else:
            reason = "asset side closed"
        return reason
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        asset_writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asset_writer.wait_closed(), 1.0)
