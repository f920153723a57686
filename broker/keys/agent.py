"""The broker's agent key material: the agent CA and the gateway key agents pin.

Both are Ed25519 keys in OpenSSH format under ``settings.agents.key_dir`` (created 0600 on
first start, in a 0700 directory). Brokers of one deployment share this directory's contents:
an agent pins the gateway key once and may then keep a tunnel to every broker.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from agents.wire import AGENT_PRINCIPAL, key_pin
from broker.runtime.errors import BrokerError
from sessions.clock import Clock, SystemClock


@dataclass(frozen=True)
class AgentKeys:
    ca: asyncssh.SSHKey
    gateway: asyncssh.SSHKey
    cert_validity_s: int
    clock: Clock = field(default_factory=SystemClock)  # validity windows start at its now

    @property
    def ca_public(self) -> str:
        return self.ca.export_public_key().decode().strip()

    @property
    def gateway_public(self) -> str:
        return self.gateway.export_public_key().decode().strip()

    @property
    def pin(self) -> str:
        """What join tokens carry: the SHA-256 pin of the gateway key."""
        return key_pin(self.gateway_public)

    def sign_agent(self, public_key: str, agent_id: str) -> tuple[str, int]:
        """A host certificate for an agent key: principals ``conduit-agent`` and its id.

        Raises :class:`BrokerError` (``bad_key``) if ``public_key`` is not an OpenSSH key.
        """
        try:
            key = asyncssh.import_public_key(public_key)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise BrokerError("agent public key is malformed", code="bad_key", status=400) from exc
        serial = secrets.randbits(63)
        now = int(self.clock.now().timestamp())
        cert = self.ca.generate_host_certificate(
            key,
            agent_id,
            serial=serial,
            principals=[AGENT_PRINCIPAL, agent_id],
            valid_after=now - 300,
            valid_before=now + self.cert_validity_s,
        )
        return cert.export_certificate().decode().strip(), serial


def load_or_create_key(path: Path) -> asyncssh.SSHKey:
    """An Ed25519 private key from ``path``, created (0600) if absent; refuses lax modes."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise BrokerError(
                f"agent key {path} is readable by others (mode {mode:o}); chmod 600 it",
                code="insecure_key",
            )
        try:
            return asyncssh.read_private_key(path)
        except (asyncssh.KeyImportError, OSError) as exc:
            raise BrokerError(f"agent key {path} cannot be read: {exc}", code="bad_key") from exc
    key = asyncssh.generate_private_key("ssh-ed25519")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    os.replace(tmp, path)
    return key


def load_agent_keys(key_dir: Path, cert_validity_s: int, clock: Clock | None = None) -> AgentKeys:
    """Load (or on first use create) the CA and gateway keys in ``key_dir``."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return AgentKeys(
        ca=load_or_create_key(key_dir / "agent_ca"),
        gateway=load_or_create_key(key_dir / "agent_gateway"),
        cert_validity_s=cert_validity_s,
        clock=clock or SystemClock(),
    )
