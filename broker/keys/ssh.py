"""The SSH front door's keys: its host key, the vendor-certificate CA and the asset-login CA.

* ``ssh_host_ed25519``: the front door's host key (``conduit ssh-config`` pins it).
* ``ssh_user_ca``: signs short-lived vendor certificates (``conduit ssh-cert``): principals
  ``conduit-user``, ``u:<user id>`` and ``c:<serial>``, valid no longer than the credential
  that asked for it. Every certificate has its own serial (also the certificate's serial
  field), recorded with the token or web session that minted it (``ssh_certificates``), so
  the front door can refuse it once that credential or its user is revoked.
* ``ssh_asset_ca``: signs a fresh per-session certificate for the login on the asset; assets
  trust it with ``TrustedUserCAKeys``. The vendor never sees either credential.

All are Ed25519 keys in ``<data_dir>/keys`` (0600, created on first start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from broker.keys.agent import load_or_create_key
from broker.runtime.errors import BadRequest
from sessions.clock import Clock, SystemClock

USER_PRINCIPAL = "conduit-user"
SERIAL_PREFIX = "c:"  # principal naming the certificate's serial (ssh_certificates row)


def _import(public_key: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_public_key(public_key)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise BadRequest("public_key is not an OpenSSH public key") from exc


ASSET_CERT_VALIDITY_S = 120  # only has to outlive the login on the asset


@dataclass(frozen=True)
class SshKeys:
    host: asyncssh.SSHKey
    user_ca: asyncssh.SSHKey
    asset_ca: asyncssh.SSHKey
    clock: Clock = field(default_factory=SystemClock)  # validity windows start at its now

    @staticmethod
    def public(key: asyncssh.SSHKey) -> str:
        return key.export_public_key().decode().strip()

    @staticmethod
    def fingerprint(public_key: str) -> str:
        """``SHA256:...`` of a vendor's public key; raises :class:`BadRequest` for a bad key."""
        return _import(public_key).get_fingerprint("sha256")

    def _now(self) -> int:
        return int(self.clock.now().timestamp())

    def sign_user(
        self, public_key: str, *, user_id: str, key_id: str, valid_before: int, serial: int
    ) -> str:
        """A user certificate for a vendor's key; raises :class:`BadRequest` for a bad key."""
        key = _import(public_key)
        cert = self.user_ca.generate_user_certificate(
            key,
            key_id,
            serial=serial,
            principals=[USER_PRINCIPAL, f"u:{user_id}", f"{SERIAL_PREFIX}{serial}"],
            valid_after=self._now() - 60,
            valid_before=valid_before,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_user_rc=False,
        )
        return cert.export_certificate().decode().strip()

    def asset_login(
        self, login: str, *, key_id: str
    ) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        """A fresh key and a 2-minute certificate for ``login`` on an asset (one session)."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        now = self._now()
        cert = self.asset_ca.generate_user_certificate(
            key,
            key_id,
            principals=[login],
            valid_after=now - 60,
            valid_before=now + ASSET_CERT_VALIDITY_S,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_user_rc=False,
        )
        return key, cert


def load_ssh_keys(key_dir: Path, clock: Clock | None = None) -> SshKeys:
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SshKeys(
        host=load_or_create_key(key_dir / "ssh_host_ed25519"),
        user_ca=load_or_create_key(key_dir / "ssh_user_ca"),
        asset_ca=load_or_create_key(key_dir / "ssh_asset_ca"),
        clock=clock or SystemClock(),
    )


def asset_ca_setup(ca_line: str) -> str:
    """How an asset's sshd trusts the asset CA, for admins (the UI and ``conduit asset-ca``).

    The broker logs in to an asset with a 2-minute certificate whose only principal is the
    granted login, so sshd must accept the CA and map each account to exactly its own name.
    """
    return (
        "On each SSH asset, as root:\n"
        f"  echo '{ca_line}' > /etc/ssh/conduit_asset_ca.pub\n"
        "  mkdir -p /etc/ssh/auth_principals\n"
        "  # for every login the asset declares in Conduit (e.g. maint):\n"
        "  echo maint > /etc/ssh/auth_principals/maint\n"
        "Then in /etc/ssh/sshd_config:\n"
        "  TrustedUserCAKeys /etc/ssh/conduit_asset_ca.pub\n"
        "  AuthorizedPrincipalsFile /etc/ssh/auth_principals/%u\n"
        "and reload sshd. Only the logins listed for an account can be used with a Conduit\n"
        "certificate; declare the same logins on the asset's SSH endpoint in Conduit.\n"
    )
