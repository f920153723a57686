"""``conduit verify RECORDING`` and ``conduit recordings export``: offline recording checks.

``RECORDING`` is a recording id as on the Recordings page (or an unambiguous prefix), the name of
its folder, or the folder itself; :mod:`broker.cli.recording_lookup` finds the folder (in the
database's ``recordings`` table, else under ``<data_dir>/recordings``) and the broker's public
recording key (``keys/recording_ed25519.pub`` beside the recordings folder); ``--public-key FILE``
(OpenSSH or PEM) names another. No server settings are loaded. Exit codes of ``verify``:

* 0 ``OK: ...`` — complete and intact;
* 0 ``INCOMPLETE: ...`` — no manifest (the broker stopped mid-session); everything up to the
  last flush verified. Scripts that need a cleanly ended recording must check the first word;
* 1 ``BROKEN: chunk N (file): reason`` — tampered with or damaged; the first fault is named;
* 1 ``BROKEN: truncated: ...`` — the audit log records a clean end (``recording.closed`` with
  the final chain hash) that the recording lacks: its end was removed, not lost in a crash;
* 1 ``BROKEN: ... session.ended (event N, session S) ... records final chain ...`` — the
  session's end names a final chain hash the recording does not end with;
* 2 — the recording, key or audit log could not be read.

The audit log is consulted when one is given: ``--audit-log FILE`` (an ``audit export`` file,
whose own chain is verified first), ``--database-url URL``, the database of a config file
(``--config``, ``$CONDUIT_CONFIG``) or ``$CONDUIT_DATABASE_URL``, or the database the recording
was found in by id. Without one, a truncated recording cannot be told from a crash and the
output says so.

``recordings export`` writes the verified content (e.g. a ``.cast`` file for ``asciinema``) and
refuses a BROKEN recording (exit 1); ``--no-verify`` skips the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli import recordings_list
from broker.cli.common import add_config_arg
from broker.cli.local import locate
from broker.cli.recording_lookup import find
from broker.runtime.errors import BrokerError

if TYPE_CHECKING:
    from sessions.recording import VerifyResult
    from sessions.recording_end import AuditedEnd, SessionBinding

# What the audit log records about a recording: its clean ends, the session's end naming it.
Audited = tuple[list["AuditedEnd"], list["SessionBinding"], str]


def add_parser(sub: Any) -> None:
    v: argparse.ArgumentParser = sub.add_parser(
        "verify", help="verify a session recording offline (exit 1 if broken)"
    )
    _common_args(v)
    v.set_defaults(func=verify)
    r: argparse.ArgumentParser = sub.add_parser("recordings", help="session recordings")
    r.set_defaults(func=recordings_list.list_recordings)  # plain `conduit recordings`: list
    rsub = r.add_subparsers(dest="recordings_command", metavar="ACTION")
    e = rsub.add_parser("export", help="write a recording's content to one file")
    _common_args(e)
    e.add_argument("-o", "--output", type=Path, required=True, help="file to create (0600)")
    e.add_argument("--no-verify", action="store_true", help="export without verifying")
    e.set_defaults(func=export)
    recordings_list.add_parser(rsub)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recording",
        metavar="RECORDING",
        help="recording id or unambiguous prefix (as on the Recordings page), or its folder",
    )
    p.add_argument(
        "--public-key",
        type=Path,
        help="the broker's recording public key (default: keys/recording_ed25519.pub in the "
        "broker's data directory)",
    )
    p.add_argument(
        "--audit-log", type=Path, metavar="FILE", help="`audit export` file to check its end"
    )
    p.add_argument("--database-url", help="check the end against this database's audit log")
    add_config_arg(p)


def _verify(args: argparse.Namespace) -> VerifyResult:
    """Find the recording (setting ``args.folder``), verify it, check its end if possible."""
    from sessions.recording import VerifyStatus, load_public_key, verify_recording
    from sessions.recording_end import check_end, check_session_end

    found = find(args)
    args.folder, args.found_in = found.folder, found.database_url
    result = verify_recording(found.folder, load_public_key(found.public_key))
    names = {found.folder.resolve().name, result.recording_id or ""} - {""}
    audited = _audited_ends(args, names)
    if audited is None:
        if result.status != VerifyStatus.INCOMPLETE:
            return result
        note = (
            "audit log not consulted (--audit-log FILE or --database-url URL): a recording "
            "whose end was removed cannot be told from a crash"
        )
        return dataclasses.replace(result, notes=(*result.notes, note))
    ends, bindings, source = audited
    result = check_end(result, ends, source=source)
    return check_session_end(result, bindings, source=source)


def _audited_ends(args: argparse.Namespace, recording_ids: set[str]) -> Audited | None:
    """The clean ends and the ``session.ended`` entries the audit log records for the
    recording, and where they came from."""
    from sessions.recording_end import (
        RECORDING_CLOSED,
        AuditedEnd,
        SessionBinding,
        session_of,
        subject,
    )
    from sessions.session_end import SESSION_ENDED

    subjects = {subject(rid) for rid in recording_ids}
    sessions = {f"session:{s}" for rid in recording_ids if (s := session_of(rid)) is not None}
    ends: list[AuditedEnd] = []
    bindings: list[SessionBinding] = []
    if args.audit_log is not None:
        from broker.cli.audit_cmd import read_export
        from sessions.audit import verify_chain

        matches: list[dict[str, Any]] = []
        ended: list[dict[str, Any]] = []

        def scan() -> Iterator[dict[str, Any]]:
            for record in read_export(args.audit_log):
                if record.get("kind") == RECORDING_CLOSED and record.get("subject") in subjects:
                    matches.append(record)
                if record.get("kind") == SESSION_ENDED and record.get("subject") in sessions:
                    ended.append(record)
                yield record

        chain = verify_chain(scan())
        if not chain.ok:
            raise BrokerError(f"audit log {args.audit_log} is not intact: {chain.reason}")
        for record in matches:
            details = record.get("details")
            end = AuditedEnd.from_event(record["seq"], details if isinstance(details, dict) else {})
            if end is not None:
                ends.append(end)
        for record in ended:
            details = record.get("details")
            bound = SessionBinding.from_event(
                record["seq"],
                record.get("subject"),
                details if isinstance(details, dict) else {},
                recording_ids,
            )
            if bound is not None:
                bindings.append(bound)
        return ends, bindings, f"the audit log {args.audit_log}"
    url = args.database_url or args.found_in
    configured = ("CONDUIT_CONFIG", "CONDUIT_DATABASE_URL")
    if url is None and (args.config is not None or any(os.environ.get(k) for k in configured)):
        url = locate(args).database_url
    if url is None:
        return None
    from sessions.audit import AuditLog
    from sessions.clock import SystemClock
    from sessions.db import create_db_engine

    audit = AuditLog(create_db_engine(url), SystemClock())
    for name in sorted(subjects):
        for event in audit.find(RECORDING_CLOSED, name):
            end = AuditedEnd.from_event(event.seq, event.details)
            if end is not None:
                ends.append(end)
    for name in sorted(sessions):
        for event in audit.find(SESSION_ENDED, name):
            bound = SessionBinding.from_event(event.seq, name, event.details, recording_ids)
            if bound is not None:
                bindings.append(bound)
    return ends, bindings, "the audit log"


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
        if args.no_verify:
            args.folder = find(args).folder
        else:
            result = _verify(args)
            if not result.ok:
                print(f"not exported: {result.summary()}", file=sys.stderr)
                return 1
            print(result.summary(), file=sys.stderr)
        if args.output.exists():  # refused up front; the atomic link below is the guarantee
            raise FileExistsError(args.output)
        # Atomic: the output appears whole or not at all (never a half-exported recording).
        with atomic_output(args.output, mode=0o600, replace=False) as out:
            size = sum(out.write(chunk) for chunk in iter_chunks(args.folder))
    except FileExistsError as exc:
        raise BrokerError(f"export: {args.output} already exists") from exc
    except OSError as exc:
        raise BrokerError(f"export: writing {args.output}: {exc.strerror}") from exc
    except SessionsError as exc:
        raise BrokerError(f"export: {exc.message}", code=exc.code) from exc
    print(f"exported {size} bytes to {args.output}", file=sys.stderr)
    return 0
