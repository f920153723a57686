"""The plant page for admins: ``/admin/plant`` shows the whole plant, its forms change it.

Every form edits the exported plant document (a site, maintenance window, zone, asset,
endpoint, vendor org or contract, or removes one) with :func:`broker.http.plant_changes.edit_plant`:
the same validation, audit (``plant.*`` with before/after; ``plant.refused``) and policy-data
refresh as ``conduit plant apply`` and the per-object API, with the same rules for what may be
removed (:mod:`broker.http.plant_document`). A refused form is shown again with
the exact message next to it and nothing changed. Per asset endpoint the page says which agent
reaches it (the endpoint's own, else the asset's) and warns when that agent does not declare it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.auth.auth import Principal
from broker.http.plant_changes import edit_plant, exported
from broker.http.plant_document import (
    ASSET,
    CONTRACT,
    ORG,
    SITE,
    WINDOW,
    ZONE,
    Kind,
    create,
    find,
    items_of,
    listed,
    remove,
)
from broker.http.web import check_csrf, render, require
from broker.services import services
from sessions.db import session_scope
from sessions.errors import ConflictError, SessionsError, ValidationError
from sessions.identity import ADMIN
from sessions.models import (
    Agent,
    AgentEndpoint,
    Asset,
    AssetEndpoint,
    Criticality,
    EndpointProtocol,
    OperationClass,
    route_agent,
)
from sessions.ot.registry import plugin_for
from sessions.windows import DAYS

Data = dict[str, Any]


def settings_summary(protocol: str, settings: dict[str, Any]) -> str:
    """Settings for people: ``SSH logins: read_only maint``, or an inspected protocol's plug-in
    title and its ``describe_settings`` line (``TITLE: tune may write ...``);
    "" for a protocol with neither."""
    if protocol == EndpointProtocol.SSH:
        logins = settings.get("logins", {})
        parts = [f"{op} {' '.join(logins[op])}" for op in OperationClass.ALL if logins.get(op)]
        return f"SSH logins: {'; '.join(parts) if parts else 'none'}"
    plugin = plugin_for(protocol)
    text = plugin.describe_settings(settings) if plugin is not None else ""
    return f"{plugin.title}: {text}" if plugin is not None and text else ""


@dataclass(frozen=True)
class Routing:
    """Which agent reaches each asset endpoint and whether that agent declares it."""

    agents: list[str]  # names of the agents an endpoint may name (not revoked)
    asset_agents: dict[str, str | None]  # asset name -> its own (fallback) agent's name
    endpoints: dict[
        tuple[str, str], tuple[str | None, bool]
    ]  # (asset, endpoint) -> (agent, declared)
    unmatched: list[dict[str, Any]]  # declared by an agent, in no asset endpoint it routes


def _routing(request: Request) -> Routing:
    """Per asset endpoint: the agent that reaches it (its own, else the asset's) and whether
    that agent declares its host:port; and the endpoints agents declare that no asset
    endpoint routed through them has (to adopt)."""
    svc = services(request)
    with session_scope(svc.engine) as db:
        agents = {a.id: a for a in db.exec(select(Agent)).all()}
        declared: dict[str, set[tuple[str, int]]] = {}
        rows = db.exec(select(AgentEndpoint).where(col(AgentEndpoint.declared))).all()
        for ep in rows:
            declared.setdefault(ep.agent_id, set()).add((ep.host, ep.port))
        used: set[tuple[str, str, int]] = set()
        routed: dict[str, set[str]] = {}
        endpoints: dict[tuple[str, str], tuple[str | None, bool]] = {}
        for asset, aep in db.exec(
            select(Asset, AssetEndpoint).join(
                AssetEndpoint, col(AssetEndpoint.asset_id) == col(Asset.id)
            )
        ).all():
            agent = agents.get(route_agent(asset, aep) or "")
            if agent is not None:
                used.add((agent.id, aep.host, aep.port))
                routed.setdefault(agent.id, set()).add(asset.name)
            endpoints[(asset.name, aep.name)] = (
                agent.name if agent else None,
                agent is not None and (aep.host, aep.port) in declared.get(agent.id, set()),
            )
        assets = db.exec(select(Asset).where(col(Asset.archived_at).is_(None))).all()
        for asset in assets:
            if asset.agent_id in agents:
                routed.setdefault(asset.agent_id, set()).add(asset.name)
        unmatched = [
            {
                "id": ep.id,
                "agent": agents[ep.agent_id].name,
                "host": ep.host,
                "port": ep.port,
                "protocol": ep.protocol if ep.protocol in EndpointProtocol.ALL else "tcp",
                "name": ep.name or ep.protocol,
                "assets": sorted(routed.get(ep.agent_id, [])),
            }
            for ep in rows
            if (ep.agent_id, ep.host, ep.port) not in used and ep.agent_id in agents
        ]
        return Routing(
            agents=sorted({a.name for a in agents.values() if a.revoked_at is None}),
            asset_agents={
                a.name: agents[a.agent_id].name if a.agent_id in agents else None for a in assets
            },
            endpoints=endpoints,
            unmatched=sorted(unmatched, key=lambda e: (e["agent"], e["host"], e["port"])),
        )


def _keyed(site: Data) -> Data:
    """The site with each maintenance window's stable ``key`` (the removal form names it)."""
    return site | {"maintenance_windows": [listed(WINDOW, w) for w in site["maintenance_windows"]]}


async def _page(
    request: Request,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 400,
) -> Response:
    data = await exported(request)
    routing = await run_in_threadpool(_routing, request)
    assets = []
    for a in data["assets"]:
        endpoints = []
        for ep in a.get("endpoints", []):
            via, declared = routing.endpoints.get((a["name"], ep["name"]), (None, False))
            summary = settings_summary(ep["protocol"], ep.get("settings", {}))
            endpoints.append({**ep, "summary": summary, "via": via, "declared": declared})
        fallback = routing.asset_agents.get(a["name"])
        reached_by = {e["via"] for e in endpoints if e["via"]} | ({fallback} if fallback else set())
        assets.append({**a, "agents": sorted(reached_by), "endpoints": endpoints})
    return render(
        request,
        "plant.html",
        {
            "plant": data | {"sites": [_keyed(site) for site in data["sites"]]},
            "assets": assets,
            "unmatched": routing.unmatched,
            "agents": routing.agents,
            "errors": errors or {},
            "values": values or {},
            "protocols": EndpointProtocol.ALL,
            "criticalities": Criticality.ALL,
            "classes": OperationClass.ALL,
            "days": DAYS,
        },
        status=status if errors else 200,
    )


async def plant_page(request: Request) -> Response:
    await require(request, ADMIN)
    return await _page(request)


def _text(form: dict[str, Any], key: str) -> str:
    return str(form.get(key, "")).strip()


def _number(text: str) -> int | str:
    """An int if the field holds one, else the text (so the plant rules name it)."""
    try:
        return int(text)
    except ValueError:
        return text


def _replace(items: list[Data], key: str, item: Data, *, merge: bool = False) -> None:
    """Replace the item with the same ``key`` value (``merge``: keep the fields the form has
    not got, e.g. a site's zones), else append it."""
    for i, old in enumerate(items):
        if old.get(key) == item[key]:
            items[i] = {**old, **item} if merge else item
            return
    items.append(item)


Form = dict[str, Any]
Multi = dict[str, list[str]]


def _site_form(data: Data, form: Form, multi: Multi) -> None:
    site = {name: _text(form, name) for name in ("name", "timezone", "description")}
    _replace(data["sites"], "name", site, merge=True)


def _window_form(data: Data, form: Form, multi: Multi) -> None:
    window = {
        "days": multi.get("days", []),
        "start": _text(form, "start"),
        "end": _text(form, "end"),
        "description": _text(form, "description"),
    }
    create(data, WINDOW, _text(form, "site"), window)


def _zone_form(data: Data, form: Form, multi: Multi) -> None:
    zone = {
        "name": _text(form, "name"),
        "purdue_level": _number(_text(form, "purdue_level")),
        "description": _text(form, "description"),
    }
    _replace(items_of(data, ZONE, _text(form, "site")), "name", zone, merge=True)


def _asset_form(data: Data, form: Form, multi: Multi) -> None:
    fields = ("name", "site", "zone", "criticality", "owner_group", "description")
    _replace(data["assets"], "name", {f: _text(form, f) for f in fields}, merge=True)


def _endpoint_form(data: Data, form: Form, multi: Multi) -> None:
    asset = find(data, ASSET, None, _text(form, "asset"))
    try:
        settings = yaml.safe_load(_text(form, "settings") or "{}")
    except yaml.YAMLError as exc:
        raise ValidationError(f"settings: not YAML or JSON ({exc.__class__.__name__})") from None
    endpoint = {
        "name": _text(form, "name"),
        "host": _text(form, "host"),
        "port": _number(_text(form, "port")),
        "protocol": _text(form, "protocol"),
        "settings": settings if settings is not None else {},
    }
    if _text(form, "agent"):  # none chosen: reached through the asset's agent
        endpoint["agent"] = _text(form, "agent")
    _replace(asset.setdefault("endpoints", []), "name", endpoint)


def _detach_form(data: Data, form: Form, multi: Multi) -> None:
    asset = find(data, ASSET, None, _text(form, "asset"))
    endpoints = asset.get("endpoints", [])
    kept = [e for e in endpoints if e["name"] != _text(form, "endpoint")]
    if len(kept) == len(endpoints):
        raise ValidationError(f"asset has no endpoint {_text(form, 'endpoint')!r}")
    asset["endpoints"] = kept


def _org_form(data: Data, form: Form, multi: Multi) -> None:
    idp = [v.strip() for v in _text(form, "idp_values").split(",") if v.strip()]
    org = {"slug": _text(form, "slug"), "name": _text(form, "name"), "idp_values": idp}
    _replace(data["vendor_orgs"], "slug", org, merge=True)


def _contract_form(data: Data, form: Form, multi: Multi) -> None:
    contract: Data = {
        "reference": _text(form, "reference"),
        "valid_from": _text(form, "valid_from"),
        "valid_until": _text(form, "valid_until"),
        "operation_classes": multi.get("operation_classes", []),
    }
    for key in ("site", "asset"):
        if _text(form, key):
            contract[key] = _text(form, key)
    _replace(items_of(data, CONTRACT, _text(form, "org")), "reference", contract)


EDITS: dict[str, Callable[[Data, Form, Multi], None]] = {
    "site": _site_form,
    "window": _window_form,
    "zone": _zone_form,
    "asset": _asset_form,
    "endpoint": _endpoint_form,
    "detach": _detach_form,
    "vendor_org": _org_form,
    "contract": _contract_form,
}
# Removal forms: the kind, the form field naming its parent ("" for none) and its own name.
REMOVALS: dict[str, tuple[Kind, str, str]] = {
    "archive": (ASSET, "", "asset"),
    "site_remove": (SITE, "", "name"),
    "window_remove": (WINDOW, "site", "key"),
    "zone_remove": (ZONE, "site", "name"),
    "vendor_org_remove": (ORG, "", "slug"),
    "contract_remove": (CONTRACT, "org", "reference"),
}
FORMS = (*EDITS, *REMOVALS)


def _edit(kind: str, data: Data, form: Form, multi: Multi) -> bool:
    """Change ``data`` as the ``kind`` form asks; returns whether to archive removed assets."""
    if kind in REMOVALS:
        target, parent, name = REMOVALS[kind]
        remove(data, target, _text(form, parent) if parent else None, _text(form, name))
        return target is ASSET
    EDITS[kind](data, form, multi)
    return False


async def apply_form(
    request: Request, principal: Principal, kind: str
) -> tuple[SessionsError | None, dict[str, Any]]:
    """Apply one of the page's forms (``kind`` in FORMS; CSRF checked here) to the plant.

    Returns ``(None, values)`` when applied, else ``(the refusal, values)`` with nothing changed;
    ``values`` are the posted fields to show again. Also used by ``/admin/windows``.
    """
    form = await check_csrf(request, principal)
    posted = await request.form()
    multi = {key: [str(v) for v in posted.getlist(key)] for key in ("operation_classes", "days")}
    values = {k: v for k, v in form.items() if k != "csrf"} | multi
    try:
        await edit_plant(request, principal, lambda data: _edit(kind, data, form, multi))
    except SessionsError as exc:
        return exc, values
    return None, values


async def plant_form(request: Request) -> Response:
    principal = await require(request, ADMIN)
    kind = request.path_params["kind"]
    if kind not in FORMS:
        return Response("no such form", status_code=404)
    problem, values = await apply_form(request, principal, kind)
    if problem is not None:
        status = 409 if isinstance(problem, ConflictError) else 400
        return await _page(request, {kind: str(problem)}, {kind: values}, status)
    return RedirectResponse(f"/admin/plant#plant-{kind}", status_code=303)


routes = [
    Route("/admin/plant", plant_page, methods=["GET"]),
    Route("/admin/plant/{kind}", plant_form, methods=["POST"]),
]
