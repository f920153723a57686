"""Opening one forward (``ssh -L`` / ``conduit forward``) of a maintenance session.

Only to a declared endpoint of the session's asset that its grant covers
(:meth:`broker.core.session.MaintenanceSession.authorize` with kind ``tcp``). Inspection
follows the endpoint's *declared* protocol (:func:`sessions.ot.registry.plugin_for`, whatever
its port); policy decides whether an uninspected protocol may pass. The protocol's module
parses its own obligations: a block it refuses closes the channel, is audited
(``ot.obligations_refused``) and refuses the forward (fail closed). Every forward is recorded
as pcap (and its operations, when inspected); alerts carry the session, user, grant, endpoint
and protocol. Nothing here knows a protocol by name.
"""

from __future__ import annotations

from typing import Any

import asyncssh

from broker.core.asset_link import error_text
from broker.core.relay import ASSET_CLOSED, ForwardRelay, StreamReader, StreamWriter
from broker.core.session import MaintenanceSession
from broker.gateway.channel import AgentChannel, AgentUnavailable, ChannelRefused
from broker.runtime.session_recorder import TcpRecording
from sessions.access import AccessDenied
from sessions.clock import Clock
from sessions.maintenance import Authorization
from sessions.ot.base import Inspector, ObligationsError, ProtocolPlugin
from sessions.ot.pacing import TokenBucket
from sessions.ot.registry import plugin_for
from sessions.recording import RecordingError
from sessions.session_end import EndCode

# The pcap's made-up client address when the user's is unknown (RFC 2544 benchmark range).
UNKNOWN_CLIENT = "198.18.0.1"


class RateLimiters:
    """The OT request-rate bucket of each asset endpoint, shared by all its sessions."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def get(self, key: str, rate: float | None) -> TokenBucket | None:
        """``key``'s bucket at ``rate`` requests/s (a new one when the rate changed); None if
        the policy sets no rate."""
        if rate is None:
            return None
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key] = TokenBucket(rate, self._clock)
        return bucket


class ForwardRefused(Exception):
    """The forward cannot open; ``prohibited``: refused by policy (else: cannot connect)."""

    def __init__(self, message: str, *, prohibited: bool) -> None:
        super().__init__(message)
        self.message, self.prohibited = message, prohibited


class Forward:
    """One authorized forward, its agent channel open and its recording started."""

    def __init__(
        self,
        session: MaintenanceSession,
        auth: Authorization,
        channel: AgentChannel,
        recording: TcpRecording | None,
        inspector: Inspector | None,
    ) -> None:
        self._session, self._auth, self._channel = session, auth, channel
        self._recording, self._inspector = recording, inspector

    def _alert(self, kind: str, details: dict[str, Any]) -> None:
        record, endpoint = self._session.record, self._auth.endpoint
        self._session.deps.alert(
            kind,
            f"asset:{self._auth.asset.name}",
            {
                **details,
                "session": record.id if record else None,
                "user": record.user if record else None,
                "grant": record.grant_id if record else None,
                "endpoint": f"{endpoint.name} {endpoint.host}:{endpoint.port}",
                "protocol": endpoint.protocol,
                "port": endpoint.port,
            },
        )

    async def run(self, user_in: StreamReader, user_out: StreamWriter) -> None:
        """Relay until either side ends or the session does; if the agent ended the channel
        (kill switch) or went away, the whole session ends and says why."""
        session = self._session
        if session.ended is not None:  # ended between opening and running: relay nothing
            self._channel.close()
            if self._recording is not None:
                await self._recording.aclose(session.ended)
            user_out.close()
            return
        relay = ForwardRelay(
            vendor_in=user_in,
            vendor_out=user_out,
            channel=self._channel,
            session=session.record,
            clock=session.deps.clock,
            recording=self._recording,
            inspector=self._inspector,
            alert=self._alert,
        )
        session.relays.add(relay)
        try:
            ended = await relay.run()
        finally:
            session.relays.discard(relay)
        if ended == ASSET_CLOSED and session.link is not None:
            asset = self._auth.asset
            told = await session.link.channel_ended_by_agent(
                self._channel, asset.name, asset.agent_id
            )
            if told is not None:
                session.kill(told)


async def open_forward(session: MaintenanceSession, host: str, port: int) -> Forward:
    """Authorize and open a forward to ``host:port``. Raises :class:`ForwardRefused`."""
    try:
        auth = await session.authorize("tcp", host=host, port=port)
    except AccessDenied as exc:
        session.channel_refused(EndCode.AUTHORIZATION_REFUSED, f"access denied: {exc.message}")
        raise ForwardRefused(exc.message, prohibited=True) from None
    except (ChannelRefused, AgentUnavailable, asyncssh.Error, OSError) as exc:
        why = error_text(exc)
        session.channel_refused(EndCode.ASSET_UNREACHABLE, f"cannot reach the asset: {why}")
        raise ForwardRefused(why, prohibited=False) from None
    assert session.link is not None
    assert session.record is not None
    try:
        channel = await session.link.open_channel(auth)
    except (ChannelRefused, AgentUnavailable) as exc:
        session.channel_refused(EndCode.ASSET_UNREACHABLE, f"cannot reach the asset: {exc.message}")
        raise ForwardRefused(exc.message, prohibited=False) from None
    plugin = plugin_for(auth.endpoint.protocol)
    inspector = await _inspector(session, plugin, auth, channel)
    number = session.next_forward()
    try:
        recording = await session.deps.recorder.tcp(
            session.record.id,
            number,
            client=(session.peer or UNKNOWN_CLIENT, 40000 + number % 20000),
            server=(auth.endpoint.host, auth.endpoint.port),
            operations=inspector is not None,
            well_known_port=None if plugin is None else plugin.well_known_port,
            strict=auth.decision.obligations.record != "best_effort",
            on_failure=session.recording_failed,
        )
    except Exception as exc:
        channel.close()
        if isinstance(exc, RecordingError):  # strict: no recording, no session
            recording_id = f"{session.record.id}-tcp{number}"
            session.recording_refused(exc.message, recording_id=recording_id)
        raise ForwardRefused(error_text(exc), prohibited=False) from None
    if recording is not None:
        session.keep(recording)
    if session.ended is not None:  # ended while the forward was opening: nothing is relayed
        channel.close()
        if recording is not None:
            await recording.aclose(session.ended)
        raise ForwardRefused(f"session ended: {session.ended}", prohibited=True)
    session.channel_started()
    return Forward(session, auth, channel, recording, inspector)


async def _inspector(
    session: MaintenanceSession,
    plugin: ProtocolPlugin | None,
    auth: Authorization,
    channel: AgentChannel,
) -> Inspector | None:
    """The endpoint protocol's inspector (None: plain TCP); a policy block the protocol
    module refuses closes the channel, is audited and refuses the forward (fail closed)."""
    if plugin is None:
        return None
    obligations, endpoint, asset = auth.decision.obligations, auth.endpoint, auth.asset.name
    deps = session.deps
    limiter = deps.limiters.get(f"{asset}/{endpoint.name}", obligations.rate_limit_rps)
    try:
        return plugin.inspector(obligations, deps.clock, limiter)
    except ObligationsError as exc:
        channel.close()
        await deps.audit.record(
            "ot.obligations_refused",
            actor=session.user_id,
            outcome="error",
            subject=f"asset:{asset}",
            details={"endpoint": endpoint.name, "protocol": endpoint.protocol,
                     "reason": exc.message},
        )  # fmt: skip
        raise ForwardRefused(exc.message, prohibited=True) from None
