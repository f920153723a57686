"""``conduit plant export|apply``: the plant as code (docs/plant.md).

``export`` prints the plant as YAML. ``apply FILE`` parses the file here (so errors name its
line), sends the document to ``POST /api/plant/apply`` and prints the changes; ``--dry-run``
only shows them, ``--archive`` archives removed assets that have history instead of refusing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from broker.cli.api_client import call
from broker.runtime.errors import BrokerError
from sessions.clock import SystemClock

_MARKS = {"created": "+", "changed": "~", "removed": "-", "archived": "-"}


def add_parser(sub: Any) -> None:
    plant = sub.add_parser("plant", help="the plant as code: export, apply (admin)")
    psub = plant.add_subparsers(dest="plant_command", required=True, metavar="ACTION")
    ex = psub.add_parser("export", help="print the plant as YAML (or JSON)")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=export_cmd)
    ap = psub.add_parser("apply", help="make the plant match FILE (YAML or JSON)")
    ap.add_argument("file", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="only show what would change")
    ap.add_argument(
        "--archive", action="store_true", help="archive removed assets that have history"
    )
    ap.add_argument("--json", action="store_true", help="print the broker's answer as JSON")
    ap.set_defaults(func=apply_cmd)


def export_cmd(args: argparse.Namespace) -> int:
    data = call("GET", "/api/plant")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return 0


def load_file(path: Path) -> Any:
    """The file's data, checked locally; raises BrokerError naming ``FILE:LINE``."""
    from sessions.errors import ValidationError  # imported here: they pull in the data model
    from sessions.plant import PlantError, line_of, load_yaml, parse

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerError(
            f"plant apply: cannot read {path}: {exc.strerror}", code="invalid_plant"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BrokerError(f"plant apply: {path} is not UTF-8 text", code="invalid_plant") from exc
    try:
        data, lines = load_yaml(text)
        parse(data, SystemClock().now())
    except PlantError as exc:
        line = line_of(lines, exc.path)
        where = f"{path}:{line}" if line is not None else str(path)
        raise BrokerError(f"{where}: {exc.message}", code="invalid_plant") from None
    except ValidationError as exc:  # YAML syntax: "line N: ..."
        text = exc.message
        if text.startswith("line "):
            number, _, text = text[5:].partition(": ")
            raise BrokerError(f"{path}:{number}: {text}", code="invalid_plant") from None
        raise BrokerError(f"{path}: {text}", code="invalid_plant") from None
    return data


def _fields(change: dict[str, Any]) -> list[str]:
    before, after = change.get("before") or {}, change.get("after") or {}
    out = []
    for key in [*before, *(k for k in after if k not in before)]:
        if before.get(key) != after.get(key):
            old = json.dumps(before.get(key), sort_keys=True)
            new = json.dumps(after.get(key), sort_keys=True)
            out.append(f"      {key}: {old} -> {new}")
    return out


def apply_cmd(args: argparse.Namespace) -> int:
    data = load_file(args.file)
    body = {"document": data, "dry_run": args.dry_run, "archive": args.archive}
    out = call("POST", "/api/plant/apply", body=body)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for change in out["changes"]:
        mark = _MARKS[change["action"]]
        blocked = f"  REFUSED: {change['blocked']}" if change.get("blocked") else ""
        print(f"  {mark} {change['kind']} {change['key']} ({change['action']}){blocked}")
        if change["action"] == "changed":
            print("\n".join(_fields(change)))
    s = out["summary"]
    counts = f"{s['created']} created, {s['changed']} changed, {s['removed']} removed, "
    counts += f"{s['archived']} archived"
    if not out["changes"]:
        print("No changes: the plant already matches the file.")
    elif out["dry_run"]:
        print(f"Dry run, nothing changed: {counts}.")
        if out["refused"]:
            print("Applying would be refused (see REFUSED above).")
    else:
        print(f"Applied: {counts}.")
    return 0
