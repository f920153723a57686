"""Shared fixtures: real components started on 127.0.0.1 (see tests/harness)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx2
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page

from broker.runtime.settings import Settings, load_settings
from sessions.clock import Clock
from sessions.db import create_db_engine, migrate
from tests.harness.agent import EchoAsset
from tests.harness.broker import RunningBroker, start_broker
from tests.harness.browser import launch_browser_sync
from tests.harness.components import (
    MARK,
    REASON_PREFIX,
    SWITCH,
    components_required,
    require,
)
from tests.harness.idp import RunningIdP, start_dev_idp
from tests.harness.plc import PlcServer
from tests.harness.ports import free_port
from tests.harness.postgres import RunningPostgres, start_postgres
from tests.harness.ssh_session import SshRig

CLIENT_ID = "conduit"


# --- missing components: skip locally, fail in CI (tests/harness/components.py) ----------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARK}(*components): needs real components (tests/harness/components.py)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(MARK):
        for name in mark.args:
            require(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under the switch, no skip passes silently: a skip that did not come through
    ``component_missing`` (a stray ``pytest.skip`` or ``skipif``) fails as well."""
    report = yield
    if report.skipped and components_required() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under {SWITCH}=1 or CI=true, which makes every skip a failure: {reason}"
        )
        if not str(reason).startswith(f"Skipped: {REASON_PREFIX}"):
            report.longrepr += " (skip without tests.harness.components.component_missing)"
    return report


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
            "agents": {"listen_port": 0},
            "ssh": {"listen_port": 0},
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
    with httpx2.Client(timeout=30.0, follow_redirects=False) as client:  # generous under load
        yield client


# --- storage: every storage test runs on SQLite and on a real PostgreSQL -----------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPostgres]:
    require("postgres")
    server = start_postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        eng = create_db_engine(f"sqlite:///{tmp_path / 'conduit.db'}")
    else:
        server: RunningPostgres = request.getfixturevalue("pg_server")
        eng = create_db_engine(server.create_database(f"t_{uuid4().hex[:16]}"))
    migrate(eng)
    yield eng
    eng.dispose()


# --- browser: one headless Chromium per module, a fresh context per test -------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    require("chromium")
    with launch_browser_sync() as browser:
        yield browser


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    yield context.new_page()
    context.close()


# --- small real assets on loopback -----------------------------------------------------


@pytest.fixture
def echo() -> Iterator[EchoAsset]:
    """A TCP echo server on 127.0.0.1 (records when each connection ends)."""
    asset = EchoAsset()
    yield asset
    asset.close()


@pytest.fixture
def plc() -> Iterator[PlcServer]:
    """A real pymodbus PLC on 127.0.0.1."""
    server = PlcServer()
    yield server
    server.stop()


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[SshRig]:
    """A broker with the real sshd, agent and front door (:class:`SshRig`), vendor alice
    signed in. Modules that need another shape (a PLC endpoint, another vendor) define their
    own ``rig``."""
    rig = SshRig.build(broker, tmp_path)
    rig.vendor("alice")
    yield rig
    rig.close()
