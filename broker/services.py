"""The broker's service container, built once by :func:`broker.app.create_app`
(:func:`broker.app.assembly.build_services`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from broker.auth.auth import ApiTokens, WebSessions
from broker.auth.device_starts import DeviceStarts
from broker.auth.forwarded import client_address
from broker.auth.oidc import OidcClient
from broker.keys.agent import AgentKeys
from broker.keys.ssh import SshKeys
from broker.runtime.live_sessions import LiveSessions
from broker.runtime.policy_data_sync import PolicyDataSync
from broker.runtime.recording_storage import RecordingStorage
from broker.runtime.session_recorder import RecorderFactory
from broker.runtime.settings import Settings
from broker.ssh.front_credentials import ApprovingSessions
from policies.engine import Engine as PolicyEngine
from policies.manager import PolicyManager
from sessions.access import AccessService
from sessions.agents import AgentService
from sessions.audit import AuditLog
from sessions.authorizer import Authorizer
from sessions.clock import Clock
from sessions.credentials import CredentialService
from sessions.maintenance import MaintenanceService
from sessions.recording import Ed25519Signer

if TYPE_CHECKING:
    from broker.gateway.agent_gateway import AgentGateway
    from broker.runtime.audit_checkpoints import AuditCheckpointer
    from broker.ssh.front import FrontDoor


@dataclass
class Services:
    settings: Settings
    engine: Engine
    clock: Clock
    audit: AuditLog
    oidc: OidcClient
    web_sessions: WebSessions
    tokens: ApiTokens
    credentials: CredentialService
    device_starts: DeviceStarts
    templates: Jinja2Templates
    policy: PolicyEngine
    authorizer: Authorizer
    access: AccessService
    agents: AgentService
    agent_keys: AgentKeys
    maintenance: MaintenanceService
    live: LiveSessions
    ssh_keys: SshKeys
    recorder: RecorderFactory
    clientless: ApprovingSessions
    storage: RecordingStorage
    signer: Ed25519Signer  # the recording key; also signs audit checkpoints
    policy_data: PolicyDataSync  # data.plant to the engine: at start, on change, periodically
    # Set by the app's lifespan when the agent gateway runs (None when disabled or stopped).
    gateway: AgentGateway | None = None
    front: FrontDoor | None = None
    checkpoints: AuditCheckpointer | None = None

    @property
    def policy_manager(self) -> PolicyManager | None:
        """The embedded engine's manager (None when decisions come from an OPA server)."""
        return self.policy if isinstance(self.policy, PolicyManager) else None

    def policy_version(self) -> str | None:
        version = getattr(self.policy, "version", None)
        return version if isinstance(version, str) else None

    async def refresh_policy_data(self) -> bool:
        """Rebuild ``data.plant`` from the database and push it to the engine now.

        False when the engine refused it (an OPA server down: logged and audited as
        ``policy.data_push_failed``; the periodic refresh retries).
        """
        return await self.policy_data.refresh()

    def plant_changed(self) -> None:
        """Something in ``data.plant`` changed: push it within ~0.05 s (any thread); once
        pushed, every active grant is re-checked (:mod:`broker.runtime.grant_recheck`)."""
        self.policy_data.changed()

    async def record(
        self,
        request: Request | None,
        kind: str,
        *,
        actor: str,
        outcome: str,
        subject: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """The HTTP adapter of :meth:`AuditLog.record`: adds the client's address (None
        without a request) and awaits the append. Raises what the append raises."""
        await self.audit.record(
            kind,
            actor=actor,
            outcome=outcome,
            subject=subject,
            source_ip=client_ip(request) if request is not None else None,
            details=details,
        )


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def client_ip(request: Request) -> str | None:
    """The client's address: the peer, or from a trusted proxy, ``X-Forwarded-For`` read
    from the right (:mod:`broker.auth.forwarded`)."""
    peer = request.client.host if request.client else None
    svc: Services | None = getattr(request.app.state, "services", None)
    if peer is None or svc is None:
        return peer
    return client_address(
        peer, request.headers.getlist("x-forwarded-for"), svc.settings.trusted_proxies
    )
