"""Per-packet costs of asyncssh that Conduit's AEAD-only SSH legs do not need.

Every leg Conduit runs (vendor → front door, broker ↔ agent, broker → asset) negotiates
AES-GCM or ChaCha20-Poly1305 only. asyncssh 2.x pays three costs on each packet that matter
for a relay, where the per-packet Python work *is* the latency:

1. Before every packet after key exchange it sends an empty ``SSH_MSG_IGNORE``: the
   countermeasure of RFC 4251 §9.3.1 against chosen-plaintext attacks on CBC with a
   predictable IV. AEAD ciphers have no chained IV, so for them the ignore packet only
   doubles the packets, encryptions, syscalls and peer wake-ups. With an AEAD cipher we skip
   it; with any other cipher the countermeasure stays.
2. Every received packet cancels and re-creates the keep-alive timer. Instead we note the
   time and, when the timer fires early because traffic came in meanwhile, re-arm it for the
   rest of the interval: same semantics (a keep-alive probe after ``keepalive_interval`` of
   silence, the connection dropped after ``keepalive_count_max`` unanswered probes).
3. Every packet sent or received is described for the packet log (names and sizes formatted)
   before the logger checks whether packet logging (``asyncssh.set_debug_level(3)``) is on.
   We check first.

:func:`install` applies all three to asyncssh's connection class, once per process, and is called
by every module that opens or accepts Conduit SSH connections. It checks the asyncssh
internals it relies on and leaves asyncssh untouched (logging a warning) if they changed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import asyncssh
from asyncssh import connection as _connection
from asyncssh import encryption as _encryption
from asyncssh import logging as _logging
from asyncssh import packet as _packet
from asyncssh.constants import MSG_IGNORE

log = logging.getLogger(__name__)

_AEAD = (_encryption.GCMEncryption, _encryption.ChachaEncryption)
_EMPTY_STRING = b"\x00\x00\x00\x00"  # asyncssh.packet.String(b"")
_lock = threading.Lock()
_installed = False


def _supported() -> bool:
    cls: Any = _connection.SSHConnection
    needed = ("send_packet", "_reset_keepalive_timer", "_keepalive_timer_callback")
    return (
        all(hasattr(cls, name) for name in needed)
        and hasattr(_packet.SSHPacketLogger, "_log_packet")
        and isinstance(getattr(_logging.SSHLogger, "_debug_level", None), int)
    )


def install() -> bool:
    """Apply the two changes (idempotent, thread safe); False if asyncssh is not as expected."""
    global _installed
    with _lock:
        if _installed:
            return True
        if not _supported():
            log.warning(
                "asyncssh %s: internals changed, per-packet tuning not applied",
                asyncssh.__version__,
            )
            return False
        cls: Any = _connection.SSHConnection
        send_packet = cls.send_packet
        keepalive_callback = cls._keepalive_timer_callback
        packet_logger: Any = _packet.SSHPacketLogger
        log_packet = packet_logger._log_packet
        ssh_logger: Any = _logging.SSHLogger

        def aead_send_packet(self: Any, pkttype: int, *args: bytes, **kwargs: Any) -> None:
            if (
                pkttype == MSG_IGNORE
                and args == (_EMPTY_STRING,)
                and isinstance(self._send_encryption, _AEAD)
            ):
                return  # the CBC countermeasure; an AEAD cipher needs none
            send_packet(self, pkttype, *args, **kwargs)

        def lazy_reset_keepalive_timer(self: Any) -> None:
            if self._auth_complete:
                self._conduit_last_rx = self._loop.time()
                interval = self._keepalive_interval
                if self._keepalive_timer is None or self._conduit_armed != interval:
                    # First packet, or set_keepalive() changed the interval: arm afresh.
                    self._cancel_keepalive_timer()
                    self._set_keepalive_timer()
                    self._conduit_armed = interval

        def lazy_keepalive_callback(self: Any) -> None:
            interval = self._keepalive_interval
            if not interval:
                self._keepalive_timer = None
                return
            quiet = self._loop.time() - self._conduit_last_rx
            if quiet < interval:
                # Traffic came in since the timer was armed: wait out the rest of the interval.
                self._keepalive_timer = self._loop.call_later(
                    interval - quiet, self._keepalive_timer_callback
                )
                return
            keepalive_callback(self)

        # Class defaults, so connections made before install() keep working.
        cls._conduit_last_rx = float("-inf")
        cls._conduit_armed = None

        def checked_log_packet(self: Any, *args: Any) -> None:
            if ssh_logger._debug_level >= 3:  # what SSHLogger.packet() checks, after formatting
                log_packet(self, *args)

        cls.send_packet = aead_send_packet
        cls._reset_keepalive_timer = lazy_reset_keepalive_timer
        cls._keepalive_timer_callback = lazy_keepalive_callback
        packet_logger._log_packet = checked_log_packet
        _installed = True
        return True
