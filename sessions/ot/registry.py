"""The inspector plug-ins, keyed by the protocol an endpoint declares (never by port).

Adding a protocol: one module exporting a ``PLUGIN`` and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from sessions.ot import enip, modbus, s7
from sessions.ot.base import ProtocolPlugin

# One line per protocol: the name endpoints declare -> its plug-in.
PLUGINS: Mapping[str, ProtocolPlugin] = {
    "modbus": modbus.PLUGIN,
    "s7": s7.PLUGIN,
    "enip": enip.PLUGIN,
}


def plugin_for(protocol: str) -> ProtocolPlugin | None:
    """The plug-in that inspects ``protocol``, or None (relayed as plain TCP, if policy lets)."""
    return PLUGINS.get(protocol)


def registered() -> Mapping[str, ProtocolPlugin]:
    """Every plug-in, in registry order (read at call time, so a test may register one)."""
    return PLUGINS
