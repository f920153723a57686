"""``conduit users list|revoke|disable|enable``: users' live credentials, revoking all of them,
and disabling (offboarding) or enabling a user (admin).

Both call the broker's admin API (:mod:`broker.web.users_admin`) with the stored CLI token. A user
is named by id, email, IdP subject or exact name; an ambiguous or unknown name is refused.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli.api_client import call
from broker.runtime.errors import BrokerError


def add_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="users' credentials; revoke all of a user's (admin)")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    ls = usub.add_parser("list", help="users with their live tokens, certificates and sessions")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=listing)
    r = usub.add_parser(
        "revoke", help="revoke every CLI token, SSH certificate and browser session of a user"
    )
    r.add_argument("user", help="user id, email, IdP subject or name")
    r.add_argument("--reason", required=True)
    r.set_defaults(func=revoke)
    d = usub.add_parser(
        "disable",
        help="offboard a user: refuse their sign-in, revoke every credential and grant",
    )
    d.add_argument("user", help="user id, email, IdP subject or name")
    d.add_argument("--reason", required=True)
    d.set_defaults(func=disable)
    e = usub.add_parser("enable", help="let a disabled user sign in again (no grant comes back)")
    e.add_argument("user", help="user id, email, IdP subject or name")
    e.add_argument("--reason", required=True)
    e.set_defaults(func=enable)


def listing(args: argparse.Namespace) -> int:
    users = call("GET", "/api/users")
    if args.json:
        print(json.dumps(users, indent=2))
        return 0
    for u in users:
        roles = ",".join(u["roles"]) or "-"
        state = "  DISABLED" if u["disabled"] else ""
        print(
            f"{u['id']}  {u['email'] or u['sub']:<36} {roles:<16} tokens {u['tokens']}  "
            f"certificates {u['certificates']}  sessions {u['sessions']}{state}"
        )
    return 0


def _resolve(name: str) -> dict[str, Any]:
    users = call("GET", "/api/users")
    found = [u for u in users if name in (u["id"], u["email"], u["sub"], u["name"])]
    if len(found) != 1:
        why = "no user" if not found else f"{len(found)} users"
        raise BrokerError(f"{why} named {name!r}: use the id from `conduit users list`")
    user: dict[str, Any] = found[0]
    return user


def revoke(args: argparse.Namespace) -> int:
    user = _resolve(args.user)
    out = call("POST", f"/api/users/{user['id']}/revoke", body={"reason": args.reason})
    done = out["revoked"]
    print(
        f"Revoked {len(done['cli_credentials'])} token(s) and {len(done['certificates'])} SSH "
        f"certificate(s) of {user['email'] or user['sub']}; ended {done['sessions']} browser "
        "session(s)."
    )
    return 0


def disable(args: argparse.Namespace) -> int:
    user = _resolve(args.user)
    out = call("POST", f"/api/users/{user['id']}/disable", body={"reason": args.reason})
    done = out["revoked"]
    print(
        f"Disabled {user['email'] or user['sub']}: revoked {len(out['grants'])} grant(s), "
        f"denied {len(out['requests'])} pending request(s), "
        f"{len(done['cli_credentials'])} token(s) and {len(done['certificates'])} SSH "
        f"certificate(s); ended {done['sessions']} browser session(s)."
    )
    return 0


def enable(args: argparse.Namespace) -> int:
    user = _resolve(args.user)
    call("POST", f"/api/users/{user['id']}/enable", body={"reason": args.reason})
    print(f"Enabled {user['email'] or user['sub']}: they may sign in again (no grant restored).")
    return 0
