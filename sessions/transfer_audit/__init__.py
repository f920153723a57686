"""File-transfer audit for relayed SFTP and legacy scp channels: name, size, SHA-256, direction.

The SSH front door relays a vendor's channel to an asset's channel byte for byte. An auditor
watches both byte streams of one channel *without changing them* and reports one
:class:`TransferEvent` per transferred file::

    audit = auditor_for(subsystem, command, on_event)   # None: not a file-transfer channel
    audit.from_client(data)    # every vendor→asset byte, in order, before/when it is forwarded
    audit.from_server(data)    # every asset→vendor stdout byte (never stderr), in order
    audit.finish()             # channel gone: report files still in flight as incomplete

Contracts (both auditors):

* Input may be split or coalesced arbitrarily; only the order within each direction matters,
  plus causality across directions (a reply is fed after the request it answers, which holds
  when the relay feeds each chunk as it passes through).
* Nothing here raises on peer input. Malformed or oversized input sets :attr:`broken` (with a
  reason in :attr:`error`) and auditing of that channel stops; the relay carries on untouched.
  Exceptions raised by ``on_event`` are logged and swallowed.
* Memory is bounded: whole files are never kept, only running hashes, the chunk being fed,
  a parse buffer (under one SFTP packet, :data:`MAX_SFTP_PACKET`) and a reorder buffer for pipelined
  SFTP requests that arrive out of order (:data:`REORDER_LIMIT` bytes / :data:`REORDER_CHUNKS`
  chunks per auditor, after which the affected file is reported ``complete=False``).
* ``sha256`` is over the content in file order from offset 0, as far as it was contiguous
  (``hashed_size`` bytes); ``size`` counts every content byte that crossed the channel. For a
  ``complete`` event both describe exactly the transferred file content. For SFTP the hash
  covers what was transferred, not the resulting file (a write-only open without TRUNC can
  leave older bytes beyond the written range).

SFTP (version 3, as spoken by OpenSSH): OPEN → HANDLE maps a handle to its path; WRITE data is
an upload, READ + DATA replies a download; the event is emitted when the CLOSE reply arrives.
Upload events are emitted for every handle opened for writing (so empty uploads are seen);
download events for every handle that was read from. Metadata operations (REMOVE, RENAME,
MKDIR, SETSTAT, ...) and server-side copies (``copy-data``) are not reported here.

Legacy scp (``scp -t`` = upload to the asset, ``scp -f`` = download): the sender's ``C``, ``D``,
``E`` and ``T`` messages are parsed, with the receiver's acknowledgements deciding whether file
data follows. The wire protocol carries base names only: ``path`` is the name joined under any
``D`` directories, and :attr:`TransferEvent.remote` holds the path argument(s) of the remote
``scp`` command. Files the receiver refuses before any data are not reported.

Only the standard library is used (no asyncssh), so this module can be tested on recorded
byte streams from real OpenSSH programs.
"""

from __future__ import annotations

import posixpath
import shlex

from sessions.transfer_audit.base import (
    MAX_SCP_LINE,
    MAX_SFTP_PACKET,
    Direction,
    EventSink,
    TransferAuditor,
    TransferEvent,
    TransferProtocol,
)
from sessions.transfer_audit.scp import ScpAuditor
from sessions.transfer_audit.sftp import SftpAuditor


def auditor_for(
    subsystem: str | None, command: str | None, on_event: EventSink
) -> TransferAuditor | None:
    """The auditor for a channel opened with this subsystem or exec command, or None.

    ``sftp`` subsystems and exec'd ``sftp-server`` get an :class:`SftpAuditor`; exec'd
    ``scp -t``/``scp -f`` (legacy protocol) a :class:`ScpAuditor`. Anything else (shells,
    other commands, unparseable command lines) is not a file transfer: None.
    """
    if subsystem is not None:
        return SftpAuditor(on_event) if subsystem == "sftp" else None
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv:
        return None
    program = posixpath.basename(argv[0])
    if program == "sftp-server":
        return SftpAuditor(on_event)
    if program != "scp":
        return None
    flags: set[str] = set()
    rest: list[str] = []
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            rest = argv[i + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            rest = argv[i:]
            break
        flags.update(arg[1:])
    if ("t" in flags) == ("f" in flags):
        return None
    direction: Direction = "upload" if "t" in flags else "download"
    return ScpAuditor(on_event, direction, remote=" ".join(rest) or None)


__all__ = [
    "MAX_SCP_LINE",
    "MAX_SFTP_PACKET",
    "Direction",
    "EventSink",
    "ScpAuditor",
    "SftpAuditor",
    "TransferAuditor",
    "TransferEvent",
    "TransferProtocol",
    "auditor_for",
]
