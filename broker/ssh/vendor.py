"""One vendor SSH connection: sign-in, then an adapter from asyncssh's callbacks to the core.

Authentication is identity only: a certificate from the broker's user CA whose principals
include ``u:<user id>`` and ``c:<serial>``, or clientless keyboard-interactive (the vendor
types a code into the broker's page, :mod:`broker.ssh.clientless`). Once signed in, the
connection makes one :class:`broker.core.session.MaintenanceSession` and implements its
:class:`broker.core.session.SessionEdge`; channels (:mod:`broker.ssh.channel`) and ``ssh -L``
forwards (:mod:`broker.core.forward`) are authorized and run by that session. A refusal reaches
the vendor as one line on stderr (``conduit: ...``) or as the channel-open failure text.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.stream import SSHTCPStreamSession

from broker.core.forward import ForwardRefused, open_forward
from broker.core.session import MaintenanceSession, Target
from broker.keys.ssh import SERIAL_PREFIX
from broker.ssh.channel import VendorChannel
from broker.ssh.clientless import ClientlessRefused, Pending
from broker.ssh.signin import PrincipalCapture, parse_target
from sessions.access import AccessDenied
from sessions.credentials import AuthContext, CredentialRef

if TYPE_CHECKING:
    from broker.ssh.front import FrontDoor

MAX_DISCONNECT_MESSAGE = 200  # one line in the vendor's OpenSSH output
BAD_TARGET = "the user name must be LOGIN@ASSET"
UNKNOWN_USER = "unknown user certificate"


class VendorConnection(asyncssh.SSHServer):
    """One vendor connection = one maintenance session (possibly many channels)."""

    def __init__(self, door: FrontDoor) -> None:
        self.door, self.deps = door, door.deps
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer: str | None = None
        self.target: Target | None = None
        self.user_id: str | None = None
        self.cert_serial: int | None = None
        self.approval: Pending | None = None  # clientless: the approved code
        self.capture = PrincipalCapture(door.user_ca_line)
        self.session: MaintenanceSession | None = None
        self.channels: set[VendorChannel] = set()
        self._channel_no = 0
        self.pending: Pending | None = None
        self.clientless_tried = False
        self._login_timer: asyncio.TimerHandle | None = None
        self._code_timer: asyncio.TimerHandle | None = None  # a clientless code is shown
        self._close_channels_first = False

    # ---- authentication -----------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        loop = asyncio.get_running_loop()
        self._login_timer = loop.call_later(self.deps.settings.login_timeout_s, self._login_due)

    def _login_due(self) -> None:
        self._login_timer = None
        if self.conn is None or self.conn.get_extra_info("username") is not None:
            return  # signed in (asyncssh sets the user name once authentication succeeded)
        if self._code_timer is not None:
            return  # a clientless code is shown; its expiry calls this again
        self.door.login_timed_out(self)

    def _code_expired(self) -> None:
        self._code_timer = None
        if self._login_timer is None:  # the login timeout passed while the code was shown
            self._login_due()

    def begin_auth(self, username: str) -> bool:
        self.target = parse_target(username)
        assert self.conn is not None
        self.conn.set_authorized_keys(self.capture)
        if self.target is None:
            self.conn.send_auth_banner(
                "conduit: the user name must be LOGIN@ASSET, e.g. ssh root@plc-1@broker\r\n"
            )
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # plain keys never: only certificates from the user CA

    # Clientless: keyboard-interactive shows the approval page and a code the vendor types
    # there (broker/ssh/clientless.py); one code per connection, refusals as an auth banner.
    def kbdint_auth_supported(self) -> bool:
        return self.target is not None and not self.clientless_tried

    async def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]] | bool:
        if self.target is None or self.clientless_tried:
            return False
        self.clientless_tried = True
        clientless = self.deps.clientless
        try:
            login, asset = self.target.login, self.target.asset
            self.pending = await clientless.open(
                login=login, asset=asset, peer=self.peer, alive=self._still_connected
            )
        except ClientlessRefused as exc:
            self._auth_banner(exc.message)
            return False
        # The login timeout waits for the code (one second past its expiry).
        left = (self.pending.expires - self.deps.clock.now()).total_seconds()
        loop = asyncio.get_running_loop()
        self._code_timer = loop.call_later(max(0.0, left) + 1.0, self._code_expired)
        instructions = clientless.instructions(self.pending, self.deps.approve_url)
        return "Conduit sign-in", instructions, "", [("Press Enter once approved: ", True)]

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        pending, self.pending = self.pending, None
        if pending is None:
            return False
        try:
            self.user_id = await self.deps.clientless.wait(pending)
        except ClientlessRefused as exc:
            self._auth_banner(exc.message)
            return False
        self.approval = pending  # clientless: its amr comes from the approving browser session
        return True

    def _still_connected(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    def _auth_banner(self, message: str) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send_auth_banner(f"conduit: {message}\r\n")

    def auth_completed(self) -> None:
        if self.user_id is None:  # a certificate (clientless: the approving user is known)
            ids = [p[2:] for p in self.capture.principals if p.startswith("u:")]
            self.user_id = ids[0] if len(ids) == 1 else None
            serials = [
                p[len(SERIAL_PREFIX) :]
                for p in self.capture.principals
                if p.startswith(SERIAL_PREFIX)
            ]
            ok = len(serials) == 1 and serials[0].isdigit()
            self.cert_serial = int(serials[0]) if ok else None
        if self.target is not None and self.user_id is not None:
            self.session = self.door.new_session(self, self.target, self.user_id)

    async def credential(self) -> tuple[AuthContext, CredentialRef]:
        """The credential this connection signed in with, checked now (off the loop)."""
        creds, user_id = self.deps.credentials, self.user_id
        assert user_id is not None
        if self.approval is not None:
            return await asyncio.to_thread(creds.approval, self.approval)
        return await asyncio.to_thread(creds.certificate, self.cert_serial, user_id)

    # ---- channels -----------------------------------------------------------------------

    def signed_in_session(self) -> MaintenanceSession:
        """This connection's session; raises :class:`AccessDenied` when it has none (a user
        name that is not ``LOGIN@ASSET``, or a certificate without one user id)."""
        if self.session is not None:
            return self.session
        why = BAD_TARGET if self.target is None else UNKNOWN_USER
        raise AccessDenied(why, (why,))

    def session_requested(self) -> VendorChannel:
        self._channel_no += 1
        return VendorChannel(self, self._channel_no)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote forwarding into the vendor's network

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> Any:
        """``ssh -L``: opened by the core (:func:`broker.core.forward.open_forward`)."""
        try:
            forward = await open_forward(self.signed_in_session(), dest_host, dest_port)
        except AccessDenied as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"conduit: {exc.message}"
            ) from None
        except ForwardRefused as exc:
            code = (
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
                if exc.prohibited
                else asyncssh.OPEN_CONNECT_FAILED
            )
            raise asyncssh.ChannelOpenError(code, f"conduit: {exc.message}") from None
        return SSHTCPStreamSession(forward.run)

    # ---- the session's edge -------------------------------------------------------------

    def ending(self, reason: str) -> None:
        """The session ends: every channel tells the vendor why and stops its asset side."""
        self._close_channels_first = bool(self.channels)
        for channel in list(self.channels):
            channel.terminate(reason)

    def disconnect(self, reason: str, *, forwarding: bool) -> None:
        conn = self.conn
        if conn is None:
            return
        if self._close_channels_first:
            conn.close()  # the channels carried the reason line
        else:  # forwards only (`conduit forward`, ssh -N): the disconnect message says why
            message = f"conduit: session ended: {reason}"[:MAX_DISCONNECT_MESSAGE]
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, message)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._login_timer, self._code_timer):
            if timer is not None:
                timer.cancel()
        self._login_timer = self._code_timer = None
        session = self.session
        if session is not None:
            session.end(session.client_ending(exc))
            self.door.retire(session)
