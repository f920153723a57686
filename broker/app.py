"""Composition root: builds the services from settings and wires routes, errors and headers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.api import (
    access_api,
    agent_api,
    api,
    cli_auth,
    plant_api,
    plant_objects,
    recordings_api,
    session_api,
)
from broker.auth.auth import ApiTokens, WebSessions
from broker.auth.device_starts import DeviceStarts
from broker.auth.oidc import OidcClient
from broker.core.relay import ALERT_OUTCOMES
from broker.gateway.agent_gateway import AgentGateway
from broker.http.obligations_view import obligation_rows
from broker.keys.agent import load_agent_keys
from broker.keys.recording import load_recording_signer, recording_key_dir
from broker.keys.ssh import load_ssh_keys
from broker.runtime.audit_checkpoints import (
    AuditCheckpointer,
    CheckpointTarget,
    FileTarget,
    SyslogTarget,
    WebhookTarget,
)
from broker.runtime.errors import BrokerError
from broker.runtime.live_sessions import LiveSessions
from broker.runtime.policy_data_sync import PolicyDataSync
from broker.runtime.recording_storage import RecordingStorage
from broker.runtime.session_recorder import RecorderFactory
from broker.runtime.settings import Settings
from broker.runtime.webhook import WebhookNotifier
from broker.services import Services
from broker.ssh.front import FrontDeps, FrontDoor
from broker.ssh.front_credentials import ApprovingSessions, CredentialWatch, FrontCredentials
from broker.web import (
    access_pages,
    agent_pages,
    clientless_pages,
    identity_page,
    pages,
    plant_pages,
    policy_admin,
    request_page,
    session_pages,
    signin,
    users_admin,
    windows_page,
)
from broker.web.error_pages import on_broker_error, on_http_exception, on_unexpected
from policies.engine import Engine as PolicyEngine
from policies.errors import BundleError
from policies.manager import PolicyManager
from sessions.access import AccessService
from sessions.agents import AgentService
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer
from sessions.clientless import clientless_switch
from sessions.clock import Clock, SystemClock
from sessions.credentials import CredentialService
from sessions.db import create_db_engine, migrate, session_scope
from sessions.maintenance import MaintenanceService
from sessions.models import AuditOutcome
from sessions.policy_data import build_plant_data

log = logging.getLogger("conduit.broker")
HERE = Path(__file__).parent
# Access events that change data.plant (the vendor lockout): pushed to the engine at once,
# whoever made the change. Other plant changes call Services.plant_changed() themselves.
PLANT_KINDS = frozenset({"lockout.on", "lockout.off"})

# Forms post to the broker itself, and sign-out redirects to the IdP ({idp}).
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self' {idp}"
)
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
}
# The CLI's loopback sign-in page: its consent form's answer redirects to the `conduit login`
# listener on loopback, so only that page may send a form there.
LOOPBACK_FORM_PAGES = ("/cli/authorize",)
LOOPBACK_FORM_ACTION = " http://127.0.0.1:* http://localhost:*"
# Sent when the public URL is https: browsers then refuse plain http to the broker for a year.
# No includeSubDomains: the broker does not own its parent domain's other hosts.
HSTS = "max-age=31536000"


def security_headers(settings: Settings) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The headers for every response, and the per-path replacements."""
    issuer = urlsplit(settings.oidc.issuer)
    idp_origin = f"{issuer.scheme}://{issuer.netloc}"
    headers = {k: v.replace("{idp}", idp_origin) for k, v in SECURITY_HEADERS.items()}
    if urlsplit(settings.public_url).scheme == "https":
        headers["Strict-Transport-Security"] = HSTS
    csp = headers["Content-Security-Policy"]
    loopback = {"Content-Security-Policy": csp + LOOPBACK_FORM_ACTION}
    return headers, {path: loopback for path in LOOPBACK_FORM_PAGES}


class SecurityHeaders:
    """ASGI middleware adding the security headers to every response that lacks them
    (``per_path``: different values for the responses of those exact paths)."""

    def __init__(
        self,
        app: ASGIApp,
        headers: dict[str, str],
        per_path: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.app, self.headers, self.per_path = app, headers, per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        static = path.startswith("/static/")
        headers = {**self.headers, **self.per_path.get(path, {})}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in headers.items():
                    if name not in out and not (static and name == "Cache-Control"):
                        out[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _grant_clock(svc: Services) -> None:
    """Open and close grants on time: one tick per second (windows are minute-grained)."""
    while True:
        await asyncio.sleep(svc.settings.grant_tick_s)
        try:
            await svc.access.tick()
        except Exception:  # the next tick retries; a failure must not stop the clock
            log.exception("grant tick failed")


async def _policy_data_status(svc: Services, problem: str | None) -> None:
    """A failed push of ``data.plant`` (an OPA server down or refusing it), and its recovery:
    audited and sent to the webhook (done in a worker thread, awaited)."""
    details: dict[str, Any] = {"engine": svc.policy.name}
    if problem is None:
        kind, outcome = "policy.data_push_recovered", "ok"
    else:
        kind, outcome, details["problem"] = "policy.data_push_failed", "error", problem
    await asyncio.to_thread(_alert, svc, kind, "policy:data", details, outcome)


def _alert(
    svc: Services,
    kind: str,
    subject: str,
    details: dict[str, Any],
    outcome: str | None = None,
) -> None:
    """An operation a reviewer must know about: audited, and sent to the webhook if set.

    Callable from the event loop (the work moves to a worker thread) or from a worker thread
    (done there).
    """

    def deliver() -> None:
        try:
            svc.audit.append(
                kind,
                actor="system",
                outcome=outcome or ALERT_OUTCOMES.get(kind, AuditOutcome.OK),
                subject=subject,
                details=details,
            )
            for listener in svc.access.listeners:
                listener(kind, subject, details)
        except Exception:
            log.exception("alert %s could not be delivered", kind)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        deliver()
        return
    loop.run_in_executor(None, deliver)


def _storage_alert(svc: Services, problem: str | None) -> None:
    root = str(svc.storage.root)
    if problem is None:
        _alert(svc, "recording.storage.recovered", f"storage:{root}", {"root": root}, "ok")
    else:
        details = {"root": root, "problem": problem}
        _alert(svc, "recording.storage.failing", f"storage:{root}", details, "error")


def _checkpoint_targets(svc: Services, notify: Any) -> list[CheckpointTarget]:
    audit = svc.settings.audit
    targets: list[CheckpointTarget] = [FileTarget(svc.settings.checkpoint_file)]
    if audit.checkpoint_syslog:
        targets.append(SyslogTarget(audit.checkpoint_syslog))
    if notify is not None and audit.checkpoint_webhook:
        targets.append(WebhookTarget(notify))
    return targets


def build_services(
    settings: Settings,
    *,
    clock: Clock | None = None,
    engine: Engine | None = None,
    oidc_transport: httpx2.AsyncBaseTransport | None = None,
) -> Services:
    """Create every long-lived service. The caller owns the result (see :func:`create_app`)."""
    clock = clock or SystemClock()
    engine = engine or create_db_engine(settings.database_url)
    redirect_uri = settings.public_url.rstrip("/") + "/auth/callback"
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["obligation_rows"] = obligation_rows
    audit = AuditLog(engine, clock)
    policy = build_policy_engine(settings, audit)
    authorizer = Authorizer(policy, audit)
    maintenance = MaintenanceService(engine, authorizer, audit, clock)
    credentials = CredentialService(engine, audit, clock)
    signer = load_recording_signer(recording_key_dir(settings.data_dir))
    storage = RecordingStorage(
        settings.recordings_dir,
        min_free_bytes=int(settings.recording.min_free_mb * (1 << 20)),
        probe_interval_s=settings.recording.probe_interval_s,
    )
    agent_keys = load_agent_keys(settings.agent_key_dir, settings.agents.cert_validity_days * 86400)
    return Services(
        settings=settings,
        engine=engine,
        clock=clock,
        audit=audit,
        oidc=OidcClient(settings.oidc, redirect_uri, clock, transport=oidc_transport),
        web_sessions=WebSessions(engine, clock, settings.session_ttl_s),
        tokens=ApiTokens(engine, clock, settings.cli_token_ttl_s, credentials),
        credentials=credentials,
        device_starts=DeviceStarts(
            engine,
            audit,
            clock,
            pending_per_ip=settings.device_pending_per_ip,
            interval_s=settings.device_audit_interval_s,
        ),
        templates=templates,
        policy=policy,
        authorizer=authorizer,
        access=AccessService(engine, authorizer, audit, clock),
        agents=AgentService(engine, audit, clock, agent_keys.sign_agent, agent_keys.pin),
        agent_keys=agent_keys,
        maintenance=maintenance,
        live=LiveSessions(clock, settings.ssh.watchdog_interval_s),
        ssh_keys=load_ssh_keys(settings.agent_key_dir),
        recorder=RecorderFactory(
            settings.recordings_dir,
            signer,
            clock,
            maintenance,
            audit,
            record_input=settings.ssh.record_input,
            storage=storage,
        ),
        clientless=ApprovingSessions(
            settings.ssh,
            clock,
            audit,
            lambda asset: clientless_switch(
                engine, asset, min_purdue_level=settings.ssh.clientless_min_purdue_level
            ),
        ),
        storage=storage,
        signer=signer,
        policy_data=PolicyDataSync(
            lambda: _plant_data(engine), policy, interval_s=settings.policy.data_refresh_s
        ),
    )


def _plant_data(engine: Engine) -> dict[str, Any]:
    with session_scope(engine) as db:
        return build_plant_data(db)


def build_policy_engine(settings: Settings, audit: AuditLog) -> PolicyEngine:
    """The configured decision point: the embedded manager (hot reload) or an OPA server."""
    ps = settings.policy
    if ps.engine == "opa":
        from policies.opa import OpaEngine

        return OpaEngine(
            ps.opa_url,
            token=ps.opa_token.get_secret_value() if ps.opa_token else None,
            ca_file=ps.opa_ca_file,
            timeout_s=ps.opa_timeout_ms / 1000,
            retries=ps.opa_retries,
        )

    def on_event(kind: str, details: dict[str, Any]) -> None:
        outcome = "ok" if kind == "policy.activated" else "rejected"
        audit.append(kind, actor="system", outcome=outcome, details=details)

    return PolicyManager(
        ps.bundle_dir,
        on_event=on_event,
        budget_ms=ps.budget_ms,
        validate_timeout_s=ps.validate_timeout_s,
        rvm=ps.evaluator == "rvm",
    )


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    engine: Engine | None = None,
    oidc_transport: httpx2.AsyncBaseTransport | None = None,
    run_migrations: bool = True,
) -> Starlette:
    """The broker's ASGI app. Migrates the database at start-up unless told not to.

    ``oidc_transport`` lets tests put a tampering layer between the broker and the real IdP.
    """
    svc = build_services(settings, clock=clock, engine=engine, oidc_transport=oidc_transport)
    headers, per_path = security_headers(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if run_migrations:
            migrate(svc.engine)
        manager = svc.policy_manager
        if manager is not None:
            try:
                await asyncio.to_thread(manager.reload)
            except BundleError as exc:  # audited by the manager; every decision denies
                log.error("no valid policy bundle: %s", exc.message)
            manager.start_watching(settings.policy.watch_interval_s)
        svc.policy_data.on_status = lambda problem: _policy_data_status(svc, problem)
        await svc.policy_data.start()  # pushes now; then on changes and periodically
        svc.access.listeners.append(
            lambda kind, _subject, _details: svc.plant_changed() if kind in PLANT_KINDS else None
        )
        notifier = None
        if settings.webhook_url:
            secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
            notifier = WebhookNotifier(settings.webhook_url, secret.encode(), svc.audit)
            notifier.start()
            svc.access.listeners.append(notifier.notify)
        svc.storage.on_change = lambda problem: _storage_alert(svc, problem)
        svc.storage.start()
        checkpoints = AuditCheckpointer(
            svc.audit,
            svc.signer,
            svc.clock,
            _checkpoint_targets(svc, notifier.notify if notifier is not None else None),
            every_events=settings.audit.checkpoint_events,
            every_s=settings.audit.checkpoint_interval_s,
            on_status=lambda kind, problem: _alert(
                svc,
                kind,
                "audit:checkpoints",
                {"problem": problem},
                "ok" if problem is None else "error",
            ),
        )
        await checkpoints.start()
        svc.checkpoints = checkpoints
        if settings.agents.enabled:
            gateway = AgentGateway(
                settings.agents, svc.agent_keys, svc.agents, svc.audit, svc.clock
            )
            await gateway.start()
            svc.gateway = gateway
        svc.live.start()
        svc.device_starts.start()
        svc.access.on_grant_ended.append(svc.live.end_grant)
        watch = None
        if settings.ssh.enabled:
            front_credentials = FrontCredentials(svc.credentials, svc.clientless)
            watch = CredentialWatch(svc.live, front_credentials, settings.ssh.watchdog_interval_s)
            watch.start()
            front = FrontDoor(
                FrontDeps(
                    settings=settings.ssh,
                    keys=svc.ssh_keys,
                    maintenance=svc.maintenance,
                    gateway=lambda: svc.gateway,
                    audit=svc.audit,
                    clock=svc.clock,
                    live=svc.live,
                    recorder=svc.recorder,
                    pin_host_key=svc.maintenance.pin_host_key,
                    clientless=svc.clientless,
                    approve_url=settings.public_url.rstrip("/") + "/ssh/approve",
                    alert=lambda kind, subject, details: _alert(svc, kind, subject, details),
                    credentials=front_credentials,
                    watch=watch,
                )
            )
            await front.start()
            svc.front = front
        tasks = [
            asyncio.create_task(_grant_clock(svc)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await svc.device_starts.aclose()
            if watch is not None:
                await watch.aclose()
            await svc.live.aclose()
            if svc.front is not None:
                await svc.front.aclose()
                svc.front = None
            if svc.gateway is not None:
                await svc.gateway.aclose()
                svc.gateway = None
            await svc.storage.aclose()
            await checkpoints.aclose()  # the final head, after every session's end is audited
            svc.checkpoints = None
            if notifier is not None:
                await notifier.aclose()
            await svc.policy_data.aclose()
            await svc.policy.aclose()
            await svc.oidc.aclose()

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette answers a 500 outside every middleware: SecurityHeaders never sees it.
        response = await on_unexpected(request, exc)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    app = Starlette(
        debug=False,
        routes=[
            *pages.routes,
            *signin.routes,
            *cli_auth.routes,
            *api.routes,
            *access_api.routes,
            *access_pages.routes,
            *windows_page.routes,
            *request_page.routes,
            *recordings_api.routes,
            *identity_page.routes,
            *agent_api.routes,
            *session_api.routes,
            *clientless_pages.routes,
            *session_pages.routes,
            *agent_pages.routes,
            *policy_admin.routes,
            *users_admin.routes,
            *plant_api.routes,
            *plant_objects.routes,
            *plant_pages.routes,
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        exception_handlers={
            BrokerError: on_broker_error,
            HTTPException: on_http_exception,
            Exception: unexpected,
        },
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders, headers=headers, per_path=per_path)],
    )

    app.state.services = svc
    return app
