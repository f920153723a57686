"""Run the real broker app under uvicorn in a background thread, and sign people in to it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
import uvicorn
from starlette.applications import Starlette

from broker.app import create_app
from broker.runtime.settings import Settings
from broker.services import Services
from sessions.clock import Clock
from tests.harness.idp import idp_login


@dataclass
class RunningBroker:
    url: str
    app: Starlette
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def services(self) -> Services:
        svc: Services = self.app.state.services
        return svc

    def refresh_policy_data(self) -> bool:
        """Push the database's current plant data to the engine now, on the broker's event
        loop (as a change or the periodic task does); False when the engine refused it."""
        loop = self.services.policy_data.loop
        if loop is None:
            raise RuntimeError("the broker's policy data sync has not started")
        future = asyncio.run_coroutine_threadsafe(self.services.refresh_policy_data(), loop)
        return future.result(timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        # Close the pool's connections now (PostgreSQL warns about ones left to the GC).
        self.services.engine.dispose()


def start_broker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    oidc_transport: httpx2.AsyncBaseTransport | None = None,
) -> RunningBroker:
    """Start the broker on ``settings.listen_port`` and wait until it serves requests."""
    app = create_app(settings, clock=clock, oidc_transport=oidc_transport)
    # As ``conduit serve``: uvicorn's own X-Forwarded-For handling off (the broker's applies).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.listen_port,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="broker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30  # generous: start-up under load
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("broker did not start")
        time.sleep(0.02)
    return RunningBroker(settings.public_url.rstrip("/"), app, server, thread)


def begin_login(client: httpx2.Client, broker_url: str, next_path: str = "/") -> str:
    """GET /login; returns the IdP authorization URL the broker redirects to."""
    resp = client.get(f"{broker_url}/login?{urlencode({'next': next_path})}")
    assert resp.status_code == 302, resp.text
    return resp.headers["location"]


def web_login(
    client: httpx2.Client,
    broker_url: str,
    username: str,
    password: str,
    *,
    otp: str | None = None,
    next_path: str = "/",
) -> httpx2.Response:
    """Sign in through the real IdP; returns the broker's answer to the callback.

    On success that is a 303 to ``next_path`` with the session cookie set; on a refused
    callback, the broker's error page. If the IdP itself refuses (wrong password), returns
    the IdP's response and the broker is never called back.
    """
    authorize = begin_login(client, broker_url, next_path)
    answer = idp_login(client, authorize, username, password, otp)
    location = answer.headers.get("location", "")
    if answer.is_redirect and location.startswith(broker_url):
        return client.get(location)
    return answer


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name"):
            self.values[str(a["name"])] = a.get("value") or ""


def form_values(html: str) -> dict[str, str]:
    """Name → value of every <input> in a page (hidden fields such as csrf included)."""
    parser = _Inputs()
    parser.feed(html)
    return parser.values


def audit_events(broker: RunningBroker, kind: str | None = None) -> list[dict[str, Any]]:
    """Every audit event (oldest first), optionally of one kind, as dicts."""
    return [
        {
            "seq": e.seq,
            "kind": e.kind,
            "outcome": e.outcome,
            "actor": e.actor,
            "subject": e.subject,
            "details": e.details,
            "source_ip": e.source_ip,
        }
        for e in broker.services.audit.iter_events()
        if kind is None or e.kind == kind
    ]


def same_origin_api(client: httpx2.Client, broker_url: str) -> httpx2.Client:
    """Let ``client`` (signed in with the session cookie) call state-changing JSON APIs the way
    a same-origin script does: the session's ``X-CSRF-Token`` (from ``/api/whoami``) and the
    broker's ``Origin`` on every request. Requests must still send JSON (``json=...``)."""
    me = client.get(f"{broker_url}/api/whoami")
    assert me.status_code == 200, me.text
    client.headers.update({"X-CSRF-Token": me.json()["csrf_token"], "Origin": broker_url})
    return client


def device_token(client: httpx2.Client, broker_url: str) -> tuple[str, str]:
    """A CLI token through the real device flow, approved by ``client``'s browser session
    (the person types the code and allows it); returns ``(token, expires_at)``."""
    start = httpx2.post(f"{broker_url}/api/cli/device", json={"client_name": "conduit CLI"})
    assert start.status_code == 200, start.text
    body = start.json()
    page = client.get(f"{broker_url}/cli/activate")
    typed = {**form_values(page.text), "user_code": body["user_code"]}
    confirm = client.post(f"{broker_url}/cli/activate", data=typed)
    assert confirm.status_code == 200 and 'id="approve"' in confirm.text, confirm.text
    done = client.post(
        f"{broker_url}/cli/activate", data={**form_values(confirm.text), "decision": "approve"}
    )
    assert "CLI signed in" in done.text, done.text
    token = httpx2.post(
        f"{broker_url}/api/cli/token",
        json={
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": body["device_code"],
        },
    )
    assert token.status_code == 200, token.text
    return token.json()["access_token"], token.json()["expires_at"]


def same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


Mutator = Callable[[httpx2.Request], httpx2.Request]


def settings_overrides(settings: Settings) -> dict[str, Any]:
    """``load_settings`` overrides that rebuild ``settings`` in a broker subprocess.

    Agent gateway and SSH front door listen on free ports there (port 0).
    """
    secret = settings.oidc.client_secret
    return {
        "mode": settings.mode,
        "public_url": settings.public_url,
        "listen_port": settings.listen_port,
        "database_url": settings.database_url,
        "data_dir": str(settings.data_dir),
        "agents": {"listen_port": 0},
        "ssh": {"listen_port": 0},
        "oidc": {
            "issuer": settings.oidc.issuer,
            "client_id": settings.oidc.client_id,
            "client_secret": secret.get_secret_value() if secret else None,
        },
    }
