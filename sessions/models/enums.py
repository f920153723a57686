"""The enumerated columns' values: each class holds string constants and an ``ALL`` tuple."""

from __future__ import annotations

from typing import ClassVar


class Criticality:
    """How bad it is if an asset misbehaves."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"
    ALL: ClassVar[tuple[str, ...]] = (LOW, MEDIUM, HIGH, CRITICAL)


class AgentState:
    """Agent enrolment: ``pending`` until approved, ``revoked`` is final."""

    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    ALL: ClassVar[tuple[str, ...]] = (PENDING, ACTIVE, REVOKED)


class OperationClass:
    """What a vendor may do to an asset; ``ALL`` is ordered from least to most dangerous."""

    READ_ONLY = "read_only"
    TUNE = "tune"
    PROGRAM = "program"
    FIRMWARE = "firmware"
    ALL: ClassVar[tuple[str, ...]] = (READ_ONLY, TUNE, PROGRAM, FIRMWARE)


class AccessRequestState:
    """Lifecycle of an access request."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    ALL: ClassVar[tuple[str, ...]] = (PENDING, APPROVED, DENIED, CANCELLED, EXPIRED)


class ApprovalVerdict:
    """One approver's decision."""

    APPROVE = "approve"
    DENY = "deny"
    ALL: ClassVar[tuple[str, ...]] = (APPROVE, DENY)


class GrantState:
    """Lifecycle of a grant (the authorization a session runs under)."""

    PENDING = "pending"
    APPROVED = "approved"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    DENIED = "denied"
    CANCELLED = "cancelled"
    ALL: ClassVar[tuple[str, ...]] = (
        PENDING,
        APPROVED,
        ACTIVE,
        EXPIRED,
        REVOKED,
        DENIED,
        CANCELLED,
    )


class SessionKind:
    """How a maintenance session reaches the asset."""

    SSH = "ssh"
    SFTP = "sftp"
    TCP = "tcp"
    WEB_TERMINAL = "web_terminal"
    ALL: ClassVar[tuple[str, ...]] = (SSH, SFTP, TCP, WEB_TERMINAL)


class SessionState:
    """Lifecycle of a maintenance session; ``closed`` and ``failed`` are final."""

    STARTING = "starting"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"
    ALL: ClassVar[tuple[str, ...]] = (STARTING, ACTIVE, CLOSING, CLOSED, FAILED)


class RecordingFormat:
    """File format of a recording."""

    ASCIICAST = "asciicast"
    PCAP = "pcap"
    OPS_JSONL = "ops_jsonl"
    ALL: ClassVar[tuple[str, ...]] = (ASCIICAST, PCAP, OPS_JSONL)


class RecordingIntegrity:
    """Result of the last verification of a recording."""

    UNKNOWN = "unknown"
    OK = "ok"
    BROKEN = "broken"
    ALL: ClassVar[tuple[str, ...]] = (UNKNOWN, OK, BROKEN)


class AuditOutcome:
    """Outcome recorded with an audit event."""

    OK = "ok"
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"
    REJECTED = "rejected"
    REFUSED = "refused"  # the enforcement point stopped something on the wire (e.g. a bad frame)
    ALL: ClassVar[tuple[str, ...]] = (OK, ALLOW, DENY, ERROR, REJECTED, REFUSED)


class ApiTokenKind:
    """What an API token is for."""

    CLI = "cli"
    ALL: ClassVar[tuple[str, ...]] = (CLI,)


class CliAuthorizationKind:
    """How the CLI obtains its token (RFC 8628 device flow or loopback redirect)."""

    DEVICE = "device"
    LOOPBACK = "loopback"
    ALL: ClassVar[tuple[str, ...]] = (DEVICE, LOOPBACK)


class CliAuthorizationState:
    """Lifecycle of a CLI authorization; ``consumed`` means the token was issued once."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CONSUMED = "consumed"
    EXPIRED = "expired"
    ALL: ClassVar[tuple[str, ...]] = (PENDING, APPROVED, DENIED, CONSUMED, EXPIRED)
