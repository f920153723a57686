"""What an SSH sign-in to the front door says: the target in the user name, the certificate.

Target syntax: the SSH user name is ``LOGIN@ASSET`` (``ssh -p 2222 maint@plc-press-3@broker``;
OpenSSH splits user and host at the *last* ``@``), or ``LOGIN@ASSET+GRANT`` to pick one of
several grants by an id prefix. A certificate is accepted from the broker's user CA only; its
principals (``u:<user id>``, ``c:<serial>``) say who signed in.
"""

from __future__ import annotations

import re
from typing import Any

import asyncssh

from broker.core.session import Target
from broker.keys.ssh import USER_PRINCIPAL

_LOGIN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$", re.IGNORECASE)
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GRANT_PREFIX = re.compile(r"^[0-9a-f-]{4,36}$")


def parse_target(username: str) -> Target | None:
    """``LOGIN@ASSET[+GRANT]`` → :class:`Target`, or None if malformed."""
    login, sep, rest = username.partition("@")
    asset, plus, prefix = rest.partition("+")
    if not sep or not _LOGIN.match(login) or not _ASSET.match(asset):
        return None
    if plus and not _GRANT_PREFIX.match(prefix.lower()):
        return None
    return Target(login, asset, prefix.lower() if plus else None)


class PrincipalCapture(asyncssh.SSHAuthorizedKeys):
    """Authorized keys = our user CA (any principal); remembers the certificate's principals."""

    def __init__(self, ca_line: str) -> None:
        super().__init__(f'cert-authority,principals="{USER_PRINCIPAL}" {ca_line}\n')
        self.principals: tuple[str, ...] = ()

    def validate(
        self,
        key: Any,
        client_host: str,
        client_addr: str,
        cert_principals: Any = None,
        ca: bool = False,
    ) -> Any:
        result = super().validate(key, client_host, client_addr, cert_principals, ca)
        self.principals = tuple(cert_principals or ()) if result is not None else ()
        return result
