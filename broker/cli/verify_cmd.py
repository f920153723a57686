"""``conduit verify RECORDING`` and ``conduit recordings export``: offline recording checks.

Only the broker's public recording key is needed (``--public-key FILE``, OpenSSH or PEM; default
``<data_dir>/keys/recording_ed25519.pub`` from the settings). Exit codes of ``verify``:

* 0 ``OK: ...`` — complete and intact;
* 0 ``INCOMPLETE: ...`` — no manifest (the broker stopped mid-session); everything up to the
  last flush verified. Scripts that need a cleanly ended recording must check the first word;
* 1 ``BROKEN: chunk N (file): reason`` — tampered with or damaged; the first fault is named;
* 2 — the recording or key could not be read.

``recordings export`` writes the verified content (e.g. a ``.cast`` file for ``asciinema``) and
refuses a BROKEN recording (exit 1); ``--no-verify`` skips the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli.common import add_config_arg, settings_from
from broker.errors import BrokerError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from sessions.recording import VerifyResult


def add_parser(sub: Any) -> None:
    v: argparse.ArgumentParser = sub.add_parser(
        "verify", help="verify a session recording offline (exit 1 if broken)"
    )
    _common_args(v)
    v.set_defaults(func=verify)
    r: argparse.ArgumentParser = sub.add_parser("recordings", help="session recordings")
    rsub = r.add_subparsers(dest="recordings_command", required=True)
    e = rsub.add_parser("export", help="write a recording's content to one file")
    _common_args(e)
    e.add_argument("-o", "--output", type=Path, required=True, help="file to create (0600)")
    e.add_argument("--no-verify", action="store_true", help="export without verifying")
    e.set_defaults(func=export)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", type=Path, metavar="RECORDING_DIR")
    p.add_argument(
        "--public-key",
        type=Path,
        help="the broker's recording public key (default: <data_dir>/keys/recording_ed25519.pub)",
    )
    add_config_arg(p)


def _public_key(args: argparse.Namespace) -> Ed25519PublicKey:
    from broker.recording_keys import public_key_path, recording_key_dir
    from sessions.recording import load_public_key

    path: Path | None = args.public_key
    if path is None:
        try:
            path = public_key_path(recording_key_dir(settings_from(args).data_dir))
        except BrokerError as exc:
            raise BrokerError(
                f"no public key: pass --public-key FILE (settings: {exc.message})"
            ) from exc
    return load_public_key(path)


def _verify(args: argparse.Namespace) -> VerifyResult:
    from sessions.recording import verify_recording

    return verify_recording(args.recording, _public_key(args))


def verify(args: argparse.Namespace) -> int:
    from sessions.errors import SessionsError

    try:
        result = _verify(args)
    except SessionsError as exc:
        raise BrokerError(f"verify: {exc.message}", code=exc.code) from exc
    print(result.summary())
    for note in result.notes:
        print(f"  note: {note}")
    return 0 if result.ok else 1


def export(args: argparse.Namespace) -> int:
    from sessions.errors import SessionsError
    from sessions.files import atomic_output
    from sessions.recording import iter_chunks

    try:
        if not args.no_verify:
            result = _verify(args)
            if not result.ok:
                print(f"not exported: {result.summary()}", file=sys.stderr)
                return 1
            print(result.summary(), file=sys.stderr)
        if args.output.exists():  # refused up front; the atomic link below is the guarantee
            raise FileExistsError(args.output)
        # Atomic: the output appears whole or not at all (never a half-exported recording).
        with atomic_output(args.output, mode=0o600, replace=False) as out:
            size = sum(out.write(chunk) for chunk in iter_chunks(args.recording))
    except FileExistsError as exc:
        raise BrokerError(f"export: {args.output} already exists") from exc
    except OSError as exc:
        raise BrokerError(f"export: writing {args.output}: {exc.strerror}") from exc
    except SessionsError as exc:
        raise BrokerError(f"export: {exc.message}", code=exc.code) from exc
    print(f"exported {size} bytes to {args.output}", file=sys.stderr)
    return 0
