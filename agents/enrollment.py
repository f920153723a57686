"""Joining a broker once (``conduit-agent join``) and the identity that join leaves behind.

:func:`join` generates the agent's own Ed25519 key (it never leaves the host), redeems the
one-time token at ``POST {broker}/api/agents/join`` and accepts the answer only if

* the broker's gateway key matches the pin inside the token (the broker is who the admin meant),
* the answer carries a MAC made with the token secret (nobody else could have answered), and
* the certificate is a host certificate for exactly the agent's key, signed by the returned CA.

The state directory then holds ``agent_key`` (0600), ``agent_key-cert.pub`` and
``enrollment.json``; :func:`load_enrollment` reads them back for ``conduit-agent run``.
Failures raise :class:`EnrollmentError` with a one-line message; nothing is written on failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh
from asyncssh.public_key import CERT_TYPE_HOST, SSHOpenSSHCertificate

from agents.wire import AGENT_PRINCIPAL, JoinToken, WireError, check_mac, key_pin, response_mac

ENROLLMENT_FILE = "enrollment.json"
KEY_FILE = "agent_key"
CERT_FILE = "agent_key-cert.pub"


class EnrollmentError(Exception):
    """Joining failed or the stored enrollment is missing/corrupt."""


@dataclass(frozen=True)
class Enrollment:
    agent_id: str
    name: str
    broker_url: str
    gateways: tuple[str, ...]
    broker_key: asyncssh.SSHKey
    ca_key: asyncssh.SSHKey
    key: asyncssh.SSHKey
    certificate: asyncssh.SSHCertificate
    site: str
    zone: str | None


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _post(
    url: str, body: dict[str, Any], *, ca_file: Path | None, timeout: float
) -> dict[str, Any]:
    # Imported here: only ``join`` speaks HTTP; ``conduit-agent run`` stays smaller without it.
    import ssl
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode()
    # join() checked the scheme is http(s): no file: or custom schemes reach urlopen.
    req = urllib.request.Request(  # noqa: S310
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        # The scheme was checked to be http(s) by join().
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            raw = resp.read(1_000_000)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read(10_000)).get("message", "")
        except (ValueError, AttributeError):
            detail = ""
        raise EnrollmentError(
            f"broker refused the join ({exc.code}): {detail or exc.reason}"
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnrollmentError(f"cannot reach broker at {url}: {reason}") from None
    try:
        value = json.loads(raw)
    except ValueError:
        raise EnrollmentError("broker answer is not JSON") from None
    if not isinstance(value, dict):
        raise EnrollmentError("broker answer is not a JSON object")
    return value


def join(
    broker_url: str,
    token_text: str,
    state_dir: Path,
    *,
    hostname: str,
    version: str,
    ca_file: Path | None = None,
    allow_http: bool = False,
    force: bool = False,
    timeout: float = 15.0,
) -> Enrollment:
    """Enroll this host with the broker; see the module docstring for what is checked."""
    try:
        token = JoinToken.parse(token_text)
    except WireError as exc:
        raise EnrollmentError(exc.message) from None
    parts = urlsplit(broker_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EnrollmentError(f"broker URL {broker_url!r} is not an http(s) URL")
    if parts.scheme == "http" and not (allow_http or _is_loopback(parts.hostname)):
        raise EnrollmentError("refusing to send a join token over plain http (use https)")
    if (state_dir / ENROLLMENT_FILE).exists() and not force:
        raise EnrollmentError(f"{state_dir} already holds an enrollment (use --force to replace)")
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode().strip()
    answer = _post(
        broker_url.rstrip("/") + "/api/agents/join",
        {
            "token_id": token.token_id,
            "secret": token.secret,
            "public_key": public,
            "hostname": hostname,
            "version": version,
        },
        ca_file=ca_file,
        timeout=timeout,
    )
    mac = answer.pop("mac", None)
    if not check_mac(response_mac(token.secret, answer), mac):
        raise EnrollmentError("broker answer is not authenticated by the token (wrong broker?)")
    try:
        broker_key_text = str(answer["broker_key"])
        if key_pin(broker_key_text) != token.pin:
            raise EnrollmentError("broker key does not match the pin in the token")
        broker_key = asyncssh.import_public_key(broker_key_text)
        ca_key = asyncssh.import_public_key(str(answer["ca_key"]))
        cert = asyncssh.import_certificate(str(answer["certificate"]))
        gateways = tuple(str(g) for g in answer["gateways"])
        agent_id = str(answer["agent_id"])
    except (KeyError, TypeError, ValueError, WireError, asyncssh.KeyImportError) as exc:
        raise EnrollmentError(f"broker answer is malformed: {exc}") from None
    _check_certificate(cert, key, ca_key, agent_id)
    enrollment = Enrollment(
        agent_id=agent_id,
        name=str(answer.get("name", agent_id)),
        broker_url=broker_url,
        gateways=gateways,
        broker_key=broker_key,
        ca_key=ca_key,
        key=key,
        certificate=cert,
        site=str(answer.get("site", "")),
        zone=str(answer["zone"]) if answer.get("zone") else None,
    )
    _save(state_dir, enrollment)
    return enrollment


def _check_certificate(
    cert: asyncssh.SSHCertificate, key: asyncssh.SSHKey, ca_key: asyncssh.SSHKey, agent_id: str
) -> None:
    if not isinstance(cert, SSHOpenSSHCertificate) or cert.is_x509:
        raise EnrollmentError("broker certificate is not an OpenSSH certificate")
    if cert.key.public_data != key.public_data:
        raise EnrollmentError("broker certificate is for another key")
    if cert.signing_key.public_data != ca_key.public_data:
        raise EnrollmentError("broker certificate is not signed by the agent CA it sent")
    try:
        cert.validate(CERT_TYPE_HOST, AGENT_PRINCIPAL)
    except ValueError as exc:
        raise EnrollmentError(f"broker certificate is not valid: {exc}") from None
    if agent_id not in cert.principals:
        raise EnrollmentError("broker certificate does not name this agent")


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _save(state_dir: Path, e: Enrollment) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(state_dir / KEY_FILE, e.key.export_private_key(), 0o600)
    _write(state_dir / CERT_FILE, e.certificate.export_certificate(), 0o644)
    doc = {
        "agent_id": e.agent_id,
        "name": e.name,
        "broker_url": e.broker_url,
        "gateways": list(e.gateways),
        "broker_key": e.broker_key.export_public_key().decode().strip(),
        "ca_key": e.ca_key.export_public_key().decode().strip(),
        "site": e.site,
        "zone": e.zone,
    }
    _write(state_dir / ENROLLMENT_FILE, json.dumps(doc, indent=2).encode(), 0o600)


def load_enrollment(state_dir: Path) -> Enrollment:
    """The identity :func:`join` stored; raises :class:`EnrollmentError` if absent or corrupt."""
    path = state_dir / ENROLLMENT_FILE
    if not path.exists():
        raise EnrollmentError(f"{state_dir} holds no enrollment; run 'conduit-agent join' first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        key = asyncssh.read_private_key(state_dir / KEY_FILE)
        cert = asyncssh.read_certificate(state_dir / CERT_FILE)
        enrollment = Enrollment(
            agent_id=str(doc["agent_id"]),
            name=str(doc["name"]),
            broker_url=str(doc["broker_url"]),
            gateways=tuple(str(g) for g in doc["gateways"]),
            broker_key=asyncssh.import_public_key(doc["broker_key"]),
            ca_key=asyncssh.import_public_key(doc["ca_key"]),
            key=key,
            certificate=cert,
            site=str(doc.get("site", "")),
            zone=doc.get("zone"),
        )
    except (OSError, ValueError, KeyError, TypeError, asyncssh.KeyImportError) as exc:
        raise EnrollmentError(f"{state_dir}: stored enrollment is unreadable: {exc}") from None
    if (state_dir / KEY_FILE).stat().st_mode & 0o077:
        raise EnrollmentError(f"{state_dir / KEY_FILE} is readable by others; chmod 600 it")
    return enrollment
