"""Shared fixtures: real components started on 127.0.0.1 (see tests/harness)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from broker.settings import Settings, load_settings
from sessions.clock import Clock
from tests.harness.broker import RunningBroker, start_broker
from tests.harness.idp import RunningIdP, start_dev_idp
from tests.harness.ports import free_port

CLIENT_ID = "conduit"


@pytest.fixture(scope="session")
def broker_port() -> int:
    """One port for every broker the session starts, so the IdP knows its redirect URI."""
    return free_port()


@pytest.fixture(scope="session")
def client_secret() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def idp(
    tmp_path_factory: pytest.TempPathFactory, broker_port: int, client_secret: str
) -> Iterator[RunningIdP]:
    """The real dev IdP (npm oidc-provider), with the broker registered as a client."""
    base = f"http://127.0.0.1:{broker_port}"
    clients = [
        {
            "client_id": CLIENT_ID,
            "client_secret": client_secret,
            "redirect_uris": [f"{base}/auth/callback"],
            "post_logout_redirect_uris": [f"{base}/"],
        }
    ]
    running = start_dev_idp(tmp_path_factory.mktemp("idp"), clients)
    yield running
    running.stop()


@pytest.fixture
def make_settings(
    tmp_path: Path, broker_port: int, idp: RunningIdP, client_secret: str
) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "mode": "dev",
            "public_url": f"http://127.0.0.1:{broker_port}",
            "listen_port": broker_port,
            "database_url": f"sqlite:///{tmp_path / 'conduit.db'}",
            "data_dir": tmp_path / "var",
            "oidc": {"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": client_secret},
        }
        base.update(overrides)
        return load_settings(None, **base)

    return factory


@pytest.fixture
def make_broker(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., RunningBroker]]:
    """Start a broker (fresh SQLite DB) with optional clock / OIDC transport / settings."""
    started: list[RunningBroker] = []

    def factory(
        *,
        clock: Clock | None = None,
        oidc_transport: httpx2.AsyncBaseTransport | None = None,
        **overrides: Any,
    ) -> RunningBroker:
        broker = start_broker(
            make_settings(**overrides), clock=clock, oidc_transport=oidc_transport
        )
        started.append(broker)
        return broker

    yield factory
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[..., RunningBroker]) -> RunningBroker:
    return make_broker()


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10.0, follow_redirects=False) as client:
        yield client
