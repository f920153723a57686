"""``conduit agents token|list|revoke|adopt``: enrol, watch, revoke agents and adopt endpoints.

Every command calls the broker's admin JSON API (:mod:`broker.api.agent_api`) with the stored CLI
token, so the admin role is checked (and refusals audited) by the broker. A join token is
printed once, by ``agents token``; no other command shows it. Errors from the broker end the
command with its message and exit code 2 (see :func:`broker.cli.main`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli.api_client import call
from broker.cli.ids import FULL_ID, missing, pick, resolve

CRITICALITIES = ("low", "medium", "high", "critical")


def add_parser(sub: Any) -> None:
    agents = sub.add_parser("agents", help="zone agents: join tokens, health, revoke, adopt")
    asub = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")

    t = asub.add_parser("token", help="create a one-time join token for a new agent")
    t.add_argument("--site", required=True, help="site the agent serves, e.g. 'Riverside Plant'")
    t.add_argument("--zone", help="zone inside the site (default: none)")
    t.add_argument("--ttl", default="15m", help="token lifetime, e.g. 15m, 2h (default 15m)")
    t.add_argument("--name", default="", help="agent name (letters, digits, - and _)")
    t.add_argument("--json", action="store_true", help="print the API answer as JSON")
    t.set_defaults(func=token)

    ls = asub.add_parser("list", help="agents with health and inventory")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=listing)

    r = asub.add_parser("revoke", help="revoke an agent for good (its tunnel is cut now)")
    r.add_argument("id", help="agent id, or an unambiguous prefix, from `conduit agents list`")
    r.set_defaults(func=revoke)

    a = asub.add_parser("adopt", help="create the asset for an agent's unmatched endpoint")
    a.add_argument(
        "endpoint_id", help="endpoint id, or an unambiguous prefix, from `conduit agents list`"
    )
    a.add_argument("--name", required=True, help="asset name")
    a.add_argument("--owner-group", required=True, help="IdP group that approves access")
    a.add_argument("--criticality", default="medium", choices=CRITICALITIES)
    a.add_argument("--zone", help="zone of the asset (default: the agent's zone)")
    a.set_defaults(func=adopt)


def token(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"site": args.site, "ttl": args.ttl, "name": args.name}
    if args.zone:
        body["zone"] = args.zone
    out = call("POST", "/api/agents/tokens", body=body)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    where = f"{args.site}" + (f" / {args.zone}" if args.zone else "")
    print(f"Join token {out['token_id']} for {where}, single use, expires {out['expires_at']}.")
    print("It is shown only now; keep it secret until the agent has joined.\n")
    print(f"  {out['token']}\n")
    print("On the agent host (add --config FILE unless /etc/conduit-agent/agent.toml is used):\n")
    print(f"  {out['command']}")
    return 0


def _ago(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _where(agent: dict[str, Any]) -> str:
    return f"{agent['site']}" + (f"/{agent['zone']}" if agent.get("zone") else "")


def _connection(agent: dict[str, Any]) -> str:
    if agent["connected"]:
        return f"connected ({agent['connected_via']})"
    if agent.get("connected_via"):
        return f"via {agent['connected_via']}"
    return "disconnected"


def format_agents(agents: list[dict[str, Any]]) -> list[str]:
    """The ``agents list`` table: one line per agent, then one per endpoint / missing asset."""
    if not agents:
        return ["no agents"]
    cols = ("ID", "NAME", "SITE/ZONE", "STATE", "CONNECTION", "LAST SEEN", "VERSION", "CH", "KILL")
    rows = [
        (
            a["id"],
            a["name"],
            _where(a),
            a["state"],
            _connection(a),
            _ago(a["seconds_since_seen"]),
            a["version"] or "?",
            str(a["active_channels"]),
            "ENGAGED" if a["kill_switch"] else "off",
        )
        for a in agents
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(cols)]
    for agent, row in zip(agents, rows, strict=True):
        out.append(line(row))
        for ep in agent["endpoints"]:
            target = f"{ep['host']}:{ep['port']}"
            if not ep["declared"]:
                match = f"no longer declared (was {ep['asset'] or 'unmatched'})"
            else:
                match = f"-> {ep['asset']}" if ep["asset"] else "UNMATCHED"
            out.append(f"    endpoint {ep['id']}  {target:<21} {ep['protocol']:<8} {match}")
        for name in agent["undeclared_assets"]:
            out.append(f"    asset {name}: its endpoint is not declared by this agent")
    return out


def listing(args: argparse.Namespace) -> int:
    agents = call("GET", "/api/agents")["agents"]
    if args.json:
        print(json.dumps(agents, indent=2))
        return 0
    print("\n".join(format_agents(agents)))
    return 0


def revoke(args: argparse.Namespace) -> int:
    agent = resolve(
        "agent", args.id, "/api/agents", "conduit agents list", key="agents", label=_where
    )
    gone = missing("agent", args.id, "`conduit agents list`")
    out = call("POST", f"/api/agents/{agent}/revoke", not_found=gone)
    print(f"Agent {out['id']} is {out['state']}; its key can never connect again.")
    return 0


def adopt(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "owner_group": args.owner_group,
        "criticality": args.criticality,
    }
    if args.zone:
        body["zone"] = args.zone
    endpoint = args.endpoint_id
    if not FULL_ID.match(endpoint.lower()):
        agents = call("GET", "/api/agents")["agents"]
        endpoints = (
            (ep["id"], f"{ep['host']}:{ep['port']} on {a['name']}")
            for a in agents
            for ep in a["endpoints"]
        )
        endpoint = pick("endpoint", endpoint, endpoints, "`conduit agents list`")
    gone = missing("endpoint", args.endpoint_id, "`conduit agents list`")
    out = call("POST", f"/api/agents/endpoints/{endpoint}/adopt", body=body, not_found=gone)
    print(f"Asset {out['asset']} created for endpoint {out['endpoint']}.")
    return 0
