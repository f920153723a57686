"""The agent's own configuration: what it may reach, where it keeps its identity, timings.

The config file is TOML, validated once at start; unknown keys and malformed values are errors
(:class:`ConfigError`, naming the file and the key). The ``[[endpoint]]`` list is the agent's
enforcement boundary: a channel to anything not listed is refused here, whatever the broker says.

Example::

    state_dir = "/var/lib/conduit-agent"
    # brokers = ["broker-a.plant:7022", "broker-b.plant:7022"]  # default: from the join

    [[endpoint]]
    name = "plc-line3"
    host = "10.20.0.5"
    port = 502
    protocol = "modbus"
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.wire import Endpoint, WireError, check_host

_TOP = {
    "state_dir",
    "brokers",
    "heartbeat_s",
    "keepalive_s",
    "backoff_initial_s",
    "backoff_max_s",
    "connect_timeout_s",
    "target_timeout_s",
    "max_channel_s",
    "max_channels",
    "endpoint",
}
_ENDPOINT_KEYS = {"name", "host", "port", "protocol"}


class ConfigError(Exception):
    """The agent config is missing or invalid; the agent must not start."""


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path
    endpoints: tuple[Endpoint, ...] = ()
    brokers: tuple[str, ...] = ()
    heartbeat_s: float = 15.0
    keepalive_s: float = 30.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 4.0
    connect_timeout_s: float = 15.0
    target_timeout_s: float = 5.0
    max_channel_s: float = 12 * 3600.0
    max_channels: int = 256
    _index: frozenset[tuple[str, int]] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", frozenset((e.host, e.port) for e in self.endpoints))

    def declares(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is in this agent's own endpoint list (exact match)."""
        return (host, port) in self._index


def _positive(data: dict[str, Any], key: str, default: float, upper: float) -> float:
    value = data.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= upper:
        raise ConfigError(f"{key} must be a number in (0, {upper}]")
    return float(value)


def parse_config(data: dict[str, Any], *, base: Path | None = None) -> AgentConfig:
    """Validate a config mapping; relative ``state_dir`` is resolved against ``base``."""
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(f"unknown keys: {', '.join(unknown)}")
    state_dir = data.get("state_dir")
    if not isinstance(state_dir, str) or not state_dir:
        raise ConfigError("state_dir is required")
    path = Path(state_dir)
    if not path.is_absolute() and base is not None:
        path = base / path
    raw_eps = data.get("endpoint", [])
    if not isinstance(raw_eps, list):
        raise ConfigError("endpoint must be an array of tables ([[endpoint]])")
    endpoints: list[Endpoint] = []
    for i, raw in enumerate(raw_eps):
        extra = sorted(set(raw) - _ENDPOINT_KEYS) if isinstance(raw, dict) else []
        if extra:
            raise ConfigError(f"endpoint[{i}]: unknown keys {', '.join(extra)}")
        try:
            endpoints.append(Endpoint.parse(raw))
        except WireError as exc:
            raise ConfigError(f"endpoint[{i}]: {exc.message}") from None
    if len({(e.host, e.port) for e in endpoints}) != len(endpoints):
        raise ConfigError("endpoint: the same host:port is declared twice")
    brokers = data.get("brokers", [])
    if not isinstance(brokers, list) or not all(isinstance(b, str) for b in brokers):
        raise ConfigError("brokers must be a list of host:port strings")
    for address in brokers:
        host, _, port = address.rpartition(":")
        try:
            check_host(host.strip("[]"))
        except WireError:
            raise ConfigError(f"brokers: {address!r} is not host:port") from None
        if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
            raise ConfigError(f"brokers: {address!r} is not host:port")
    max_channels = data.get("max_channels", 256)
    bad = isinstance(max_channels, bool) or not isinstance(max_channels, int)
    if bad or not 1 <= max_channels <= 100_000:
        raise ConfigError("max_channels must be an integer in [1, 100000]")
    cfg = AgentConfig(
        state_dir=path,
        endpoints=tuple(endpoints),
        brokers=tuple(brokers),
        heartbeat_s=_positive(data, "heartbeat_s", 15.0, 3600),
        keepalive_s=_positive(data, "keepalive_s", 30.0, 3600),
        backoff_initial_s=_positive(data, "backoff_initial_s", 0.25, 60),
        backoff_max_s=_positive(data, "backoff_max_s", 4.0, 600),
        connect_timeout_s=_positive(data, "connect_timeout_s", 15.0, 120),
        target_timeout_s=_positive(data, "target_timeout_s", 5.0, 120),
        max_channel_s=_positive(data, "max_channel_s", 12 * 3600.0, 7 * 86400),
        max_channels=max_channels,
    )
    if cfg.backoff_initial_s > cfg.backoff_max_s:
        raise ConfigError("backoff_initial_s must not exceed backoff_max_s")
    return cfg


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path``; raises :class:`ConfigError` naming the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(data, base=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
