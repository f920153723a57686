"""A data channel to an asset through a connected agent, and how one is asked for.

:func:`request_channel` sends the agent an :class:`agents.wire.OpenRequest` as an SSH session
command and reads its one-line reply; :class:`AgentChannel` is the byte stream once the agent
said yes. Refusals raise :class:`ChannelRefused` (with the agent's reason); an agent with no
tunnel to this broker, :class:`AgentUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncssh

from agents.wire import MAX_CLOSE_REASON, OpenRequest
from broker.runtime.errors import BrokerError

REPLY_LIMIT = 4096
# asyncssh is at both ends of this hop: larger packets and window mean fewer Python-level
# packet operations per megabyte (the default 32 KiB packet is sized for unknown peers).
CHANNEL_WINDOW = 4 << 20
CHANNEL_PACKET = 128 << 10
CLOSE_REASON_WAIT_S = 1.0


class AgentUnavailable(BrokerError):
    code = "agent_offline"
    status = 503


class ChannelRefused(BrokerError):
    code = "channel_refused"
    status = 502


class AgentChannel:
    """A byte stream to an asset through an agent (``read``/``write``/``drain``/``close``)."""

    def __init__(
        self,
        reader: asyncssh.SSHReader[bytes],
        writer: asyncssh.SSHWriter[bytes],
        prefix: bytes,
        ref: str,
        on_close: Callable[[], None],
        stderr: asyncssh.SSHReader[bytes] | None = None,
    ) -> None:
        self._reader, self._writer, self._prefix = reader, writer, prefix
        self._stderr = stderr
        self.ref = ref
        self._on_close: Callable[[], None] | None = on_close

    async def read(self, n: int = -1) -> bytes:
        if self._prefix:
            data, self._prefix = (
                (self._prefix, b"") if n < 0 else (self._prefix[:n], self._prefix[n:])
            )
            return data
        try:
            return await self._reader.read(n)
        except (asyncssh.Error, OSError):
            return b""

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def close_reason(self) -> str:
        """The agent's close reason (its stderr line, see :mod:`agents.wire`), once the
        channel has ended; "" if it gave none."""
        if self._stderr is None:
            return ""
        try:
            async with asyncio.timeout(CLOSE_REASON_WAIT_S):  # it comes before the close
                data = await self._stderr.read(MAX_CLOSE_REASON + 1)
        except (TimeoutError, asyncssh.Error, OSError):
            return ""
        lines = data.decode("utf-8", "replace").splitlines()
        return lines[0][:MAX_CLOSE_REASON] if lines else ""  # ChannelEnd.said cleans it

    async def drain(self) -> None:
        await self._writer.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._writer.write_eof()

    def close(self) -> None:
        self._writer.channel.close()
        self._closed()

    async def wait_closed(self) -> None:
        await self._writer.channel.wait_closed()
        self._closed()

    def _closed(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


# What the agent answered: its session's writer, reader and stderr, and the bytes read so far
# (the reply line, then possibly the first bytes from the asset).
Opened = tuple[
    asyncssh.SSHWriter[bytes], asyncssh.SSHReader[bytes], asyncssh.SSHReader[bytes], bytes
]


async def request_channel(
    conn: asyncssh.SSHClientConnection, request: OpenRequest, timeout_s: float
) -> Opened:
    """Ask the agent for ``request`` and read up to its reply line (or ``REPLY_LIMIT`` bytes).

    Raises :class:`ChannelRefused` when the agent does not answer within ``timeout_s`` or the
    session fails; the half-open session is closed then.
    """
    opened: list[asyncssh.SSHWriter[bytes]] = []  # to close if no valid reply comes
    try:
        async with asyncio.timeout(timeout_s):
            writer, reader, stderr = await conn.open_session(
                command=request.encode_command(),
                encoding=None,
                window=CHANNEL_WINDOW,
                max_pktsize=CHANNEL_PACKET,
            )
            opened.append(writer)
            buf = b""
            while b"\n" not in buf:
                chunk = await reader.read(REPLY_LIMIT)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > REPLY_LIMIT and b"\n" not in buf:
                    break
    except TimeoutError:
        for w in opened:
            w.channel.close()
        raise ChannelRefused(f"agent did not answer within {timeout_s} s") from None
    except (asyncssh.Error, OSError) as exc:
        for w in opened:
            w.channel.close()
        raise ChannelRefused(f"agent refused the channel: {exc}") from None
    return writer, reader, stderr, buf
