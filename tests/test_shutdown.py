"""Shutdown: every background task the broker starts is owned and awaited.

Starts the real app (``create_app`` under uvicorn, with the SSH front door, the agent gateway
and the webhook) on this test's own event loop, exercises it over HTTP and SSH, stops it, and
then looks at the loop: no task whose coroutine comes from project code may still be pending
(a task nobody awaited would be cancelled silently by ``asyncio.run`` and lose its work).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable
from typing import Any

import asyncssh
import httpx2
import uvicorn

from broker.app import create_app
from broker.runtime.settings import Settings
from broker.services import Services
from tests.harness.wait import async_wait_until

PROJECT_PACKAGES = ("broker", "sessions", "policies", "agents")


def _module_of(task: asyncio.Task[Any]) -> str:
    """The module of the coroutine a task runs (``?`` once it has no frame)."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    return str(frame.f_globals.get("__name__", "?")) if frame is not None else "?"


def _project_tasks(tasks: set[asyncio.Task[Any]]) -> list[str]:
    found = []
    for task in tasks:
        module = _module_of(task)
        if not task.done() and module.split(".")[0] in PROJECT_PACKAGES:
            found.append(f"{task.get_name()} ({module}: {task.get_coro()!r})")
    return found


async def _exercise(svc: Services, url: str) -> None:
    """Requests that start work: pages, an API refusal, a refused SSH login."""
    async with httpx2.AsyncClient(timeout=30.0) as http:
        assert (await http.get(f"{url}/signin")).status_code == 200
        assert (await http.get(f"{url}/api/requests")).status_code == 401
    assert svc.front is not None and svc.gateway is not None
    key = asyncssh.generate_private_key("ssh-ed25519")
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            svc.front.port,
            username="nobody",
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
            preferred_auth="publickey",
        ):
            raise AssertionError("the front door let an unknown key in")
    except asyncssh.PermissionDenied:
        pass


async def _run(settings: Settings) -> tuple[list[str], bool]:
    before = set(asyncio.all_tasks())
    app = create_app(settings)
    svc: Services = app.state.services
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=settings.listen_port,
            log_level="warning",
            lifespan="on",
            proxy_headers=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    await async_wait_until(lambda: server.started or serving.done(), "the broker to start")
    assert server.started, "the broker did not start"
    await _exercise(svc, settings.public_url.rstrip("/"))
    # Posted just before the stop: the shutdown must still write it (AuditLog.drain).
    svc.audit.post("test.posted", actor="test", outcome="ok", subject="test:shutdown")
    server.should_exit = True
    await serving
    left = _project_tasks(set(asyncio.all_tasks()) - before)
    written = bool(svc.audit.find("test.posted", "test:shutdown"))
    svc.engine.dispose()
    return left, written


def test_no_project_task_outlives_the_shutdown(make_settings: Callable[..., Settings]) -> None:
    # The webhook posts to the broker itself (404s): its delivery task runs and retries.
    public_url = make_settings().public_url.rstrip("/")
    settings = make_settings(
        webhook_url=f"{public_url}/no-such-hook", webhook_secret=secrets.token_hex(16)
    )
    assert settings.ssh.enabled and settings.agents.enabled
    left, written = asyncio.run(_run(settings))
    assert not left, f"tasks still pending after shutdown: {left}"
    assert written, "an audit event posted at shutdown was lost"


async def _start_failing(settings: Settings) -> tuple[list[str], bool]:
    before = set(asyncio.all_tasks())
    app = create_app(settings)
    svc: Services = app.state.services
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=settings.listen_port, log_level="critical")
    )
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn's answer to a failed lifespan start-up
        failed = exc.code == 3
    else:
        failed = False
    left = _project_tasks(set(asyncio.all_tasks()) - before)
    svc.engine.dispose()
    return left, failed


def test_a_failed_start_stops_what_had_started(make_settings: Callable[..., Settings]) -> None:
    # The SSH front door starts late (after the gateway, checkpoints, storage probe...): give
    # it a port that is taken, so its start step fails with the earlier parts running.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(ssh={"listen_port": taken.getsockname()[1]})
        left, failed = asyncio.run(_start_failing(settings))
    assert failed, "the broker started although its SSH port was taken"
    assert not left, f"tasks left running by a failed start: {left}"
