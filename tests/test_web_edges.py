"""Web edges (issue 13, item 9): client address behind proxies, absurd durations, headers.

Each check runs against the real broker (real IdP sign-ins where a user is needed) and looks
at the outcome from outside: the audit log's ``source_ip``, the HTTP answer, the headers a
browser gets. ``broker.auth.forwarded`` is also checked on its own, hop by hop.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx2
import pytest

from broker.auth.forwarded import client_address
from broker.dev.demo import seed
from broker.runtime.errors import SettingsError
from tests.harness.broker import RunningBroker, audit_events, form_values, web_login
from tests.harness.cli import run_conduit
from tests.test_access_api import _cli_env

# --------------------------------------------------------------------------- X-Forwarded-For

TRUSTED = [ipaddress.ip_network(n) for n in ("127.0.0.1", "10.0.0.0/8", "fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        # The client's own entries (left of the first untrusted hop) are never believed.
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.2.3"], "198.51.100.7"),
        ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", ["6.6.6.6", "198.51.100.8, 10.0.0.1"], "198.51.100.8"),  # two lines
        ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # all proxies: the farthest
        ("127.0.0.1", ["6.6.6.6, not-an-ip, 10.0.0.1"], "10.0.0.1"),  # as far as vouched for
        ("127.0.0.1", ["unknown"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.7:4711, 10.0.0.1"], "198.51.100.7"),
        ("127.0.0.1", ["[2001:db8::1]:443, fd00::2"], "2001:db8::1"),
        ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
        ("127.0.0.1", [" , ,"], "127.0.0.1"),
        ("127.0.0.1", [], "127.0.0.1"),
        ("::ffff:10.0.0.9", ["198.51.100.7"], "198.51.100.7"),  # IPv4-mapped proxy address
        ("203.0.113.5", ["198.51.100.7"], "203.0.113.5"),  # not from a proxy: ignored
    ],
)
def test_forwarded_for_is_read_from_the_right(peer: str, header: list[str], client: str) -> None:
    assert client_address(peer, header, TRUSTED) == client


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_address("127.0.0.1", ["198.51.100.7"], []) == "127.0.0.1"


def _join_refused_from(broker: RunningBroker, headers: list[tuple[str, str]]) -> str | None:
    """An audited request (a refused agent join); returns the source_ip the audit log got."""
    before = len(audit_events(broker, "agent.join.refused"))
    resp = httpx2.post(
        f"{broker.url}/api/agents/join",
        json={"token_id": "0123456789abcdef", "secret": "s", "public_key": "x"},
        headers=headers,
        timeout=10,
    )
    assert resp.status_code == 403, resp.text
    events = audit_events(broker, "agent.join.refused")
    assert len(events) == before + 1
    source: str | None = events[-1]["source_ip"]
    return source


def test_the_broker_audits_the_client_behind_its_trusted_proxies(
    make_broker: Callable[..., RunningBroker],
) -> None:
    broker = make_broker(trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    spoofed = [("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 10.1.2.3")]
    assert _join_refused_from(broker, spoofed) == "198.51.100.7"
    assert _join_refused_from(broker, []) == "127.0.0.1"


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_broker: Callable[..., RunningBroker],
) -> None:
    broker = make_broker(trusted_proxies=["10.0.0.0/8"])  # the test client is not a proxy
    assert _join_refused_from(broker, [("X-Forwarded-For", "198.51.100.7")]) == "127.0.0.1"


def test_trusted_proxies_must_be_addresses_or_networks(
    make_broker: Callable[..., RunningBroker],
) -> None:
    with pytest.raises(SettingsError, match="trusted_proxies"):
        make_broker(trusted_proxies=["proxy.example"])


# --------------------------------------------------------------------------- durations


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


def _request(broker: RunningBroker, token: str, **body: object) -> httpx2.Response:
    return httpx2.post(
        f"{broker.url}/api/requests",
        json={"asset": "hist-01", "reason": "x", **body},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _token(broker: RunningBroker, env: dict[str, str]) -> str:
    """The API token in a CLI environment made by ``_cli_env``."""
    creds = Path(env["XDG_CONFIG_HOME"]) / "conduit" / "credentials.json"
    token: str = json.loads(creds.read_text())["brokers"][broker.url]["access_token"]
    return token


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        ("99999999999h", "longer than the maximum of 8784h"),
        ("1" * 5000 + "h", "longer than the maximum"),
        ("8785h", "longer than the maximum of 8784h"),
        ("527041m", "longer than the maximum"),
        ("soon", "is not like 2h, 90m or 1h30m"),
    ],
)
def test_an_absurd_duration_is_a_400_with_a_message(
    plant: RunningBroker, tmp_path: Path, duration: str, message: str
) -> None:
    token = _token(plant, _cli_env(plant, tmp_path, "alice"))
    resp = _request(plant, token, duration=duration)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "bad_request" and message in resp.json()["message"]


def test_a_window_past_the_year_9999_is_a_400_in_the_api_the_cli_and_the_form(
    plant: RunningBroker, tmp_path: Path
) -> None:
    alice = _cli_env(plant, tmp_path, "alice")
    resp = _request(plant, _token(plant, alice), starts_at="9999-12-31T23:00:00Z", duration="2h")
    assert resp.status_code == 400 and "after the year 9999" in resp.json()["message"]

    cli = run_conduit("request", "hist-01", "--for", "99999999999h", "--reason", "x", env=alice)
    assert cli.returncode == 2 and "longer than the maximum" in cli.stderr, cli.stderr

    with httpx2.Client(timeout=10) as web:
        web_login(web, plant.url, "alice", "alice-demo-pw")
        form = form_values(web.get(f"{plant.url}/vendor").text)
        form.update(asset="hist-01", operation_class="read_only", reason="x")
        form.update(starts_at="9999-12-31T23:30", duration="60")
        page = web.post(f"{plant.url}/vendor/requests", data=form)
    assert page.status_code == 400 and "after the year 9999" in page.text


# --------------------------------------------------------------------------- security headers


def _csp(resp: httpx2.Response) -> str:
    return resp.headers["content-security-policy"]


def test_loopback_form_action_only_on_the_cli_sign_in_page(broker: RunningBroker) -> None:
    with httpx2.Client(timeout=10) as web:
        web_login(web, broker.url, "alice", "alice-demo-pw")
        for path in ("/", "/whoami", "/vendor", "/ssh/approve", "/static/conduit.css"):
            resp = web.get(f"{broker.url}{path}")
            csp = _csp(resp)  # (the dev IdP itself runs on 127.0.0.1: its origin is listed)
            assert "http://127.0.0.1:*" not in csp and "localhost" not in csp, (path, csp)
        query = urlencode(
            {
                "redirect_uri": "http://127.0.0.1:4711/callback",
                "code_challenge": "A" * 43,
                "code_challenge_method": "S256",
                "state": "s1",
            }
        )
        page = web.get(f"{broker.url}/cli/authorize?{query}")
    assert page.status_code == 200 and 'action="/cli/authorize"' in page.text
    assert "form-action 'self' " in _csp(page) and "http://127.0.0.1:*" in _csp(page)
    assert "Strict-Transport-Security" not in page.headers  # plain http: no HSTS


def test_hsts_when_the_public_url_is_https(make_broker: Callable[..., RunningBroker]) -> None:
    broker = make_broker(public_url="https://conduit.plant.example")
    port = broker.services.settings.listen_port  # TLS ends at the proxy in front
    for path in ("/healthz", "/", "/static/conduit.css"):
        resp = httpx2.get(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert resp.headers["strict-transport-security"] == "max-age=31536000", path
