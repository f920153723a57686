"""One maintenance session: a user's connection to one asset under exactly one grant.

:class:`MaintenanceSession` is front-end neutral; a front end (today the SSH front door,
:mod:`broker.ssh.vendor`) makes one per signed-in connection and implements
:class:`SessionEdge`. The session owns:

* **authorization** — :meth:`MaintenanceSession.authorize` runs for every channel and forward
  (:meth:`sessions.maintenance.MaintenanceService.authorize`: active grant + policy), serialized
  per session: the first binds the session to its grant, every later one is decided against
  that grant only. The signed-in credential is checked each time (a revoked one is refused
  and audited as ``session.denied``).
* **the live-session record** (:class:`broker.runtime.live_sessions.LiveSession`), made by the
  first authorization; the watchdog, revoke, lockout, the credential watch and an admin's kill
  end the session through it.
* **the asset link** (:mod:`broker.core.asset_link`) and the forward relays it runs
  (:mod:`broker.core.forward`).
* **its tasks**: everything it starts goes through :meth:`MaintenanceSession.own`;
  :meth:`MaintenanceSession.aclose` waits for all of them (and the link's).
* **ending**: :meth:`MaintenanceSession.end` (idempotent) takes an
  :class:`sessions.session_end.Ending` (reason code, text, outcome), tells the edge, stops the
  asset's commands and the relays (OT answers already asked for still come back), closes the
  user's connection shortly after and, once the session's recordings have closed, closes its
  row (``session.ended`` audited once with the outcome, the reason code and each recording's
  final chain hash, by :meth:`sessions.maintenance.MaintenanceService.close`). When the user
  leaves, :meth:`MaintenanceSession.client_ending` says why: the connection was lost, a channel
  was refused just before, the last command failed, or a clean exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from broker.core.asset_link import AssetLink
from broker.core.relay import ForwardRelay
from broker.gateway.agent_gateway import AgentGateway
from broker.keys.ssh import SshKeys
from broker.runtime.live_sessions import LiveSession, LiveSessions
from broker.runtime.session_recorder import RecorderFactory
from sessions.access import AccessDenied
from sessions.audit import AuditLog
from sessions.clock import Clock
from sessions.credentials import AuthContext, CredentialRef, CredentialRefused
from sessions.maintenance import Authorization, MaintenanceService
from sessions.recording import RecordingError
from sessions.session_end import EndCode, Ending, recording_entry

if TYPE_CHECKING:
    from broker.core.forward import RateLimiters

log = logging.getLogger("conduit.session")


@contextlib.contextmanager
def _logged(step: str) -> Iterator[None]:
    """Run one step of ending a session; an error is logged, never raised (the rest runs)."""
    try:
        yield
    except Exception:
        log.exception("ending a session: %s failed", step)


# session.ended names the final hash of every recording, so it waits for them to close; one
# that has not closed by then is listed as incomplete.
EVIDENCE_WAIT_S = 15.0

# After the end: the reason line reaches the user first; forwards also get their OT answers.
CLOSE_DELAY_S = 0.2
DRAIN_DELAY_S = 2.0

# The credential the connection signed in with, looked up now (raises CredentialRefused).
CredentialCheck = Callable[[], Awaitable[tuple[AuthContext, CredentialRef]]]
# (kind, subject, details): audit + webhook
AlertSink = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class Target:
    """What the user asked for: log in as ``login`` on ``asset`` (under grant ``grant_prefix``)."""

    login: str
    asset: str
    grant_prefix: str | None = None


class Recorder(Protocol):
    """What a terminal channel records into (an asciicast recorder)."""

    def output(self, data: bytes) -> None: ...

    def input(self, data: bytes) -> None: ...

    def resize(self, width: int, height: int) -> None: ...

    async def finish(self, reason: str) -> bool:
        """Close and wait: True if the recording is complete (strict: False ends the session)."""
        ...


class Evidence(Protocol):
    """A recording (or a forward's set of recordings) the session produced."""

    async def evidence(self, wait_s: float) -> list[dict[str, Any]]:
        """Wait up to ``wait_s`` for it to close; its :func:`recording_entry` items."""
        ...


@dataclass(frozen=True)
class SessionDeps:
    """What every session of a front door shares."""

    maintenance: MaintenanceService
    gateway: Callable[[], AgentGateway | None]
    audit: AuditLog
    clock: Clock
    live: LiveSessions
    recorder: RecorderFactory
    keys: SshKeys
    pin_host_key: Callable[[str, str], None]  # (asset name, OpenSSH host key) learned on first use
    alert: AlertSink
    limiters: RateLimiters
    track_credential: Callable[[str, CredentialRef], None]  # (session id, credential): watched
    default_idle_timeout_s: float


class SessionEdge(Protocol):
    """The front end's side of a session (an SSH connection; later a WebSocket)."""

    def ending(self, reason: str) -> None:
        """The session ends: tell the user why and stop every terminal channel (called once,
        before anything else is closed)."""
        ...

    def disconnect(self, reason: str, *, forwarding: bool) -> None:
        """Close the user's connection (called :data:`CLOSE_DELAY_S` after :meth:`ending`)."""
        ...


class MaintenanceSession:
    """One connection's session. Event-loop confined. Owner: the front end that made it, which
    calls :meth:`end` when its connection goes and awaits :meth:`aclose`."""

    def __init__(
        self,
        deps: SessionDeps,
        *,
        target: Target,
        user_id: str,
        peer: str | None,
        credential: CredentialCheck,
        credential_details: Mapping[str, object],
        edge: SessionEdge,
    ) -> None:
        """``credential_details`` go into the audit event of a refused credential (the SSH
        front door: the certificate's serial)."""
        self.deps, self.target, self.user_id, self.peer = deps, target, user_id, peer
        self._credential, self._credential_details = credential, credential_details
        self._edge = edge
        self.record: LiveSession | None = None  # from the first authorization on
        self.auth: Authorization | None = None  # the first authorization (binds the grant)
        self.link: AssetLink | None = None
        self.ended: str | None = None
        self.ending: Ending | None = None
        self.relays: set[ForwardRelay] = set()
        self._evidence: list[Evidence] = []
        self._lost: list[dict[str, Any]] = []  # recordings that could not start
        self._refusal: Ending | None = None  # the last channel refused, until one starts
        self._exit: int | str | None = None  # the last terminal channel's exit
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwards = 0

    # ---- authorization ------------------------------------------------------------------

    async def authorize(
        self, kind: str, *, host: str | None = None, port: int | None = None
    ) -> Authorization:
        """Authorize one channel (``ssh``, ``sftp``) or forward (``tcp``, to ``host:port``);
        the first opens the session, and a terminal channel the asset link's SSH login.

        Raises :class:`AccessDenied` (refused, audited; or the session has ended), and what
        :meth:`AssetLink.connect` raises.
        """
        self._check_open()
        signed_in, credential = await self._signed_in(kind)
        gateway = self.deps.gateway()
        live = gateway.live() if gateway is not None else {}
        async with self._lock:
            bound = self.record
            mark = self.deps.live.mark()
            auth = await self.deps.maintenance.authorize(
                user_id=self.user_id,
                asset_name=self.target.asset,
                kind=kind,
                login=self.target.login,
                host=host,
                port=port,
                source_ip=self.peer,
                agent_online=lambda agent_id: agent_id is not None and agent_id in live,
                auth=signed_in,
                credential=credential.label,
                bound=bound is not None,
                grant_id=bound.grant_id if bound is not None else None,
                grant_prefix=self.target.grant_prefix,
            )
            self._check_open()
            link = self.link
            if link is None:
                link = await self._open(auth, kind, mark)
                assert self.record is not None
                self.deps.track_credential(self.record.id, credential)
            if kind != "tcp" and not link.connected:
                await link.connect(auth, self.target.login)
            self._check_open()  # ended while the asset login was being made
        return auth

    def _check_open(self) -> None:
        if self.ended is not None:
            raise AccessDenied(f"session ended: {self.ended}", (self.ended,))

    async def _signed_in(self, kind: str) -> tuple[AuthContext, CredentialRef]:
        try:
            return await self._credential()
        except CredentialRefused as exc:
            reason = f"credential refused: {exc.message}"
            await self.deps.audit.record(
                "session.denied",
                actor=self.user_id,
                outcome="deny",
                subject=f"asset:{self.target.asset}",
                details={"kind": kind, "reasons": [reason], **self._credential_details},
            )
            raise AccessDenied(reason, (reason,)) from None

    async def _open(self, auth: Authorization, kind: str, mark: int) -> AssetLink:
        d, login = self.deps, self.target.login
        session_id = await asyncio.to_thread(
            d.maintenance.open, auth, kind=kind, login=login, source_ip=self.peer
        )
        now = d.clock.now()
        grant_end = auth.grant is not None and auth.deadline == auth.grant.ends_at
        idle = auth.decision.obligations.idle_timeout_s or d.default_idle_timeout_s
        self.auth = auth
        self.record = LiveSession(
            id=session_id,
            kind=kind,
            user_id=auth.user.id,
            user=auth.user.email or auth.user.name or auth.user.sub,
            asset=auth.asset.name,
            login=login,
            grant_id=auth.grant.id if auth.grant else None,
            source_ip=self.peer,
            started_at=now,
            deadline=auth.deadline,
            deadline_reason=Ending(EndCode.GRANT_EXPIRED, "grant window ended")
            if grant_end
            else Ending(EndCode.MAX_DURATION, "maximum session duration reached"),
            idle_timeout_s=float(idle),
            last_activity=now,
            kill=self.end,
        )
        self.link = AssetLink(
            session_id=session_id,
            actor=auth.user.id,
            keys=d.keys,
            gateway=d.gateway,
            pin_host_key=d.pin_host_key,
            audit=d.audit,
        )
        d.live.add(self.record, since=mark)  # ends it at once if its grant ended meanwhile
        if self.ending is not None and not self.record.ended:
            # end() ran while the row was being opened: it had no record to close then.
            self.record.ended = True
            d.live.remove(session_id)
            self.own(self._close_row(self.record, self.ending))
        self._check_open()
        return self.link

    # ---- while it runs ------------------------------------------------------------------

    @property
    def strict_recording(self) -> bool:
        """Whether a recording failure ends the session (policy ``record`` is not best effort)."""
        return self.auth is None or self.auth.decision.obligations.record != "best_effort"

    def activity(self, *, up: int = 0, down: int = 0) -> None:
        """Bytes moved: counted, and the idle timer restarts."""
        record = self.record
        if record is not None:
            record.bytes_up += up
            record.bytes_down += down
            record.last_activity = self.deps.clock.now()

    def kill(self, ending: Ending) -> None:
        """End the session through the live registry (as the watchdog and an admin do)."""
        if self.record is not None:
            self.deps.live.kill(self.record.id, ending)

    def recording_failed(self, text: str) -> None:
        """A strict recording failed while the session ran: end it (``recording_failed``)."""
        self.kill(Ending(EndCode.RECORDING_FAILED, text))

    def recording_refused(self, text: str, *, recording_id: str | None = None) -> None:
        """A strict recording could not start: the session ends (``recording_refused``);
        ``recording_id`` (a forward's pcap) is listed as incomplete."""
        if recording_id is not None:
            why = f"could not start: {text}"
            self._lost.append(recording_entry(recording_id, "pcap", None, why))
        self.kill(Ending(EndCode.RECORDING_REFUSED, text))

    def keep(self, evidence: Evidence) -> None:
        """A recording this session started: ``session.ended`` names its final hash."""
        self._evidence.append(evidence)

    def channel_refused(self, code: str, text: str) -> None:
        """A channel or forward was refused (authorization, asset unreachable): if the user
        leaves before another one starts, that is why the session ended."""
        self._refusal = Ending(code, text)

    def channel_started(self) -> None:
        self._refusal = None

    def exited(self, status: int | None, signal: str | None) -> None:
        """A terminal channel's command ended (its exit status, or the signal)."""
        self._exit = signal if signal is not None else status

    def client_ending(self, exc: Exception | None) -> Ending:
        """Why the session ends when the user's connection goes: lost, or the user left
        (after a refusal; after a failed command; or cleanly)."""
        if exc is not None:
            return Ending(EndCode.CONNECTION_LOST, f"connection lost: {exc}")
        if self._refusal is not None:
            return self._refusal
        if self._exit is not None and self._exit != 0:
            return Ending(
                EndCode.ASSET_EXIT_NONZERO,
                f"client disconnected after the command ended with {self._exit}",
                {"exit": self._exit},
            )
        return Ending(EndCode.CLIENT_DISCONNECTED, "client disconnected")

    async def terminal_recorder(
        self, number: int, width: int, height: int, *, pty: bool
    ) -> Recorder | None:
        """Start recording terminal channel ``number`` (None: recording is off). Raises
        RecordingError when a strict recording cannot start (the caller refuses the channel
        and kills the session)."""
        record = self.record
        assert record is not None, "authorize first"
        title = f"{record.user} → {self.target.login}@{record.asset}"
        try:
            recorder = await self.deps.recorder(
                record.id,
                number,
                width,
                height,
                title,
                strict=self.strict_recording,
                on_failure=self.recording_failed,
                pty=pty,
            )
        except RecordingError as exc:  # the caller refuses the channel, then ends the session
            why = f"could not start: {exc.message}"
            self._lost.append(recording_entry(f"{record.id}-{number}", "asciicast", None, why))
            raise
        if recorder is not None:
            self.keep(recorder)
        return recorder

    def next_forward(self) -> int:
        self._forwards += 1
        return self._forwards

    def own(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task this session holds until it is done (:meth:`aclose` waits)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- ending -------------------------------------------------------------------------

    def end(self, ending: Ending) -> None:
        """End the whole session now (idempotent): the edge tells the user and stops its
        channels, the asset's commands are signalled, relays drain, the connection closes
        shortly after and, once its recordings have closed, the session's row is closed
        (``session.ended`` audited once, with ``ending``'s outcome and reason code and each
        recording's final chain hash)."""
        if self.ended is not None:
            return
        reason = ending.text
        self.ended, self.ending = reason, ending
        forwarding = bool(self.relays)
        # Each step guarded: one that raises must not leave the row or the live entry open.
        with _logged("telling the front end"):
            self._edge.ending(reason)
        if self.link is not None:
            with _logged("closing the asset link"):
                self.link.close()
        for relay in list(self.relays):
            with _logged("stopping a relay"):
                relay.stop(reason)  # OT: answers to requests already sent are still delivered
        self.own(self._disconnect_later(reason, forwarding))
        record = self.record
        if record is not None:
            record.ended = True
            self.deps.live.remove(record.id)
            self.own(self._close_row(record, ending))

    async def _disconnect_later(self, reason: str, forwarding: bool) -> None:
        await asyncio.sleep(CLOSE_DELAY_S + (DRAIN_DELAY_S if forwarding else 0.0))
        self._edge.disconnect(reason, forwarding=forwarding)

    async def _recordings(self) -> list[dict[str, Any]]:
        """Every recording of the session, once closed (or listed as incomplete)."""
        found = await asyncio.gather(*(e.evidence(EVIDENCE_WAIT_S) for e in self._evidence))
        return [*self._lost, *(entry for entries in found for entry in entries)]

    async def _close_row(self, record: LiveSession, ending: Ending) -> None:
        try:
            recordings = await self._recordings()
            await asyncio.to_thread(
                self.deps.maintenance.close,
                record.id,
                ending,
                bytes_up=record.bytes_up,
                bytes_down=record.bytes_down,
                recordings=recordings,
            )
        except Exception:
            log.exception("closing session %s failed", record.id)

    async def aclose(self) -> None:
        """Wait for every task the session and its link started. Call after :meth:`end`."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.link is not None:
            await self.link.aclose()
