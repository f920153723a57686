"""JSON API for SSH access and live sessions: certificates, front-door facts, list, kill.

``POST /api/ssh/cert`` signs a vendor's public key with the user CA for no longer than the
caller's own broker token; ``GET /api/ssh/info`` gives what an ``ssh_config`` needs (host,
port, host key); ``GET /api/ssh/asset-ca`` (admin, audited) gives the asset CA's public key
with the sshd set-up that trusts it; ``GET /api/sessions`` lists live sessions
(``broker/http/visibility.py``: admins and security reviewers see all, approvers those on assets
their groups own, others their own); ``POST /api/sessions/{id}/kill`` (admin) ends one at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.http.live_session_end import end_live_session
from broker.http.request_input import json_object
from broker.http.visibility import live_rows
from broker.http.web import require
from broker.keys.ssh import SshKeys, asset_ca_setup
from broker.runtime.errors import BadRequest, BrokerError
from broker.services import services
from sessions.identity import ADMIN, VENDOR


def _front_port(request: Request) -> int:
    svc = services(request)
    if svc.front is None:
        raise BrokerError("the SSH front door is disabled", code="no_ssh", status=503)
    return svc.front.port


async def ssh_info(request: Request) -> Response:
    svc = services(request)
    port = _front_port(request)
    return JSONResponse(
        {
            "host": svc.settings.ssh.public_host or svc.settings.ssh.listen_host,
            "port": port,
            "host_key": SshKeys.public(svc.ssh_keys.host),
        }
    )


async def asset_ca(request: Request) -> Response:
    """The asset CA for admins setting up an SSH asset; never served anonymously."""
    principal = await require(request, ADMIN)
    svc = services(request)
    line = SshKeys.public(svc.ssh_keys.asset_ca)
    await svc.record(
        request,
        "ssh.asset_ca.read",
        actor=principal.user_id,
        outcome="ok",
        subject="ssh:asset_ca",
        details={},
    )
    return JSONResponse({"public_key": line, "setup": asset_ca_setup(line)})


async def ssh_cert(request: Request) -> Response:
    """Sign the caller's key. The certificate gets a fresh serial, recorded with the credential
    that asked (token or web session) and its amr/acr/auth_time: the front door takes MFA from
    it and refuses it once that credential, or the user, is revoked."""
    principal = await require(request, VENDOR, ADMIN)
    svc = services(request)
    body = await json_object(request)
    public_key = body.get("public_key")
    if not isinstance(public_key, str) or len(public_key) > 8192:
        raise BadRequest("public_key must be an OpenSSH public key")
    minted_by = principal.credential
    if minted_by is None:
        raise BadRequest("this credential cannot mint SSH certificates")
    fingerprint = SshKeys.fingerprint(public_key)
    valid_before = min(
        int(principal.expires_at.timestamp()),
        int(svc.ssh_keys.clock.now().timestamp()) + svc.settings.ssh.cert_max_s,
    )
    key_id = principal.email or principal.sub
    serial = await run_in_threadpool(
        lambda: svc.credentials.record_certificate(
            user_id=principal.user_id,
            minted_by=minted_by,
            key_id=key_id,
            key_sha256=fingerprint,
            auth=principal.auth,
            roles=principal.roles,
            expires_at=datetime.fromtimestamp(valid_before, UTC),
        )
    )
    cert = svc.ssh_keys.sign_user(
        public_key,
        user_id=principal.user_id,
        key_id=key_id,
        valid_before=valid_before,
        serial=serial,
    )
    await svc.record(
        request,
        "ssh.cert.issued",
        actor=principal.user_id,
        outcome="ok",
        subject=f"user:{principal.user_id}",
        details={
            "valid_before": valid_before,
            "serial": serial,
            "minted_by": minted_by.label,
            "key": fingerprint,
            "amr": list(principal.auth.amr),
        },
    )
    return JSONResponse(
        {
            "certificate": cert,
            "serial": serial,
            "valid_before": valid_before,
            "port": _front_port(request),
        },
        status_code=201,
    )


async def list_sessions(request: Request) -> Response:
    principal = await require(request)
    svc = services(request)
    rows = await run_in_threadpool(live_rows, svc.engine, principal, svc.live.list())
    return JSONResponse({"sessions": rows})


async def kill_session(request: Request) -> Response:
    principal = await require(request, ADMIN)
    session_id = request.path_params["id"]
    reason = await end_live_session(request, principal, session_id)
    if reason is None:
        return JSONResponse(
            {"error": "not_found", "message": f"no live session {session_id} on this broker"},
            status_code=404,
        )
    return JSONResponse({"id": session_id, "state": "closed", "reason": reason})


routes = [
    Route("/api/ssh/info", ssh_info, methods=["GET"]),
    Route("/api/ssh/asset-ca", asset_ca, methods=["GET"]),
    Route("/api/ssh/cert", ssh_cert, methods=["POST"]),
    Route("/api/sessions", list_sessions, methods=["GET"]),
    Route("/api/sessions/{id}/kill", kill_session, methods=["POST"]),
]
