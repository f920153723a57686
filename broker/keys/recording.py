"""The broker's recording signing key: Ed25519 at ``<data_dir>/keys/recording_ed25519``.

Created on first use (OpenSSH format, 0600, in a 0700 directory) with its public key next to it
in ``recording_ed25519.pub`` (0644), which is all ``conduit verify`` needs. Brokers of one
deployment share the key directory. A key readable by group or others is refused, like the
agent keys (:mod:`broker.keys.agent`).
"""

from __future__ import annotations

from pathlib import Path

from broker.runtime.errors import BrokerError
from sessions.files import write_atomic
from sessions.recording import Ed25519Signer, RecordingError, load_public_key

KEY_NAME = "recording_ed25519"


def recording_key_dir(data_dir: Path) -> Path:
    return data_dir / "keys"


def public_key_path(key_dir: Path) -> Path:
    return key_dir / f"{KEY_NAME}.pub"


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Atomically create ``path`` with ``data``; False (and no change) if it already exists."""
    try:
        write_atomic(path, data, mode=mode, replace=False)  # another broker may win the race
    except FileExistsError:
        return False
    return True


def load_recording_signer(key_dir: Path) -> Ed25519Signer:
    """Load (or on first use create) the recording key in ``key_dir`` and (re)write its .pub.

    Raises :class:`BrokerError`: ``insecure_key`` if the private key is group/world-readable,
    ``bad_key`` if it cannot be read or is not Ed25519 or the files cannot be written.
    """
    path = key_dir / KEY_NAME
    try:
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            _write_new(path, Ed25519Signer.generate().private_key_openssh(), 0o600)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise BrokerError(
                f"recording key {path} is readable by others (mode {mode:o}); chmod 600 it",
                code="insecure_key",
            )
        signer = Ed25519Signer.from_file(path)
        pub = public_key_path(key_dir)
        expected = f"{signer.public_key_openssh()} conduit-recording\n".encode()
        if not pub.exists() or _public_differs(pub, signer):
            write_atomic(pub, expected, mode=0o644)  # never missing or half-written for readers
    except RecordingError as exc:
        raise BrokerError(f"recording key {path}: {exc.message}", code="bad_key") from exc
    except OSError as exc:
        raise BrokerError(f"recording key {path}: {exc}", code="bad_key") from exc
    return signer


def _public_differs(pub: Path, signer: Ed25519Signer) -> bool:
    try:
        return load_public_key(pub).public_bytes_raw() != signer.public_key.public_bytes_raw()
    except RecordingError:
        return True
