"""Recording signing keys: the Ed25519 signer and public-key loading and printing."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sessions.recording.format import RecordingError


def public_key_openssh(key: Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA...`` (no comment)."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def fingerprint(key: Ed25519PublicKey) -> str:
    """OpenSSH-style ``SHA256:<base64, unpadded>`` of the public key blob."""
    blob = base64.b64decode(public_key_openssh(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from OpenSSH (``ssh-ed25519 AAAA... [comment]``) or PEM text.

    Raises :class:`RecordingError` (``bad_public_key``) for anything else, including other
    key types and private keys.
    """
    text = data.strip()
    try:
        if text.startswith(b"ssh-ed25519 "):
            key: object = serialization.load_ssh_public_key(b" ".join(text.split()[:2]))
        elif text.startswith(b"-----BEGIN PUBLIC KEY-----"):
            key = serialization.load_pem_public_key(text)
        else:
            raise ValueError("neither an OpenSSH nor a PEM public key")
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RecordingError(f"reading public key: {exc}", code="bad_public_key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise RecordingError("reading public key: not an Ed25519 key", code="bad_public_key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """:func:`parse_public_key` on a file; unreadable files raise ``bad_public_key`` too."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(
            f"reading public key {path}: {exc.strerror}", code="bad_public_key"
        ) from exc
    return parse_public_key(data)


class Signer(Protocol):
    """Signs chain entries and manifests; the recording stores ``fingerprint`` as ``signer``."""

    @property
    def public_key(self) -> Ed25519PublicKey: ...

    @property
    def fingerprint(self) -> str: ...

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data``."""
        ...


class Ed25519Signer:
    """:class:`Signer` over an in-memory Ed25519 private key (from ``cryptography``)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key()
        self._fingerprint = fingerprint(self._public)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path) -> Ed25519Signer:
        """Load an unencrypted OpenSSH or PKCS#8 PEM Ed25519 private key.

        Raises :class:`RecordingError` (``bad_key``) if unreadable or not Ed25519. File
        permissions are the caller's concern (see ``broker.keys.recording``).
        """
        try:
            data = path.read_bytes()
            if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
                key: object = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise RecordingError(f"reading signing key {path}: {exc}", code="bad_key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise RecordingError(f"signing key {path} is not Ed25519", code="bad_key")
        return cls(key)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._public

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def public_key_openssh(self) -> str:
        return public_key_openssh(self._public)

    def private_key_openssh(self) -> bytes:
        """The private key in OpenSSH format, unencrypted (for writing the 0600 key file)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)
