"""``conduit request|requests|grants|approve|deny|cancel|revoke|lockout``: access from the CLI."""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli.api_client import call
from broker.cli.ids import missing, resolve

ID_HELP = "id, or an unambiguous prefix of it, as listed by `conduit {}`"


def add_parser(sub: Any) -> None:
    r = sub.add_parser("request", help="ask for access to an asset for a window")
    r.add_argument("asset")
    r.add_argument(
        "--class",
        dest="operation_class",
        default="read_only",
        choices=["read_only", "tune", "program", "firmware"],
    )
    r.add_argument(
        "--for", dest="duration", default="1h", help="duration, e.g. 2h, 90m (default 1h)"
    )
    r.add_argument("--start", help="ISO-8601 start with time zone (default: now)")
    r.add_argument("--reason", required=True)
    r.add_argument("--ticket")
    r.add_argument(
        "--port",
        type=int,
        action="append",
        dest="ports",
        help="a declared endpoint port of the asset (repeat; default: every declared endpoint)",
    )
    r.add_argument("--login", help="the SSH login on the asset (one the asset declares)")
    r.add_argument(
        "--window-only",
        action="store_true",
        help="the grant is usable only inside the site's maintenance windows",
    )
    r.set_defaults(func=request)
    for name, what in (("requests", "access requests"), ("grants", "grants")):
        ls = sub.add_parser(name, help=f"list {what} (yours, or those you approve)")
        ls.add_argument("--state")
        ls.add_argument("--mine", action="store_true")
        ls.add_argument("--json", action="store_true")
        ls.set_defaults(func=listing, what=name)
    a = sub.add_parser("approve", help="approve a pending request")
    a.add_argument("id", help=ID_HELP.format("requests"))
    a.set_defaults(func=approve)
    d = sub.add_parser("deny", help="deny a pending request")
    d.add_argument("id", help=ID_HELP.format("requests"))
    d.add_argument("--reason", required=True)
    d.set_defaults(func=deny)
    c = sub.add_parser("cancel", help="cancel your pending request")
    c.add_argument("id", help=ID_HELP.format("requests"))
    c.set_defaults(func=cancel)
    v = sub.add_parser("revoke", help="revoke a grant now")
    v.add_argument("id", help=ID_HELP.format("grants"))
    v.add_argument("--reason", required=True)
    v.set_defaults(func=revoke)
    lo = sub.add_parser(
        "lockout", help="suspend (on) or resume (off) all vendor access; status shows it"
    )
    lsub = lo.add_subparsers(dest="state", required=True, metavar="{on,off,status}")
    for state, what in (
        ("on", "suspend all vendor access"),
        ("off", "resume vendor grants still inside their window"),
    ):
        switch = lsub.add_parser(state, help=f"{what} (admin)")
        switch.add_argument("--reason", required=True, help="why (kept in the audit log)")
        switch.set_defaults(func=lockout)
    lsub.add_parser("status", help="whether the lockout is on").set_defaults(func=lockout)
    w = sub.add_parser("windows", help="recurring maintenance windows per site")
    wsub = w.add_subparsers(dest="windows_command", required=True, metavar="ACTION")
    wl = wsub.add_parser("list", help="list the maintenance windows")
    wl.set_defaults(func=windows_list)
    wa = wsub.add_parser(
        "add", help="e.g. add 'Riverside Plant' --days tue --start 22:00 --end 02:00"
    )
    wa.add_argument("site")
    wa.add_argument("--days", required=True, help="comma-separated: mon,tue,...")
    wa.add_argument("--start", required=True, help="HH:MM in the site's time zone")
    wa.add_argument("--end", required=True, help="HH:MM; before --start means past midnight")
    wa.add_argument("--description", default="")
    wa.set_defaults(func=windows_add)
    wr = wsub.add_parser("remove", help="remove a maintenance window")
    wr.add_argument("id", help=ID_HELP.format("windows list"))
    wr.set_defaults(func=windows_remove)


def request(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "asset": args.asset,
        "operation_class": args.operation_class,
        "duration": args.duration,
        "reason": args.reason,
        "ticket": args.ticket,
        "ports": args.ports or [],
        "login": args.login,
        "maintenance_window_only": args.window_only,
    }
    if args.start:
        body["starts_at"] = args.start
    row = call("POST", "/api/requests", body=body)
    print(
        f"Request {row['id']} for {row['asset']} ({row['operation_class']}) "
        f"{row['starts_at']} - {row['ends_at']}: {row['state']}"
    )
    print(f"  reaches: {scope_text(row)}")
    return 0


def scope_text(row: dict[str, Any]) -> str:
    """``ssh 127.0.0.1:22 as maint, modbus 127.0.0.1:502``: what a request or grant reaches."""
    parts = []
    for e in row.get("endpoints") or []:
        login = f" as {row['login']}" if e["protocol"] == "ssh" and row.get("login") else ""
        parts.append(f"{e['protocol']} {e['host']}:{e['port']}{login}")
    missing = sorted(set(row.get("ports") or []) - {e["port"] for e in row.get("endpoints") or []})
    parts += [f"port {p} (no longer declared)" for p in missing]
    return ", ".join(parts) or "nothing"


def listing(args: argparse.Namespace) -> int:
    params = {
        k: v for k, v in {"state": args.state, "mine": "1" if args.mine else None}.items() if v
    }
    rows = call("GET", f"/api/{args.what}", params=params)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no {args.what}")
    for row in rows:
        who = row.get("requester") or row.get("user")
        print(
            f"{row['id']}  {row['state']:<9} {row['asset']:<14} {row['operation_class']:<9} "
            f"{row['starts_at']} - {row['ends_at']}  {who}"
        )
        print(f"    reaches: {scope_text(row)}")
        if row.get("mfa_warning"):
            print(f"    warning: {row['mfa_warning']}")
        for line in row.get("obligations_text") or []:
            print(f"    {line}")
    return 0


def _request_label(row: dict[str, Any]) -> str:
    return f"{row['state']} {row['asset']}, {row.get('requester') or row.get('user')}"


def _no_request(args: argparse.Namespace) -> str | None:
    return missing("request", args.id, "`conduit requests`")


def _request_id(given: str) -> str:
    return resolve("request", given, "/api/requests", "conduit requests", label=_request_label)


def approve(args: argparse.Namespace) -> int:
    out = call("POST", f"/api/requests/{_request_id(args.id)}/approve", not_found=_no_request(args))
    print(
        f"Approved; grant {out['grant_id']} is {out['grant_state']}."
        if out["grant_id"]
        else "Approval recorded; more approvals are needed."
    )
    return 0


def deny(args: argparse.Namespace) -> int:
    out = call(
        "POST",
        f"/api/requests/{_request_id(args.id)}/deny",
        body={"reason": args.reason},
        not_found=_no_request(args),
    )
    print(f"Request {out['id']} is {out['state']}.")
    return 0


def cancel(args: argparse.Namespace) -> int:
    out = call("POST", f"/api/requests/{_request_id(args.id)}/cancel", not_found=_no_request(args))
    print(f"Request {out['id']} is {out['state']}.")
    return 0


def revoke(args: argparse.Namespace) -> int:
    grant = resolve("grant", args.id, "/api/grants", "conduit grants", label=_request_label)
    out = call(
        "POST",
        f"/api/grants/{grant}/revoke",
        body={"reason": args.reason},
        not_found=missing("grant", args.id, "`conduit grants`"),
    )
    print(f"Grant {out['id']} is {out['state']}.")
    return 0


def lockout(args: argparse.Namespace) -> int:
    if args.state == "status":
        on = call("GET", "/api/lockout")["vendor_lockout"]
    else:
        out = call("POST", "/api/lockout", body={"on": args.state == "on", "reason": args.reason})
        on = out["vendor_lockout"]
        if on:
            print(f"{out['suspended_grants']} vendor grant(s) suspended; live sessions cut.")
        else:
            print(f"Lockout lifted; {out['resumed_grants']} vendor grant(s) resumed.")
    print(f"Vendor lockout is {'ON: all vendor access is disabled' if on else 'off'}.")
    return 0


def windows_list(args: argparse.Namespace) -> int:
    rows = call("GET", "/api/windows")
    for w in rows:
        days = ",".join(w["days"])
        print(f"{w['id']}  {w['site']:<18} {days:<20} {w['start']}-{w['end']}  {w['description']}")
    if not rows:
        print("no maintenance windows")
    return 0


def windows_add(args: argparse.Namespace) -> int:
    body = {
        "site": args.site,
        "days": [d for d in args.days.split(",") if d],
        "start": args.start,
        "end": args.end,
        "description": args.description,
    }
    w = call("POST", "/api/windows", body=body)
    print(f"Window {w['id']}: {w['site']} {','.join(w['days'])} {w['start']}-{w['end']}")
    return 0


def windows_remove(args: argparse.Namespace) -> int:
    window = resolve(
        "window", args.id, "/api/windows", "conduit windows list", label=lambda w: w["site"]
    )
    call(
        "DELETE",
        f"/api/windows/{window}",
        not_found=missing("window", args.id, "`conduit windows list`"),
    )
    print(f"Window {window} removed.")
    return 0
