"""The plant page for admins: ``/admin/plant`` shows the whole plant, its forms change it.

Every form edits the exported plant document (one zone, asset, endpoint, vendor org or
contract) and applies the result with :func:`broker.plant_api.apply_document`: the same
validation, audit (``plant.*`` with before/after) and policy-data refresh as
``conduit plant apply``. A refused form is shown again with the exact message next to it and
nothing changed. Per asset endpoint the page says whether the asset's agent declares it.
"""

from __future__ import annotations

from typing import Any

import yaml
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from broker.auth import Principal
from broker.plant_api import apply_document, asset_index, exported
from broker.services import services
from broker.web import check_csrf, render, require
from sessions.db import session_scope
from sessions.errors import SessionsError, ValidationError
from sessions.identity import ADMIN
from sessions.models import (
    Agent,
    AgentEndpoint,
    Asset,
    AssetEndpoint,
    Criticality,
    EndpointProtocol,
    OperationClass,
)
from sessions.windows import DAYS

DASH = "\u2013"  # en dash, as in "0\u201399"
FORMS = (
    "site",
    "window",
    "window_remove",
    "zone",
    "asset",
    "endpoint",
    "detach",
    "archive",
    "vendor_org",
    "contract",
)


def _ranges(items: list[dict[str, Any]]) -> str:
    by_table: dict[str, list[str]] = {}
    for r in items:
        span = f"{r['first']}{DASH}{r['last']}" if r["first"] != r["last"] else str(r["first"])
        by_table.setdefault(r["table"].replace("_", " "), []).append(span)
    return ", ".join(f"{table} {' and '.join(spans)}" for table, spans in by_table.items())


def settings_summary(protocol: str, settings: dict[str, Any]) -> str:
    """Settings for people: ``Modbus: tune may write holding registers 0-99; unit ids 1``."""
    if protocol == EndpointProtocol.MODBUS:
        ranges = settings.get("write_ranges", {})
        parts = [
            f"{op} may write {_ranges(ranges[op])}" for op in OperationClass.ALL if op in ranges
        ]
        text = "; ".join(parts) or "no writes"
        units = settings.get("unit_ids")
        return f"Modbus: {text}; unit ids {', '.join(map(str, units)) if units else 'any'}"
    if protocol == EndpointProtocol.SSH:
        logins = settings.get("logins", {})
        parts = [f"{op} {' '.join(logins[op])}" for op in OperationClass.ALL if logins.get(op)]
        return f"SSH logins: {'; '.join(parts) if parts else 'none'}"
    return ""


Declared = dict[str, tuple[str | None, set[tuple[str, int]]]]


def _declared(request: Request) -> tuple[Declared, list[dict[str, Any]]]:
    """Asset name -> (its agent's name, the host:port pairs that agent declares); and the
    endpoints agents declare that no asset routed through them has (to adopt)."""
    svc = services(request)
    with session_scope(svc.engine) as db:
        agents = {a.id: a for a in db.exec(select(Agent)).all()}
        declared: dict[str, set[tuple[str, int]]] = {}
        rows = db.exec(select(AgentEndpoint).where(col(AgentEndpoint.declared))).all()
        for ep in rows:
            declared.setdefault(ep.agent_id, set()).add((ep.host, ep.port))
        used: set[tuple[str, str, int]] = set()
        for asset, aep in db.exec(
            select(Asset, AssetEndpoint).join(
                AssetEndpoint, col(AssetEndpoint.asset_id) == col(Asset.id)
            )
        ).all():
            if asset.agent_id:
                used.add((asset.agent_id, aep.host, aep.port))
        out: Declared = {}
        routed: dict[str, list[str]] = {}
        for asset in db.exec(select(Asset).where(col(Asset.archived_at).is_(None))).all():
            agent = agents.get(asset.agent_id or "")
            out[asset.name] = (
                agent.name if agent else None,
                declared.get(agent.id, set()) if agent else set(),
            )
            if agent:
                routed.setdefault(agent.id, []).append(asset.name)
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
        return out, sorted(unmatched, key=lambda e: (e["agent"], e["host"], e["port"]))


async def _page(
    request: Request, errors: dict[str, str] | None = None, values: dict[str, Any] | None = None
) -> Response:
    data = await exported(request)
    declared, unmatched = await run_in_threadpool(_declared, request)
    assets = []
    for a in data["assets"]:
        agent, reached = declared.get(a["name"], (None, set()))
        endpoints = [
            {
                **ep,
                "summary": settings_summary(ep["protocol"], ep.get("settings", {})),
                "declared": (ep["host"], ep["port"]) in reached,
            }
            for ep in a.get("endpoints", [])
        ]
        assets.append({**a, "agent": agent, "endpoints": endpoints})
    return render(
        request,
        "plant.html",
        {
            "plant": data,
            "assets": assets,
            "unmatched": unmatched,
            "errors": errors or {},
            "values": values or {},
            "protocols": EndpointProtocol.ALL,
            "criticalities": Criticality.ALL,
            "classes": OperationClass.ALL,
            "days": DAYS,
        },
        status=400 if errors else 200,
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


def _site(data: dict[str, Any], name: str) -> dict[str, Any]:
    site: dict[str, Any] | None = next((s for s in data["sites"] if s["name"] == name), None)
    if site is None:
        raise ValidationError(f"unknown site {name!r}")
    return site


def _org(data: dict[str, Any], slug: str) -> dict[str, Any]:
    org: dict[str, Any] | None = next((o for o in data["vendor_orgs"] if o["slug"] == slug), None)
    if org is None:
        raise ValidationError(f"unknown vendor org {slug!r}")
    return org


def _replace(items: list[dict[str, Any]], key: str, item: dict[str, Any]) -> None:
    """Replace the item with the same ``key`` value, else append it."""
    for i, old in enumerate(items):
        if old.get(key) == item[key]:
            items[i] = item
            return
    items.append(item)


def _edit(
    kind: str, data: dict[str, Any], form: dict[str, Any], multi: dict[str, list[str]]
) -> bool:
    """Change ``data`` as the ``kind`` form asks; returns whether to archive removed assets."""
    if kind == "site":
        name = _text(form, "name")
        old_site: dict[str, Any] = next((x for x in data["sites"] if x["name"] == name), {})
        site = {**old_site, "name": name, "timezone": _text(form, "timezone")}
        _replace(data["sites"], "name", site | {"description": _text(form, "description")})
    elif kind == "window":
        window = {
            "days": multi.get("days", []),
            "start": _text(form, "start"),
            "end": _text(form, "end"),
            "description": _text(form, "description"),
        }
        _site(data, _text(form, "site")).setdefault("maintenance_windows", []).append(window)
    elif kind == "window_remove":
        windows = _site(data, _text(form, "site")).get("maintenance_windows", [])
        number = _number(_text(form, "index"))
        if not isinstance(number, int) or not 0 <= number < len(windows):
            raise ValidationError(f"no maintenance window {number!r} in that site")
        del windows[number]
    elif kind == "zone":
        zone = {
            "name": _text(form, "name"),
            "purdue_level": _number(_text(form, "purdue_level")),
            "description": _text(form, "description"),
        }
        _replace(_site(data, _text(form, "site")).setdefault("zones", []), "name", zone)
    elif kind == "asset":
        name = _text(form, "name")
        index = asset_index(data, name)
        asset = {
            **(data["assets"][index] if index is not None else {}),
            "name": name,
            "site": _text(form, "site"),
            "zone": _text(form, "zone"),
            "criticality": _text(form, "criticality"),
            "owner_group": _text(form, "owner_group"),
            "description": _text(form, "description"),
        }
        _replace(data["assets"], "name", asset)
    elif kind == "endpoint":
        index = asset_index(data, _text(form, "asset"))
        if index is None:
            raise ValidationError(f"unknown asset {_text(form, 'asset')!r}")
        try:
            settings = yaml.safe_load(_text(form, "settings") or "{}")
        except yaml.YAMLError as exc:
            raise ValidationError(
                f"settings: not YAML or JSON ({exc.__class__.__name__})"
            ) from None
        endpoint = {
            "name": _text(form, "name"),
            "host": _text(form, "host"),
            "port": _number(_text(form, "port")),
            "protocol": _text(form, "protocol"),
            "settings": settings if settings is not None else {},
        }
        _replace(data["assets"][index].setdefault("endpoints", []), "name", endpoint)
    elif kind == "detach":
        index = asset_index(data, _text(form, "asset"))
        if index is None:
            raise ValidationError(f"unknown asset {_text(form, 'asset')!r}")
        endpoints = data["assets"][index].get("endpoints", [])
        kept = [e for e in endpoints if e["name"] != _text(form, "endpoint")]
        if len(kept) == len(endpoints):
            raise ValidationError(f"asset has no endpoint {_text(form, 'endpoint')!r}")
        data["assets"][index]["endpoints"] = kept
    elif kind == "archive":
        index = asset_index(data, _text(form, "asset"))
        if index is None:
            raise ValidationError(f"unknown asset {_text(form, 'asset')!r}")
        del data["assets"][index]
        return True
    elif kind == "vendor_org":
        slug = _text(form, "slug")
        old_org: dict[str, Any] = next((o for o in data["vendor_orgs"] if o["slug"] == slug), {})
        idp = [v.strip() for v in _text(form, "idp_values").split(",") if v.strip()]
        _replace(
            data["vendor_orgs"],
            "slug",
            {**old_org, "slug": slug, "name": _text(form, "name"), "idp_values": idp},
        )
    elif kind == "contract":
        contract: dict[str, Any] = {
            "reference": _text(form, "reference"),
            "valid_from": _text(form, "valid_from"),
            "valid_until": _text(form, "valid_until"),
            "operation_classes": multi.get("operation_classes", []),
        }
        for key in ("site", "asset"):
            if _text(form, key):
                contract[key] = _text(form, key)
        _replace(_org(data, _text(form, "org")).setdefault("contracts", []), "reference", contract)
    return False


async def apply_form(
    request: Request, principal: Principal, kind: str
) -> tuple[str | None, dict[str, Any]]:
    """Apply one of the page's forms (``kind`` in FORMS; CSRF checked here) to the plant.

    Returns ``(None, values)`` when applied, else ``(message, values)`` with nothing changed;
    ``values`` are the posted fields to show again. Also used by ``/admin/windows``.
    """
    form = await check_csrf(request, principal)
    posted = await request.form()
    multi = {key: [str(v) for v in posted.getlist(key)] for key in ("operation_classes", "days")}
    values = {k: v for k, v in form.items() if k != "csrf"} | multi
    data = await exported(request)
    try:
        archive = _edit(kind, data, form, multi)
        await apply_document(request, principal, data, archive=archive)
    except SessionsError as exc:
        return str(exc), values
    return None, values


async def plant_form(request: Request) -> Response:
    principal = await require(request, ADMIN)
    kind = request.path_params["kind"]
    if kind not in FORMS:
        return Response("no such form", status_code=404)
    problem, values = await apply_form(request, principal, kind)
    if problem is not None:
        return await _page(request, {kind: problem}, {kind: values})
    return RedirectResponse(f"/admin/plant#plant-{kind}", status_code=303)


routes = [
    Route("/admin/plant", plant_page, methods=["GET"]),
    Route("/admin/plant/{kind}", plant_form, methods=["POST"]),
]
