"""JSON API for agents: join (token-authenticated), and the admin's tokens, list, revoke, adopt.

``POST /api/agents/join`` needs no session: the one-time token is the credential. Its answer
carries a MAC made with the token secret so the agent can tell it came from this broker. All
other endpoints need the admin role. Errors are JSON ``{"error", "message"}``.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agents.wire import response_mac
from broker.api.access_api import domain_error
from broker.gateway.agent_gateway import AgentGateway
from broker.http.agent_view import agent_list
from broker.http.request_input import json_object, parse_duration
from broker.http.web import require
from broker.runtime.errors import BadRequest, BrokerError
from broker.services import Services, client_ip, services
from sessions.agents.base import JoinRefused
from sessions.authorizer import iso
from sessions.errors import SessionsError
from sessions.identity import ADMIN


def _str(body: dict[str, Any], key: str, limit: int = 4096, *, required: bool = True) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > limit or (required and not value.strip()):
        raise BadRequest(f"{key} must be a non-empty string of at most {limit} characters")
    return value


def gateway_of(svc: Services) -> AgentGateway:
    if svc.gateway is None:
        raise BrokerError(
            "the agent gateway is disabled on this broker", code="no_gateway", status=503
        )
    return svc.gateway


async def join(request: Request) -> Response:
    svc = services(request)
    body = await json_object(request)
    token_id = _str(body, "token_id", 64)
    secret = _str(body, "secret", 128)
    gateway = gateway_of(svc)
    try:
        result = await run_in_threadpool(
            lambda: svc.agents.join(
                token_id=token_id,
                secret=secret,
                public_key=_str(body, "public_key", 8192),
                hostname=_str(body, "hostname", 253, required=False) or "unknown",
                version=_str(body, "version", 64, required=False) or "unknown",
                source_ip=client_ip(request),
            )
        )
    except JoinRefused as exc:
        return JSONResponse(
            {"error": exc.code, "reason": exc.reason, "message": exc.message}, status_code=403
        )
    except SessionsError as exc:
        return domain_error(exc)
    answer: dict[str, Any] = {
        "agent_id": result.agent_id,
        "name": result.name,
        "certificate": result.certificate,
        "gateways": gateway.gateways(),
        "broker_key": svc.agent_keys.gateway_public,
        "ca_key": svc.agent_keys.ca_public,
        "site": result.site,
        "zone": result.zone,
    }
    answer["mac"] = response_mac(secret, answer)
    return JSONResponse(answer, status_code=201)


async def create_token(request: Request) -> Response:
    principal = await require(request, ADMIN)
    svc = services(request)
    body = await json_object(request)
    ttl = parse_duration(_str(body, "ttl", 16, required=False) or "15m")
    try:
        token, row = await run_in_threadpool(
            lambda: svc.agents.create_token(
                actor=principal.user_id,
                site=_str(body, "site", 200),
                zone=_str(body, "zone", 200, required=False) or None,
                ttl=ttl,
                name=_str(body, "name", 64, required=False),
            )
        )
    except SessionsError as exc:
        return domain_error(exc)
    url = svc.settings.public_url.rstrip("/")
    return JSONResponse(
        {
            "token": str(token),
            "token_id": token.token_id,
            "expires_at": iso(row.expires_at),
            "command": f"conduit-agent join --broker {url} --token {token}",
        },
        status_code=201,
    )


async def list_agents(request: Request) -> Response:
    await require(request, ADMIN)
    return JSONResponse({"agents": await agent_list(services(request))})


async def revoke(request: Request) -> Response:
    principal = await require(request, ADMIN)
    svc = services(request)
    try:
        await gateway_of(svc).revoke(request.path_params["id"], actor=principal.user_id)
    except SessionsError as exc:
        return domain_error(exc)
    return JSONResponse({"id": request.path_params["id"], "state": "revoked"})


async def adopt(request: Request) -> Response:
    principal = await require(request, ADMIN)
    svc = services(request)
    body = await json_object(request)
    try:
        asset, endpoint = await run_in_threadpool(
            lambda: svc.agents.adopt(
                request.path_params["id"],
                actor=principal.user_id,
                name=_str(body, "name", 200),
                owner_group=_str(body, "owner_group", 200),
                criticality=_str(body, "criticality", 20, required=False) or "medium",
                zone=_str(body, "zone", 200, required=False) or None,
            )
        )
    except SessionsError as exc:
        return domain_error(exc)
    await svc.refresh_policy_data()
    return JSONResponse(
        {"asset": asset.name, "endpoint": f"{endpoint.host}:{endpoint.port}"},
        status_code=201,
    )


routes = [
    Route("/api/agents/join", join, methods=["POST"]),
    Route("/api/agents/tokens", create_token, methods=["POST"]),
    Route("/api/agents", list_agents, methods=["GET"]),
    Route("/api/agents/{id}/revoke", revoke, methods=["POST"]),
    Route("/api/agents/endpoints/{id}/adopt", adopt, methods=["POST"]),
]
