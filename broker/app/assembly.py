"""Building the services: every long-lived object of the broker, from its settings.

Nothing here starts a task; :class:`broker.app.lifespan.BrokerLifespan` starts and stops them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import Engine
from starlette.templating import Jinja2Templates

from broker.auth.auth import ApiTokens, WebSessions
from broker.auth.device_starts import DeviceStarts
from broker.auth.oidc import OidcClient
from broker.http.obligations_view import obligation_rows
from broker.keys.agent import load_agent_keys
from broker.keys.recording import load_recording_signer, recording_key_dir
from broker.keys.ssh import load_ssh_keys
from broker.runtime.live_sessions import LiveSessions
from broker.runtime.policy_data_sync import PolicyDataSync
from broker.runtime.recording_storage import RecordingStorage
from broker.runtime.session_recorder import RecorderFactory
from broker.runtime.settings import Settings
from broker.services import Services
from broker.ssh.front_credentials import ApprovingSessions
from policies.engine import Engine as PolicyEngine
from policies.manager import PolicyManager
from sessions.access import AccessService
from sessions.agents import AgentService
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer
from sessions.clientless import clientless_switch
from sessions.clock import Clock, SystemClock
from sessions.credentials import CredentialService
from sessions.db import create_db_engine, session_scope
from sessions.maintenance import MaintenanceService
from sessions.policy_data import build_plant_data

BROKER_DIR = Path(__file__).resolve().parent.parent


def build_services(
    settings: Settings,
    *,
    clock: Clock | None = None,
    engine: Engine | None = None,
    oidc_transport: httpx2.AsyncBaseTransport | None = None,
) -> Services:
    """Create every long-lived service. The caller owns the result (see
    :func:`broker.app.create_app`)."""
    clock = clock or SystemClock()
    engine = engine or create_db_engine(settings.database_url)
    redirect_uri = settings.public_url.rstrip("/") + "/auth/callback"
    audit = AuditLog(engine, clock)
    policy = build_policy_engine(settings, audit, clock)
    authorizer = Authorizer(policy, audit)
    maintenance = MaintenanceService(engine, authorizer, audit, clock)
    credentials = CredentialService(engine, audit, clock)
    signer = load_recording_signer(recording_key_dir(settings.data_dir))
    storage = RecordingStorage(
        settings.recordings_dir,
        min_free_bytes=int(settings.recording.min_free_mb * (1 << 20)),
        probe_interval_s=settings.recording.probe_interval_s,
    )
    # Certificates are checked by their holders' peers (agents, sshd, the front door's asyncssh)
    # against the real time, so their windows come from the system clock, not the injected one
    # (tests move that one).
    cert_clock = SystemClock()
    agent_keys = load_agent_keys(
        settings.agent_key_dir, settings.agents.cert_validity_days * 86400, cert_clock
    )
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
        templates=_templates(),
        policy=policy,
        authorizer=authorizer,
        access=AccessService(engine, authorizer, audit, clock),
        agents=AgentService(engine, audit, clock, agent_keys.sign_agent, agent_keys.pin),
        agent_keys=agent_keys,
        maintenance=maintenance,
        live=LiveSessions(clock, settings.ssh.watchdog_interval_s),
        ssh_keys=load_ssh_keys(settings.agent_key_dir, cert_clock),
        recorder=RecorderFactory(
            settings.recordings_dir,
            signer,
            clock,
            maintenance,
            audit,
            record_input=settings.ssh.record_input,
            storage=storage,
        ),
        clientless=_clientless(settings, engine, clock, audit),
        storage=storage,
        signer=signer,
        policy_data=PolicyDataSync(
            lambda: _plant_data(engine), policy, interval_s=settings.policy.data_refresh_s
        ),
    )


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(BROKER_DIR / "templates"))
    templates.env.filters["obligation_rows"] = obligation_rows
    return templates


def _clientless(
    settings: Settings, engine: Engine, clock: Clock, audit: AuditLog
) -> ApprovingSessions:
    return ApprovingSessions(
        settings.ssh,
        clock,
        audit,
        lambda asset: clientless_switch(
            engine, asset, min_purdue_level=settings.ssh.clientless_min_purdue_level
        ),
    )


def _plant_data(engine: Engine) -> dict[str, Any]:
    with session_scope(engine) as db:
        return build_plant_data(db)


def build_policy_engine(
    settings: Settings, audit: AuditLog, clock: Clock | None = None
) -> PolicyEngine:
    """The configured decision point: the embedded manager (hot reload) or an OPA server."""
    clock = clock or SystemClock()
    ps = settings.policy
    if ps.engine == "opa":
        from policies.opa import OpaEngine

        return OpaEngine(
            ps.opa_url,
            token=ps.opa_token.get_secret_value() if ps.opa_token else None,
            ca_file=ps.opa_ca_file,
            timeout_s=ps.opa_timeout_ms / 1000,
            retries=ps.opa_retries,
            clock=clock,
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
        clock=clock,
    )
