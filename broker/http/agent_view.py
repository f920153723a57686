"""Agents as the list views show them: one shape for ``/admin/agents`` and ``GET /api/agents``.

Stored facts (:mod:`sessions.agents`), live health from this broker's gateway connections
(connected, last seen, active channels, kill switch) and the declared inventory with the assets
each endpoint serves. No secrets: no token, no key material beyond the key pin.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from broker.gateway.live_agent import LiveAgent
from broker.services import Services
from sessions.agents.registry import AgentView
from sessions.authorizer import iso


def agent_json(view: AgentView, live: LiveAgent | None, now: datetime) -> dict[str, Any]:
    """One agent for list views: stored facts, live health, inventory. No secrets."""
    a = view.agent
    last_seen = live.last_seen if live else a.last_seen_at
    return {
        "id": a.id,
        "name": a.name,
        "state": a.state,
        "site": view.site,
        "zone": view.zone,
        "version": (live.version if live else None) or a.version,
        "hostname": (live.hostname if live else None) or a.hostname,
        "connected": live is not None,
        "connected_via": a.connected_via if live is None else "this broker",
        "last_seen": iso(last_seen) if last_seen else None,
        "seconds_since_seen": int((now - last_seen).total_seconds()) if last_seen else None,
        "active_channels": live.agent_channels if live else 0,
        "kill_switch": live.kill_switch if live else False,
        "key_pin": a.key_pin,
        "endpoints": [
            {
                "id": e.id,
                "name": e.name,
                "host": e.host,
                "port": e.port,
                "protocol": e.protocol,
                "declared": e.declared,
                "asset": ", ".join(view.assets.get(e.id, [])) or None,
                "assets": view.assets.get(e.id, []),
            }
            for e in view.endpoints
        ],
        "unmatched": [
            f"{e.host}:{e.port}" for e in view.endpoints if e.declared and e.id not in view.assets
        ],
        "undeclared_assets": view.undeclared_assets,
    }


async def agent_list(svc: Services) -> list[dict[str, Any]]:
    """Every agent; live facts (this broker's gateway connections) win over stored ones."""
    views = await run_in_threadpool(svc.agents.list)
    live = svc.gateway.live() if svc.gateway else {}
    now = svc.clock.now()
    return [agent_json(v, live.get(v.agent.id), now) for v in views]
