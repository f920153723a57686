"""The client's address behind reverse proxies: ``X-Forwarded-For`` read from the right.

Each proxy appends the address it received the request from, so only the right end of the
header is trustworthy: walking right to left, every hop that is one of the configured trusted
proxies (``trusted_proxies``, addresses or networks) is skipped, and the first hop that is not
is the client. Anything to its left was written by the client itself and is ignored. The
header is honoured only when the TCP peer is itself a trusted proxy; a malformed hop ends the
walk at the last address a trusted proxy vouched for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    """An IP address from a header hop: ``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]``, ``[::1]:80``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has several colons
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address for a request from ``peer`` with these ``X-Forwarded-For`` values.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header line in order (several lines are
    one list). Without trusted proxies, or from a peer that is not one, the peer it is.
    """
    nearest = _address(peer)
    if nearest is None or not trusted or not _trusted(nearest, trusted):
        return peer
    hops = [hop for line in forwarded_for for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # unreadable: the proxy to its right is as far as we can vouch for
        nearest = address
        if not _trusted(address, trusted):
            break  # the first hop no trusted proxy stands behind: the client
    return str(nearest)
