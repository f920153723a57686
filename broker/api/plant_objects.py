"""One plant object at a time (admins): sites, zones, maintenance windows, assets, vendor
organisations and contracts, over ``/api/plant/...`` and from the plant page.

Every change edits the exported plant document and applies it with
:func:`broker.http.plant_changes.edit_plant`, so validation (400; the message names the object's
place in the whole document, ``sites[1].zones[0].purdue_level``), audit
(``plant.<kind>.<action>`` with before/after) and the policy-data refresh are exactly those of
``conduit plant apply``. An unknown object or parent is 404; creating one that exists is 409;
removing one still used is 409 with the reason, and nothing changes. A refusal is audited
(``plant.refused``). docs/plant.md "API".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.api.access_api import domain_error
from broker.http.plant_changes import edit_plant, exported
from broker.http.plant_document import (
    ASSET,
    CONTRACT,
    ORG,
    SITE,
    WINDOW,
    ZONE,
    Data,
    Kind,
    create,
    find,
    items_of,
    listed,
    remove,
    replace,
)
from broker.http.request_input import json_object
from broker.http.web import require
from sessions.errors import SessionsError
from sessions.identity import ADMIN


def _shown(data: Data, kind: Kind, parent: str | None, key: str | None) -> Data:
    if key is None:
        return {kind.field: [listed(kind, i) for i in items_of(data, kind, parent)]}
    return listed(kind, find(data, kind, parent, key))


def endpoint(kind: Kind) -> Callable[[Request], Awaitable[Response]]:
    """The handler of ``kind``'s URLs: GET lists or shows, POST creates, PUT replaces,
    DELETE (for an asset: POST .../archive) removes."""

    async def handle(request: Request) -> Response:
        principal = await require(request, ADMIN)
        parent, key = request.path_params.get("parent"), request.path_params.get("key")
        if request.method == "GET":
            try:
                return JSONResponse(_shown(await exported(request), kind, parent, key))
            except SessionsError as exc:
                return domain_error(exc)
        body = await json_object(request) if key is None or request.method == "PUT" else None

        def edit(data: Data) -> bool:
            if key is None:
                create(data, kind, parent, body or {})
            elif body is not None:
                replace(data, kind, parent, key, body)
            else:
                remove(data, kind, parent, key)
            # Why archive for assets: one with history is archived, never deleted.
            return kind is ASSET

        try:
            plan = await edit_plant(request, principal, edit)
        except SessionsError as exc:
            return domain_error(exc)
        changes = [c.to_data() for c in plan.changes]
        return JSONResponse({"summary": plan.summary(), "changes": changes})

    return handle


def _routes(path: str, kind: Kind, *, replaceable: bool = True) -> list[Route]:
    handle = endpoint(kind)
    one = ["GET", "PUT", "DELETE"] if replaceable else ["GET", "DELETE"]
    return [
        Route(path, handle, methods=["GET", "POST"]),
        Route(path + "/{key}", handle, methods=one),
    ]


routes = [
    *_routes("/api/plant/sites", SITE),
    *_routes("/api/plant/sites/{parent}/zones", ZONE),
    *_routes("/api/plant/sites/{parent}/windows", WINDOW, replaceable=False),
    Route("/api/plant/assets", endpoint(ASSET), methods=["GET", "POST"]),
    Route("/api/plant/assets/{key}", endpoint(ASSET), methods=["GET", "PUT"]),
    Route("/api/plant/assets/{key}/archive", endpoint(ASSET), methods=["POST"]),
    *_routes("/api/plant/vendor-orgs", ORG),
    *_routes("/api/plant/vendor-orgs/{parent}/contracts", CONTRACT),
]
