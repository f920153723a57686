"""Declared asset endpoints: settings validation, and what a grant may reach through them.

An asset's endpoints are inventory (:class:`sessions.models.AssetEndpoint`): a request may
name only ports among them, a connection may reach only an endpoint of its grant, and
inspection is chosen by the endpoint's declared ``protocol``.

``settings`` per protocol (validated and normalized by :func:`validate_settings`; anything
else raises :class:`sessions.errors.ValidationError` naming the field)::

    ssh:    {"logins": {"read_only": ["maint"], "tune": ["maint", "eng"], ...}}
            # or {"logins": ["maint"]} for every operation class
    modbus: {"unit_ids": [1, 2],                       # optional: only these units
             "write_ranges": {"tune": [{"table": "holding_registers", "first": 10,
                                        "last": 30, "unit_ids": [1]}, ...], ...}}

    s7:     {"write_ranges": {"tune": [{"area": "DB", "db": 1, "first": 0, "last": 15}]}}
    enip:   {}                                         # no settings

Each inspected protocol's settings are validated by its plug-in (:mod:`sessions.ot.registry`;
Modbus: :mod:`sessions.ot.modbus_settings`, S7: :mod:`sessions.ot.s7`). Modbus write ranges
are per operation class and per table (``coils``, ``holding_registers``); a class with no
ranges gets no writes, except ``program`` and ``firmware`` which default to the whole address
space of both tables (the policy bundle applies that default). Other protocols take no settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlmodel import Session, select

from sessions.models import AssetEndpoint, EndpointProtocol, OperationClass
from sessions.ot.registry import PLUGINS, plugin_for
from sessions.ot.settings import fail as _fail

# Protocols the broker inspects on the wire (those with an inspector plug-in, as registered at
# import; the functions below ask the registry each time); any other endpoint is relayed as
# generic TCP, and only when policy allows generic TCP for the asset.
INSPECTED_PROTOCOLS = frozenset(PLUGINS)
_LOGIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _login(value: Any, where: str) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 32
        or not set(value) <= _LOGIN_CHARS
        or value[0] in "-."
    ):
        raise _fail(where, f"{value!r} is not a valid login name")
    return value


def _class(name: Any, where: str) -> str:
    if name not in OperationClass.ALL:
        raise _fail(where, f"{name!r} is not an operation class ({', '.join(OperationClass.ALL)})")
    return str(name)


def _ssh(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(settings) - {"logins"}
    if unknown:
        raise _fail(where, f"unknown ssh setting(s) {', '.join(sorted(unknown))}")
    raw = settings.get("logins", {})
    if isinstance(raw, list):
        raw = dict.fromkeys(OperationClass.ALL, raw)
    if not isinstance(raw, Mapping):
        raise _fail(f"{where}.logins", "must be a list or an object of operation class -> list")
    logins: dict[str, list[str]] = {}
    for op, names in raw.items():
        here = f"{where}.logins.{_class(op, f'{where}.logins')}"
        if not isinstance(names, list):
            raise _fail(here, "must be a list of login names")
        logins[op] = sorted({_login(n, here) for n in names})
    return {"logins": logins} if logins else {}


def validate_settings(protocol: str, settings: Any, *, where: str = "settings") -> dict[str, Any]:
    """Return the normalized settings of a ``protocol`` endpoint; raise ValidationError if bad."""
    if protocol not in EndpointProtocol.ALL:
        raise _fail("protocol", f"must be one of {', '.join(EndpointProtocol.ALL)}")
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise _fail(where, "must be an object")
    if protocol == EndpointProtocol.SSH:
        return _ssh(settings, where)
    plugin = plugin_for(protocol)
    if plugin is not None:
        return plugin.validate_settings(settings, where)
    if settings:
        raise _fail(where, f"{protocol} endpoints take no settings")
    return {}


def logins_for(endpoints: Iterable[AssetEndpoint], operation_class: str) -> list[str]:
    """SSH logins the asset's SSH endpoints allow for ``operation_class`` (sorted, unique)."""
    found: set[str] = set()
    for ep in endpoints:
        if ep.protocol == EndpointProtocol.SSH:
            found.update(ep.settings.get("logins", {}).get(operation_class, []))
    return sorted(found)


def ssh_endpoint(endpoints: Iterable[AssetEndpoint]) -> AssetEndpoint | None:
    """The asset's SSH endpoint (the first by name), or None."""
    ssh = sorted((e for e in endpoints if e.protocol == EndpointProtocol.SSH), key=lambda e: e.name)
    return ssh[0] if ssh else None


def endpoint_document(ep: AssetEndpoint) -> dict[str, Any]:
    """An endpoint as the policy input and the API show it."""
    return {
        "name": ep.name,
        "host": ep.host,
        "port": ep.port,
        "protocol": ep.protocol,
        "inspected": plugin_for(ep.protocol) is not None,
        "settings": dict(ep.settings),
    }


def describe(ep: AssetEndpoint) -> str:
    """``modbus 127.0.0.1:502 (plc)`` — how approvers and vendors see an endpoint."""
    return f"{ep.protocol} {ep.host}:{ep.port} ({ep.name})"


def endpoints_of(db: Session, asset_id: str) -> list[AssetEndpoint]:
    """The asset's declared endpoints, ordered by port then name."""
    rows = db.exec(select(AssetEndpoint).where(AssetEndpoint.asset_id == asset_id)).all()
    return sorted(rows, key=lambda e: (e.port, e.name))
