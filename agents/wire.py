"""The agent ⇄ broker wire protocol: the one module broker and sessions may import from agents.

Transport: one SSH connection per (agent, broker), dialled by the agent (``connect_reverse``);
the agent plays the SSH *server* role with a host certificate signed by the broker's agent CA
(principal :data:`AGENT_PRINCIPAL`), the broker the *client* role, authenticating as
:data:`BROKER_USERNAME` with its gateway key, which the agent pinned at join time.

Over that connection the broker opens:

* one **control** channel (subsystem :data:`CONTROL_SUBSYSTEM`): newline-delimited JSON objects,
  each at most :data:`MAX_FRAME` bytes, both ways. Agent → broker: ``hello`` (once, first),
  ``heartbeat`` (at most one per :data:`MIN_HEARTBEAT_S`), ``refused`` (a channel the agent
  refused, for the audit log) and ``closed``, or — once the broker's ``welcome`` lists
  :data:`FEATURE_EVENTS` — ``events``: many ``refused``/``closed`` reports in one frame, so a
  mass close is a handful of frames rather than one per channel. Broker → agent: ``welcome``
  (after a valid hello: the optional features it accepts) and ``revoked`` (stop dialling this
  broker).
* one **data** channel per relayed TCP connection: an ``exec`` request whose command is an
  :class:`OpenRequest` JSON object. The agent answers with exactly one JSON line on stdout,
  ``{"ok": true}`` or ``{"ok": false, "reason": ...}``; after ``ok`` the channel carries raw
  bytes both ways until either side closes or the request's ``expires_at`` passes. When the
  agent itself ends the channel (kill switch, expiry, its own stop, revocation) it first
  writes the reason, one line of at most :data:`MAX_CLOSE_REASON` characters, on the
  channel's **stderr** (stdout stays the raw byte stream), e.g. :data:`KILL_SWITCH_REASON`;
  the broker tells the vendor why the session ended. An older broker ignores that stderr.

Compatibility within :data:`PROTOCOL_VERSION` 1: receivers ignore object keys they do not know,
agents ignore broker frames they do not know, and an agent sends a newer frame type only after
the broker's ``welcome`` offered it (an older broker never sends ``welcome``, so a newer agent
falls back to one frame per report). ``heartbeat`` lists as many channels as fit in a frame and
gives the full count in ``open_channels`` when the list was cut.

Everything received is validated here; anything malformed raises :class:`WireError` (with a
machine-readable ``code``) and the receiver drops the frame's sender. Stdlib only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

KILL_SWITCH_REASON = "local kill switch engaged"  # the close reason of `conduit-agent stop-all`
MAX_CLOSE_REASON = 200
PROTOCOL_VERSION = 1
CONTROL_SUBSYSTEM = "conduit-control@conduit"
BROKER_USERNAME = "conduit-broker"
AGENT_PRINCIPAL = "conduit-agent"
MAX_FRAME = 64 * 1024
MAX_ENDPOINTS = 1024
MAX_BATCH = 2048  # channel reports in one ``events`` frame (the frame limit binds first)
MAX_CHANNELS_REPORTED = 4096  # channel entries in one heartbeat
MIN_HEARTBEAT_S = 1.0  # an agent sends at most one heartbeat per second on each tunnel
FEATURE_EVENTS = "events"  # the broker accepts ``events`` frames
FEATURES = (FEATURE_EVENTS,)  # what this side of the protocol implements
TOKEN_PREFIX = "cjt1"  # noqa: S105 (a format marker, not a secret)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PROTOCOL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_REF = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


class WireError(Exception):
    """A frame, token or message that breaks the protocol; ``code`` is machine-readable."""

    def __init__(self, message: str, *, code: str = "malformed") -> None:
        super().__init__(message)
        self.message, self.code = message, code


# --------------------------------------------------------------------------- primitives


def check_host(value: object) -> str:
    """A DNS name or IP literal; raises :class:`WireError` otherwise."""
    if not isinstance(value, str):
        raise WireError("host must be a string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):  # not match: ``$`` also matches before a final \n
        raise WireError(f"host {value[:80]!r} is not a DNS name or IP address")
    return value.lower()


def check_port(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise WireError(f"port {value!r} is not 1-65535")
    return value


def _check(pattern: re.Pattern[str], value: object, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WireError(f"{what} {str(value)[:80]!r} is malformed")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)  # JSON ints may be too large for a float
        except OverflowError:
            pass
        else:
            if math.isfinite(number):  # json accepts NaN and Infinity
                return number
    raise WireError(f"{what} must be a finite number")


@dataclass(frozen=True, order=True)
class Endpoint:
    """One host:port an agent declares it may reach, with the protocol spoken there."""

    host: str
    port: int
    protocol: str = "tcp"
    name: str = ""

    @classmethod
    def parse(cls, raw: object) -> Endpoint:
        if not isinstance(raw, dict):
            raise WireError("endpoint must be an object")
        name = raw.get("name", "")
        if name:
            _check(_NAME, name, "endpoint name")
        return cls(
            host=check_host(raw.get("host")),
            port=check_port(raw.get("port")),
            protocol=_check(_PROTOCOL, raw.get("protocol", "tcp"), "protocol"),
            name=str(name),
        )

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "protocol": self.protocol, "name": self.name}

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- framing


def encode(message: dict[str, Any]) -> bytes:
    """One frame: compact JSON plus newline; raises :class:`WireError` if over the limit."""
    data = json.dumps(message, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    if len(data) > MAX_FRAME:
        raise WireError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}", code="frame_too_large")
    return data


class LineFramer:
    """Splits a byte stream into JSON-object frames, never buffering more than ``MAX_FRAME``."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Frames completed by ``data``; raises :class:`WireError` on an oversized/bad frame."""
        self._buf += data
        frames: list[dict[str, Any]] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self._limit:
                    raise WireError(
                        f"frame exceeds {self._limit} bytes without a newline",
                        code="frame_too_large",
                    )
                return frames
            if end > self._limit:
                raise WireError(f"frame exceeds {self._limit} bytes", code="frame_too_large")
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            frames.append(decode(line))

    @property
    def pending(self) -> int:
        return len(self._buf)


def decode(line: bytes) -> dict[str, Any]:
    """One frame's JSON object with a string ``type``; raises :class:`WireError`."""
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"frame is not JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise WireError("frame is not a JSON object")
    if not isinstance(value.get("type", value.get("op")), str):
        raise WireError("frame has no type")
    return value


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Hello:
    """The agent's first control frame: who it is and what it may reach (its inventory)."""

    agent_id: str
    version: str
    hostname: str
    endpoints: tuple[Endpoint, ...]
    kill_switch: bool = False
    protocol: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return encode(
            {
                "type": "hello",
                "protocol": self.protocol,
                "agent_id": self.agent_id,
                "version": self.version,
                "hostname": self.hostname,
                "endpoints": [e.as_dict() for e in self.endpoints],
                "kill_switch": self.kill_switch,
            }
        )

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Hello:
        if raw.get("type") != "hello":
            raise WireError("first control frame must be hello", code="unexpected")
        if type(raw.get("protocol")) is not int or raw["protocol"] != PROTOCOL_VERSION:
            raise WireError(
                f"protocol {str(raw.get('protocol'))[:20]!r} not supported", code="version"
            )
        endpoints = raw.get("endpoints")
        if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
            raise WireError(f"endpoints must be a list of at most {MAX_ENDPOINTS}")
        return cls(
            agent_id=_check(_REF, raw.get("agent_id"), "agent id"),
            version=_check(_REF, raw.get("version"), "version"),
            hostname=_check(_REF, raw.get("hostname") or "unknown", "hostname"),
            endpoints=tuple(sorted({Endpoint.parse(e) for e in endpoints})),
            kill_switch=raw.get("kill_switch") is True,
        )


@dataclass(frozen=True)
class ChannelInfo:
    ref: str
    host: str
    port: int
    expires_at: float
    bytes_up: int = 0
    bytes_down: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "host": self.host,
            "port": self.port,
            "expires_at": self.expires_at,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }

    @classmethod
    def parse(cls, raw: object) -> ChannelInfo:
        if not isinstance(raw, dict):
            raise WireError("channel must be an object")
        up, down = raw.get("bytes_up", 0), raw.get("bytes_down", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (up, down)):
            raise WireError("channel byte counts must be non-negative integers")
        return cls(
            ref=_check(_REF, raw.get("ref"), "channel ref"),
            host=check_host(raw.get("host")),
            port=check_port(raw.get("port")),
            expires_at=_number(raw.get("expires_at"), "expires_at"),
            bytes_up=int(up),
            bytes_down=int(down),
        )


@dataclass(frozen=True)
class Heartbeat:
    """The agent's periodic health report: its channels (as many as fit) and kill switch.

    ``open_channels`` is the full count when the list had to be cut to fit one frame
    (None: the list is complete); :attr:`count` is the number to believe either way.
    """

    channels: tuple[ChannelInfo, ...] = ()
    kill_switch: bool = False
    open_channels: int | None = None

    @property
    def count(self) -> int:
        return len(self.channels) if self.open_channels is None else self.open_channels

    def encode(self) -> bytes:
        """One frame, never over :data:`MAX_FRAME`: channels that do not fit are only counted."""
        budget = MAX_FRAME - 200  # the envelope and the count
        listed: list[dict[str, Any]] = []
        for channel in self.channels[:MAX_CHANNELS_REPORTED]:
            entry = channel.as_dict()
            budget -= len(json.dumps(entry, separators=(",", ":"))) + 1
            if budget < 0:
                break
            listed.append(entry)
        message: dict[str, Any] = {
            "type": "heartbeat",
            "channels": listed,
            "kill_switch": self.kill_switch,
        }
        if len(listed) < self.count:
            message["open_channels"] = self.count
        return encode(message)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Heartbeat:
        channels = raw.get("channels", [])
        if not isinstance(channels, list) or len(channels) > MAX_CHANNELS_REPORTED:
            raise WireError("heartbeat channels must be a list")
        total = raw.get("open_channels")
        if total is not None and (
            not isinstance(total, int)
            or isinstance(total, bool)
            or not len(channels) <= total <= 10_000_000
        ):
            raise WireError("heartbeat open_channels must be a count of at least the list")
        return cls(
            tuple(ChannelInfo.parse(c) for c in channels), raw.get("kill_switch") is True, total
        )


@dataclass(frozen=True)
class ChannelEvent:
    """``refused`` or ``closed``: a data channel the agent refused or ended, and why."""

    kind: str
    ref: str
    host: str
    port: int
    reason: str

    def encode(self) -> bytes:
        return encode(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "ref": self.ref,
            "host": self.host,
            "port": self.port,
            "reason": self.reason[:500],
        }

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ChannelEvent:
        kind = raw.get("type")
        if kind not in ("refused", "closed"):
            raise WireError(f"unknown channel event {str(kind)[:40]!r}")
        reason = raw.get("reason")
        if not isinstance(reason, str) or len(reason) > 500:
            raise WireError("reason must be a string of at most 500 characters")
        ref = raw.get("ref") or "-"
        host, port = raw.get("host"), raw.get("port")
        return cls(
            kind=str(kind),
            ref=_check(_REF, ref, "channel ref"),
            host=str(host)[:253] if isinstance(host, str) else "?",
            port=port if isinstance(port, int) and not isinstance(port, bool) else 0,
            reason=reason,
        )


def encode_events(events: list[ChannelEvent]) -> list[bytes]:
    """``events`` frames carrying ``events`` in order, each frame under :data:`MAX_FRAME`."""
    frames: list[bytes] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for event in events:
        entry = event.as_dict()
        length = len(json.dumps(entry, separators=(",", ":"))) + 1
        if batch and (size + length > MAX_FRAME - 64 or len(batch) >= MAX_BATCH):
            frames.append(encode({"type": "events", "events": batch}))
            batch, size = [], 0
        batch.append(entry)
        size += length
    if batch:
        frames.append(encode({"type": "events", "events": batch}))
    return frames


def parse_events(raw: dict[str, Any]) -> tuple[ChannelEvent, ...]:
    """The channel reports of one ``events`` frame (at least one, at most :data:`MAX_BATCH`)."""
    events = raw.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        raise WireError(f"events must be a list of 1 to {MAX_BATCH} channel reports")
    parsed: list[ChannelEvent] = []
    for event in events:
        if not isinstance(event, dict):
            raise WireError("a channel report must be an object")
        parsed.append(ChannelEvent.parse(event))
    return tuple(parsed)


@dataclass(frozen=True)
class Welcome:
    """The broker's answer to a valid hello: the optional protocol features it accepts."""

    features: frozenset[str] = frozenset(FEATURES)

    def encode(self) -> bytes:
        return encode(
            {"type": "welcome", "protocol": PROTOCOL_VERSION, "features": sorted(self.features)}
        )

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Welcome:
        """Tolerant: features this side does not know are ignored, not refused."""
        if raw.get("type") != "welcome":
            raise WireError("not a welcome frame", code="unexpected")
        features = raw.get("features", [])
        if not isinstance(features, list):
            raise WireError("welcome features must be a list")
        return cls(frozenset(f for f in features if isinstance(f, str) and f in FEATURES))


@dataclass(frozen=True)
class OpenRequest:
    """The broker asking the agent to connect to ``host:port`` until ``expires_at`` (epoch s)."""

    host: str
    port: int
    expires_at: float
    ref: str = field(default_factory=lambda: "ch-" + secrets.token_hex(8))

    def encode_command(self) -> str:
        return encode(
            {
                "op": "open",
                "host": self.host,
                "port": self.port,
                "expires_at": self.expires_at,
                "ref": self.ref,
            }
        ).decode()

    @classmethod
    def parse_command(cls, command: str) -> OpenRequest:
        if len(command) > 4096:
            raise WireError("open request too long", code="frame_too_large")
        raw = decode(command.strip().encode())
        if raw.get("op") != "open":
            raise WireError(f"unknown operation {raw.get('op')!r}", code="unexpected")
        return cls(
            host=check_host(raw.get("host")),
            port=check_port(raw.get("port")),
            expires_at=_number(raw.get("expires_at"), "expires_at"),
            ref=_check(_REF, raw.get("ref"), "channel ref"),
        )


def open_reply(ok: bool, reason: str = "") -> bytes:
    return encode({"type": "open", "ok": ok, **({} if ok else {"reason": reason[:500]})})


def parse_open_reply(line: bytes) -> tuple[bool, str]:
    raw = decode(line)
    if raw.get("type") != "open" or not isinstance(raw.get("ok"), bool):
        raise WireError("bad open reply")
    reason = raw.get("reason", "")
    return bool(raw["ok"]), str(reason)[:500]


# --------------------------------------------------------------------------- enrolment


def key_pin(public_key_openssh: str) -> str:
    """SHA-256 of an OpenSSH public key's blob, base64url without padding (token-safe)."""
    parts = public_key_openssh.split()
    if len(parts) < 2:
        raise WireError("not an OpenSSH public key", code="bad_key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise WireError("not an OpenSSH public key", code="bad_key") from None
    return base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class JoinToken:
    """``cjt1.<id>.<secret>.<pin>``: one-time id and secret plus the broker key's pin."""

    token_id: str
    secret: str
    pin: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.token_id}.{self.secret}.{self.pin}"

    def __repr__(self) -> str:  # never print the secret by accident
        return f"JoinToken(token_id={self.token_id!r}, secret=***, pin={self.pin!r})"

    @classmethod
    def new(cls, pin: str) -> JoinToken:
        return cls(secrets.token_hex(8), secrets.token_urlsafe(32), pin)

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        parts = text.strip().split(".")
        if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
            raise WireError("join token is malformed (expected cjt1.<id>.<secret>.<pin>)")
        _, token_id, secret, pin = parts
        if not re.fullmatch(r"[0-9a-f]{16}", token_id):
            raise WireError("join token id is malformed")
        if not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", secret):
            raise WireError("join token secret is malformed")
        if not re.fullmatch(r"[A-Za-z0-9_-]{43}", pin):
            raise WireError("join token pin is malformed")
        return cls(token_id, secret, pin)


def response_mac(secret: str, body: dict[str, Any]) -> str:
    """The broker's proof that it knows the token secret, over the join response body."""
    canonical = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return hmac.new(
        secret.encode(), b"conduit-join-resp-v1\0" + canonical, hashlib.sha256
    ).hexdigest()


def check_mac(expected: str, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected, given)
