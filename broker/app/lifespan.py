"""The broker's lifespan: start the running parts in order, stop them in reverse.

Each start step starts one part and registers its closer; :meth:`BrokerLifespan.stop` awaits
the closers in reverse start order (a failing closer is logged and the next one still runs),
so every background task is stopped and awaited by the object that started it. The audit
log's posted appends are drained after everything that may post has stopped (the front door,
the live sessions, the agent gateway) and before the final audit checkpoint signs the head.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from broker.app.alerts import Alerts
from broker.gateway.agent_gateway import AgentGateway
from broker.runtime.audit_checkpoints import (
    AuditCheckpointer,
    CheckpointTarget,
    FileTarget,
    SyslogTarget,
    WebhookTarget,
)
from broker.runtime.grant_recheck import GrantRecheckRunner
from broker.runtime.periodic import Periodic
from broker.runtime.webhook import WebhookNotifier
from broker.services import Services
from broker.ssh.front import FrontDeps, FrontDoor
from broker.ssh.front_credentials import CredentialWatch, FrontCredentials
from policies.errors import BundleError
from sessions.db import migrate

log = logging.getLogger("conduit.broker")
# Access events that change data.plant (the vendor lockout): pushed to the engine at once,
# whoever made the change. Other plant changes call Services.plant_changed() themselves.
PLANT_KINDS = frozenset({"lockout.on", "lockout.off"})
Closer = Callable[[], Awaitable[None]]


class BrokerLifespan:
    """Starts and stops the broker's running parts around the app's life (Starlette
    ``lifespan=``). A step that fails to start stops what was already started, then raises."""

    def __init__(self, svc: Services, *, run_migrations: bool = True) -> None:
        self._svc, self._run_migrations = svc, run_migrations
        self._closers: list[tuple[str, Closer]] = []
        self._notifier: WebhookNotifier | None = None
        self.alerts = Alerts(svc.audit, svc.access.listeners)

    @asynccontextmanager
    async def __call__(self, _app: Starlette) -> AsyncIterator[None]:
        try:
            await self.start()
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        steps = (
            self._services,
            self._policy,
            self._policy_data,
            self._webhook,
            self._storage,
            self._checkpoints,
            self._gateway,
            self._device_starts,
            self._live,
            self._ssh,
            self._grant_clock,
            self._grant_recheck,
        )
        for step in steps:
            await step()

    async def stop(self) -> None:
        """Await every closer in reverse start order, then drain what is still posted."""
        while self._closers:
            name, closer = self._closers.pop()
            try:
                await closer()
            except Exception:  # the remaining parts must still stop
                log.exception("stopping %s failed", name)
        await self._svc.audit.drain()

    def _owns(self, name: str, closer: Closer) -> None:
        self._closers.append((name, closer))

    # ---- start steps, in order ----------------------------------------------------------

    async def _services(self) -> None:
        svc = self._svc
        if self._run_migrations:
            migrate(svc.engine)
        self._owns("oidc client", svc.oidc.aclose)
        self._owns("policy engine", svc.policy.aclose)  # also the manager's bundle watch
        svc.access.listeners.append(
            lambda kind, _subject, _details: svc.plant_changed() if kind in PLANT_KINDS else None
        )
        svc.access.on_grant_ended.append(svc.live.end_grant)

    async def _policy(self) -> None:
        manager, settings = self._svc.policy_manager, self._svc.settings
        if manager is None:
            return
        try:
            await asyncio.to_thread(manager.reload)
        except BundleError as exc:  # audited by the manager; every decision denies
            log.error("no valid policy bundle: %s", exc.message)
        manager.start_watching(settings.policy.watch_interval_s)

    async def _policy_data(self) -> None:
        svc = self._svc
        svc.policy_data.on_status = self._policy_data_status
        await svc.policy_data.start()  # pushes now; then on changes and periodically
        self._owns("policy data sync", svc.policy_data.aclose)

    async def _webhook(self) -> None:
        svc = self._svc
        if not svc.settings.webhook_url:
            return
        secret = svc.settings.webhook_secret
        notifier = WebhookNotifier(
            svc.settings.webhook_url,
            (secret.get_secret_value() if secret else "").encode(),
            svc.audit,
            svc.clock,
        )
        notifier.start()
        self._owns("webhook", notifier.aclose)
        svc.access.listeners.append(notifier.notify)
        self._notifier = notifier

    async def _storage(self) -> None:
        svc = self._svc
        svc.storage.on_change = self._storage_alert
        svc.storage.start()
        self._owns("recording storage probe", svc.storage.aclose)

    async def _checkpoints(self) -> None:
        svc, audit = self._svc, self._svc.settings.audit
        checkpoints = AuditCheckpointer(
            svc.audit,
            svc.signer,
            svc.clock,
            self._checkpoint_targets(),
            every_events=audit.checkpoint_events,
            every_s=audit.checkpoint_interval_s,
            on_status=lambda kind, problem: self.alerts.send(
                kind,
                "audit:checkpoints",
                {"problem": problem},
                "ok" if problem is None else "error",
            ),
        )
        await checkpoints.start()
        svc.checkpoints = checkpoints

        async def close() -> None:
            await checkpoints.aclose()  # the final head, after every posted event is in
            svc.checkpoints = None

        self._owns("audit checkpoints", close)
        # Runs before the final checkpoint: everything started later has stopped by then.
        self._owns("posted audit events", svc.audit.drain)

    async def _gateway(self) -> None:
        svc = self._svc
        if not svc.settings.agents.enabled:
            return
        gateway = AgentGateway(
            svc.settings.agents, svc.agent_keys, svc.agents, svc.audit, svc.clock
        )
        await gateway.start()
        svc.gateway = gateway

        async def close() -> None:
            await gateway.aclose()
            svc.gateway = None

        self._owns("agent gateway", close)

    async def _device_starts(self) -> None:
        self._svc.device_starts.start()
        self._owns("device sign-in audit", self._svc.device_starts.aclose)

    async def _live(self) -> None:
        self._svc.live.start()
        self._owns("live sessions", self._svc.live.aclose)  # ends every session still open

    async def _ssh(self) -> None:
        svc = self._svc
        settings = svc.settings
        if not settings.ssh.enabled:
            return
        front_credentials = FrontCredentials(svc.credentials, svc.clientless)
        watch = CredentialWatch(svc.live, front_credentials, settings.ssh.watchdog_interval_s)
        watch.start()
        self._owns("credential watch", watch.aclose)
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
                alert=lambda kind, subject, details: self.alerts.send(kind, subject, details),
                credentials=front_credentials,
                watch=watch,
            )
        )
        await front.start()
        svc.front = front

        async def close() -> None:
            await front.aclose()
            svc.front = None

        self._owns("ssh front door", close)

    async def _grant_clock(self) -> None:
        svc = self._svc

        # Opens and closes grants on time (windows are minute-grained).
        async def tick() -> None:
            await svc.access.tick()

        grant_clock = Periodic(tick, svc.settings.grant_tick_s, "grant tick", log)
        grant_clock.start()
        self._owns("grant clock", grant_clock.aclose)

    async def _grant_recheck(self) -> None:
        svc = self._svc  # ends grants whose basis went away (plant change, bundle, periodic)
        runner = GrantRecheckRunner(
            lambda trigger, problem: svc.access.recheck(trigger, data_problem=problem),
            svc.policy_version,
            lambda: svc.policy_data.problem,
        )
        runner.start()
        svc.policy_data.on_change = runner.plant_changed
        self._owns("grant re-check", runner.aclose)

    # ---- helpers --------------------------------------------------------------------------

    def _checkpoint_targets(self) -> list[CheckpointTarget]:
        settings = self._svc.settings
        targets: list[CheckpointTarget] = [FileTarget(settings.checkpoint_file)]
        if settings.audit.checkpoint_syslog:
            targets.append(SyslogTarget(settings.audit.checkpoint_syslog))
        if self._notifier is not None and settings.audit.checkpoint_webhook:
            targets.append(WebhookTarget(self._notifier.notify))
        return targets

    async def _policy_data_status(self, problem: str | None) -> None:
        """A failed push of ``data.plant`` (an OPA server down or refusing it), and its
        recovery: audited and sent to the webhook."""
        details: dict[str, Any] = {"engine": self._svc.policy.name}
        if problem is None:
            kind, outcome = "policy.data_push_recovered", "ok"
        else:
            kind, outcome, details["problem"] = "policy.data_push_failed", "error", problem
        await self.alerts.record(kind, "policy:data", details, outcome)

    def _storage_alert(self, problem: str | None) -> None:
        root = str(self._svc.storage.root)
        if problem is None:
            self.alerts.send("recording.storage.recovered", f"storage:{root}", {"root": root}, "ok")
        else:
            details = {"root": root, "problem": problem}
            self.alerts.send("recording.storage.failing", f"storage:{root}", details, "error")
