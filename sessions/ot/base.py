"""What every OT inspector shares: the interface, verdicts, typed operation records, plug-ins.

An inspector is sans-IO and owns one client connection. The relay (``broker.core.relay``)
hands it every byte it reads and writes back only what the :class:`Verdicts` say::

    v = inspector.from_client(data)   # or from_server(data), poll(), begin_close(reason)
    server.write(v.to_server); client.write(v.to_client); ops_log.extend(v.records)
    pcap.record(v.malformed, same direction as data)   # stopped, never forwarded
    if v.poll_at: arm a timer -> poll();  if v.close: audit it and close
    read from the client only while inspector.accepting

Ending (OT-safe): ``begin_close(reason)``, keep feeding ``from_server`` until ``drained`` or a
short bound, then log ``finish()`` and close both sockets.

Operation records (one per request, JSON-ready dicts built from :class:`Operation`) carry the
same core fields for every protocol: ``protocol``, ``unit``, ``function``, ``function_name``,
``class`` (:class:`OpClass`), ``addresses``, ``values``, ``allowed``, ``reason``, ``result``;
protocol-specific fields sit beside them. A malformed frame gets one ``refused`` record with
``raw`` (hex of the first :data:`RAW_LOGGED` stopped bytes) and ``raw_length``; only such
records carry ``raw``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias

from policies.decision import Obligations
from sessions.clock import Clock
from sessions.errors import SessionsError
from sessions.ot.pacing import TokenBucket

Record: TypeAlias = dict[str, Any]
RAW_LOGGED = 512  # bytes of a malformed frame kept (as hex) in its ops-log record


class OpClass:
    """What an operation does to the controller (the OT operation table's columns)."""

    READ = "read"
    WRITE = "write"
    ENGINEERING = "engineering"  # program upload/download, block management
    DANGEROUS = "dangerous"  # stop/start/reset, firmware, diagnostics, unknown
    ALERTED = frozenset({ENGINEERING, DANGEROUS})


class ObligationsError(SessionsError):
    """A protocol's obligations block is malformed: the connection is refused (fail closed)."""

    code = "ot_obligations"


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What the relay must do after one inspector call (see the module docstring).

    ``to_server``/``to_client`` are runs of whole frames; ``close`` set means close the
    connection after auditing it; ``poll_at`` asks for :meth:`Inspector.poll` at that time;
    ``malformed`` holds stopped bytes of the inspected direction: record them, never forward.
    """

    to_server: bytes = b""
    to_client: bytes = b""
    records: tuple[Record, ...] = ()
    close: str | None = None
    poll_at: datetime | None = None
    malformed: bytes = b""


@dataclass(slots=True)
class Operation:
    """The typed core of one operation record; :meth:`as_record` is what the ops log gets."""

    time: str
    protocol: str
    function: int | None
    function_name: str | None
    op_class: str
    unit: int | None = None
    addresses: list[str] | None = None
    values: list[Any] | None = None
    allowed: bool = False
    reason: str = ""
    result: str = "pending"

    def as_record(self, **extra: Any) -> Record:
        record: Record = {
            "time": self.time,
            "protocol": self.protocol,
            "unit": self.unit,
            "function": self.function,
            "function_name": self.function_name,
            "class": self.op_class,
            "addresses": self.addresses,
            "values": self.values,
            "allowed": self.allowed,
            "reason": self.reason,
            "result": self.result,
        }
        record.update(extra)
        return record


def malformed_record(now: datetime, protocol: str, raw: bytes, reason: str, **extra: Any) -> Record:
    """The ops-log record of stopped bytes (one per malformed frame)."""
    op = Operation(_iso(now), protocol, None, None, OpClass.DANGEROUS, reason=reason)
    op.result = "refused"
    return op.as_record(raw=raw[:RAW_LOGGED].hex(), raw_length=len(raw), **extra)


def iso(dt: datetime) -> str:
    """A record timestamp: ISO-8601 UTC with microseconds and ``Z``."""
    return _iso(dt)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Inspector(Protocol):
    """One client connection's enforcement point (sans-IO; see the module docstring)."""

    @property
    def accepting(self) -> bool:
        """False while the inspector holds enough: the relay stops reading from the client."""
        ...

    @property
    def drained(self) -> bool:
        """Every request forwarded to the server has been answered (or given up on)."""
        ...

    def from_client(self, data: bytes) -> Verdicts: ...

    def from_server(self, data: bytes) -> Verdicts: ...

    def poll(self) -> Verdicts: ...

    def begin_close(self, reason: str) -> Verdicts: ...

    def finish(self) -> list[Record]: ...


# obligations (None: the read-only default), clock, shared per-asset bucket -> inspector;
# raises ObligationsError when the protocol's obligations block is malformed.
InspectorFactory = Callable[[Obligations | None, Clock, TokenBucket | None], Inspector]
# (settings, where) -> normalized settings; raises sessions.errors.ValidationError.
SettingsValidator = Callable[[Mapping[str, Any], str], dict[str, Any]]
# The whole obligations object (JSON) -> one line for people about this protocol's part of
# it, or None when it holds nothing for the protocol. Pure; never raises (a malformed block
# reads as words saying so).
ObligationsDescriber = Callable[[Mapping[str, Any]], str | None]
# An endpoint's settings (as its validator returned them) -> one line for people ("" when
# there is nothing to say). Pure; never raises.
SettingsDescriber = Callable[[Mapping[str, Any]], str]
# (a grant's obligations, the endpoint's settings, the grant's operation class) -> what the
# grant allows at that endpoint, for the vendor. Pure; never raises.
AllowanceDescriber = Callable[[Mapping[str, Any], Mapping[str, Any], str], str]


@dataclass(frozen=True, slots=True)
class ProtocolPlugin:
    """One OT protocol: its name (as endpoints declare it), its well-known port (the server
    port written to pcaps so stock tshark decodes them), its inspector and settings, and the
    words the pages show for it (``broker/`` holds no protocol-specific text):

    - ``title``: the row label and settings prefix people read (``Modbus``, ``S7``);
    - ``describe_obligations``: its obligations block as one line (the obligations renderer);
    - ``describe_settings``: an endpoint's settings as one line (the plant page);
    - ``describe_allowance``: what a grant allows at one endpoint (the vendor's grant list);
      None: the obligations line;
    - ``obligation_keys``: top-level obligations keys its obligations line already states
      (Modbus: the legacy ``modbus`` block and ``rate_limit_rps``), so the renderer does not
      show them again.
    """

    name: str
    well_known_port: int
    inspector: InspectorFactory
    validate_settings: SettingsValidator
    title: str
    describe_obligations: ObligationsDescriber
    describe_settings: SettingsDescriber
    describe_allowance: AllowanceDescriber | None = None
    obligation_keys: frozenset[str] = frozenset()


def shown_block(obligations: Mapping[str, Any], name: str) -> Any:
    """``obligations.protocols.<name>`` as stored (any JSON value; None when absent), for the
    describers: unlike :func:`protocol_block` it never raises."""
    blocks = obligations.get("protocols")
    return blocks.get(name) if isinstance(blocks, Mapping) else None


def protocol_block(obligations: Obligations | None, name: str) -> Mapping[str, Any] | None:
    """``obligations.protocols.<name>`` (None when absent or no obligations)."""
    if obligations is None:
        return None
    block = obligations.protocols.get(name)
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise ObligationsError(f"obligations.protocols.{name} must be an object")
    return block
