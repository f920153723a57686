"""Why a maintenance session ended, as ``session.ended`` records it.

Every way a session ends maps to one :class:`Ending`: a machine-readable ``code`` (stable; for
alerting and reports), the human ``text`` (what the vendor was told) and the audit ``outcome``
(:class:`sessions.models.AuditOutcome`). The rule for the outcome:

* ``ok`` — the user ended it and everything worked (the client disconnected; the last command
  exited 0), or it reached the end it was granted (the grant window or the maximum duration);
* ``deny`` — access was withdrawn or refused by a decision: revoked, lockout, eligibility lost,
  the credential revoked, an administrator's kill, the plant's agent kill switch, idle timeout,
  a channel refused by authorization before the user left;
* ``refused`` — the enforcement point would not let it run: a strict recording could not start;
* ``error`` — something failed: a strict recording failed while the session ran, the agent
  went away, the connection was lost, the asset was unreachable or the last command failed
  (non-zero exit or a signal), the broker shut down under it.

``session.ended`` also lists the recordings the session produced (:func:`recording_entry`),
each with its final chain hash or ``incomplete`` and why, so the audit chain binds the
evidence (:mod:`sessions.recording_end` checks a recording against it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sessions.models import AuditOutcome

SESSION_ENDED = "session.ended"


class EndCode:
    """The machine-readable reasons (``details.reason_code`` of ``session.ended``)."""

    CLIENT_DISCONNECTED = "client_disconnected"
    CONNECTION_LOST = "connection_lost"
    ASSET_EXIT_NONZERO = "asset_exit_nonzero"
    ASSET_UNREACHABLE = "asset_unreachable"
    AUTHORIZATION_REFUSED = "authorization_refused"
    GRANT_EXPIRED = "grant_expired"
    MAX_DURATION = "max_duration"
    IDLE_TIMEOUT = "idle_timeout"
    REVOKED = "grant_revoked"
    LOCKOUT = "lockout"
    ELIGIBILITY_LOST = "eligibility_lost"
    CREDENTIAL_REVOKED = "credential_revoked"
    ADMIN_KILL = "admin_kill"
    KILL_SWITCH = "agent_kill_switch"
    AGENT_GONE = "agent_gone"
    RECORDING_REFUSED = "recording_refused"
    RECORDING_FAILED = "recording_failed"
    BROKER_SHUTDOWN = "broker_shutdown"
    GRANT_ENDED = "grant_ended"  # a grant end this broker does not know more about

    OUTCOMES: Mapping[str, str] = {
        CLIENT_DISCONNECTED: AuditOutcome.OK,
        GRANT_EXPIRED: AuditOutcome.OK,
        MAX_DURATION: AuditOutcome.OK,
        CONNECTION_LOST: AuditOutcome.ERROR,
        ASSET_EXIT_NONZERO: AuditOutcome.ERROR,
        ASSET_UNREACHABLE: AuditOutcome.ERROR,
        AGENT_GONE: AuditOutcome.ERROR,
        RECORDING_FAILED: AuditOutcome.ERROR,
        BROKER_SHUTDOWN: AuditOutcome.ERROR,
        RECORDING_REFUSED: AuditOutcome.REFUSED,
        AUTHORIZATION_REFUSED: AuditOutcome.DENY,
        IDLE_TIMEOUT: AuditOutcome.DENY,
        REVOKED: AuditOutcome.DENY,
        LOCKOUT: AuditOutcome.DENY,
        ELIGIBILITY_LOST: AuditOutcome.DENY,
        CREDENTIAL_REVOKED: AuditOutcome.DENY,
        ADMIN_KILL: AuditOutcome.DENY,
        KILL_SWITCH: AuditOutcome.DENY,
        GRANT_ENDED: AuditOutcome.DENY,
    }


@dataclass(frozen=True)
class Ending:
    """One session's end: ``code`` (an :class:`EndCode`), ``text`` for people, ``outcome``
    derived from the code. ``extra`` goes into the event (e.g. the last exit status)."""

    code: str
    text: str
    extra: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.code not in EndCode.OUTCOMES:
            raise ValueError(f"unknown session end code {self.code!r}")

    @property
    def outcome(self) -> str:
        return EndCode.OUTCOMES[self.code]


# What sessions.access says when it ends a grant (on_grant_ended's reason), by prefix.
_GRANT_ENDS = (
    ("grant expired", EndCode.GRANT_EXPIRED),
    ("grant revoked: eligibility lost", EndCode.ELIGIBILITY_LOST),  # the re-check revoked it
    ("grant revoked", EndCode.REVOKED),
    ("emergency lockout", EndCode.LOCKOUT),
    ("eligibility lost", EndCode.ELIGIBILITY_LOST),
)


def grant_ending(text: str) -> Ending:
    """The ending of a session whose grant ended (``AccessService.on_grant_ended``'s reason)."""
    for prefix, code in _GRANT_ENDS:
        if text.startswith(prefix):
            return Ending(code, text)
    return Ending(EndCode.GRANT_ENDED, text)


INCOMPLETE = "incomplete"


def recording_entry(
    recording_id: str, kind: str, final_chain: str | None, why: str | None = None
) -> dict[str, Any]:
    """One recording in ``session.ended``: its final chain hash, or ``incomplete`` and why."""
    if final_chain is not None:
        return {"id": recording_id, "kind": kind, "final_chain": final_chain}
    return {"id": recording_id, "kind": kind, "final_chain": INCOMPLETE, "why": why or "unknown"}


def ended_details(
    ending: Ending,
    *,
    bytes_up: int,
    bytes_down: int,
    recordings: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The details of ``session.ended``."""
    return {
        "reason": ending.text[:500],
        "reason_code": ending.code,
        **dict(ending.extra or {}),
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "recordings": [dict(r) for r in recordings],
    }
