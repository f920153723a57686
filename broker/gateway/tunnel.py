"""An asyncssh *tunnel* over an agent: SSH to an asset runs directly on an agent data channel.

``asyncssh.connect(host, port, tunnel=AgentTunnel(...))`` calls :meth:`create_connection`,
which opens an ``exec`` data channel on the agent's connection (an :class:`OpenRequest` with
the grant's expiry), waits for the agent's one-line answer, and only then hands the channel to
the SSH protocol as its transport — no extra socket or copy. A refusal raises
:class:`broker.gateway.channel.ChannelRefused` with the agent's reason. Why the agent
ended the
channel (its stderr line, or its connection lost) is kept in :attr:`AgentTunnel.ended`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncssh

from agents.wire import (
    KILL_SWITCH_REASON,
    MAX_CLOSE_REASON,
    OpenRequest,
    WireError,
    parse_open_reply,
)
from broker.gateway.agent_gateway import AgentGateway
from broker.gateway.channel import (
    CHANNEL_PACKET,
    CHANNEL_WINDOW,
    REPLY_LIMIT,
    AgentUnavailable,
    ChannelRefused,
)


class ChannelEnd:
    """Why the agent ended a data channel: its stderr line, or its connection was lost."""

    def __init__(self) -> None:
        self.reason = ""
        self.lost = False

    def said(self, data: bytes) -> None:
        """Keep the first line (printable characters only: it reaches the vendor's terminal)."""
        text = (self.reason + data.decode("utf-8", "replace")).splitlines()
        first = text[0] if text else ""
        self.reason = "".join(c for c in first if c.isprintable())[:MAX_CLOSE_REASON]

    def explain(self, asset: str) -> str | None:
        """The vendor's one line about it, or None if the agent did not end it."""
        if self.reason == KILL_SWITCH_REASON:
            return "the plant's agent stopped all sessions (kill switch)"
        if self.reason:
            return f"the agent for {asset} ended the connection ({self.reason})"
        if self.lost:
            return f"the agent for {asset} disconnected"
        return None


class _AckShim(asyncssh.SSHClientSession[bytes]):
    """Consumes the agent's answer line, then forwards everything to the real protocol."""

    def __init__(
        self, factory: Callable[[], Any], ready: asyncio.Future[Any], ended: ChannelEnd
    ) -> None:
        self._factory, self._ready, self._ended = factory, ready, ended
        self._buf = b""
        self._inner: Any = None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:  # the agent's close reason, never SSH
            self._ended.said(data)
            return
        if self._inner is not None:
            self._inner.data_received(data, datatype)
            return
        self._buf += data
        if b"\n" not in self._buf:
            if len(self._buf) > REPLY_LIMIT:
                self._fail(ChannelRefused("agent sent an oversized reply"))
            return
        line, _, rest = self._buf.partition(b"\n")
        self._buf = b""
        try:
            ok, reason = parse_open_reply(line)
        except WireError:
            self._fail(ChannelRefused("agent sent a malformed reply"))
            return
        if not ok:
            self._fail(ChannelRefused(reason or "refused by the agent"))
            return
        assert self._chan is not None
        self._inner = self._factory()
        self._inner.connection_made(self._chan)
        if not self._ready.done():
            self._ready.set_result(self._inner)
        if rest:
            self._inner.data_received(rest, datatype)

    def _fail(self, exc: Exception) -> None:
        if not self._ready.done():
            self._ready.set_exception(exc)
        if self._chan is not None:
            self._chan.close()

    def eof_received(self) -> bool:
        if self._inner is not None:
            return bool(self._inner.eof_received())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:  # the whole agent connection went, not just this channel
            self._ended.lost = True
        if self._inner is not None:
            self._inner.connection_lost(exc)
        else:
            self._fail(ChannelRefused(f"agent closed the channel: {exc or 'no answer'}"))

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class AgentTunnel:
    """The ``tunnel=`` object for ``asyncssh.connect``: one agent, one expiry."""

    def __init__(
        self,
        gateway: AgentGateway,
        agent_id: str,
        *,
        expires_at: datetime,
        ref: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._gateway, self._agent_id = gateway, agent_id
        self._expires_at, self._ref, self._timeout = expires_at, ref, timeout_s
        self.channel: asyncssh.SSHClientChannel[bytes] | None = None
        self.ended = ChannelEnd()

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[asyncssh.SSHClientChannel[bytes], Any]:
        live = self._gateway.live().get(self._agent_id)
        if live is None or not live.hello.is_set() or live.conn.is_closed():
            raise AgentUnavailable(f"agent {self._agent_id} is not connected to this broker")
        request = OpenRequest(
            remote_host,
            remote_port,
            self._expires_at.timestamp(),
            *([self._ref] if self._ref else []),
        )
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._timeout):
                chan, _ = await live.conn.create_session(
                    lambda: _AckShim(session_factory, ready, self.ended),
                    command=request.encode_command(),
                    encoding=None,
                    window=CHANNEL_WINDOW,
                    max_pktsize=CHANNEL_PACKET,
                )
                self.channel = chan
                inner = await ready
        except TimeoutError:
            raise ChannelRefused(f"agent did not answer within {self._timeout} s") from None
        except (asyncssh.Error, OSError) as exc:
            raise ChannelRefused(f"agent refused the channel: {exc}") from None
        return chan, inner

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    async def wait_closed(self) -> None:
        if self.channel is not None:
            await self.channel.wait_closed()
