"""``conduit recordings [list]``: the recordings you may see (``GET /api/recordings``).

Filters as on the Recordings page: ``--user``, ``--asset``, ``--kind`` (a recording format such
as ``pcap``, or a forward's protocol such as ``modbus``), ``--from``/``--to`` (``YYYY-MM-DD``,
session start, UTC). The KIND column is the session's kind as people read it: a forward to an
inspected endpoint shows its protocol (``Modbus``), not ``tcp``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli.api_client import call

FILTERS = ("user", "asset", "kind", "from", "to")


def add_parser(rsub: Any) -> None:
    ls: argparse.ArgumentParser = rsub.add_parser("list", help="recordings you may see")
    for name in FILTERS:
        ls.add_argument(f"--{name}", dest=f"filter_{name}", metavar=name.upper())
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_recordings)


def list_recordings(args: argparse.Namespace) -> int:
    params = {k: v for k in FILTERS if (v := getattr(args, f"filter_{k}", None))}
    rows = call("GET", "/api/recordings", params=params)["recordings"]
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no recordings")
    for r in rows:
        target = f"{r['login']}@{r['asset']}" if r.get("login") else r["asset"]
        print(
            f"{r['id']}  {r['format']:<9} {r['session_kind']:<12} {r['user']:<16} "
            f"{target:<24} {r['started_at']}  {r['size_bytes']} B  {r['integrity']}"
        )
    return 0
