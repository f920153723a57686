"""Each access state change is POSTed, signed, to the configured webhook (a real local receiver)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from broker.dev.demo import seed
from tests.harness.broker import RunningBroker, same_origin_api, web_login
from tests.harness.wait import wait_until

SECRET = "webhook-secret-0123456789"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_state_changes_are_signed_and_delivered(
    make_broker: Callable[..., RunningBroker],
    http: httpx2.Client,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, received = receiver
    broker = make_broker(webhook_url=url, webhook_secret=SECRET)
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    web_login(http, broker.url, "adam", "adam-demo-pw")
    same_origin_api(http, broker.url)
    made = http.post(
        f"{broker.url}/api/requests", json={"asset": "hist-01", "duration": "1h", "reason": "x"}
    )
    assert made.status_code == 201

    def requests() -> list[tuple[dict[str, str], bytes]]:  # audit checkpoints are sent too
        return [(h, b) for h, b in received if json.loads(b)["event"] == "access.request"]

    headers, body = wait_until(requests, "the webhook delivery")[0]
    expected = hmac.new(
        SECRET.encode(), headers["x-conduit-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-conduit-signature"] == f"sha256={expected}"
    event = json.loads(body)
    assert event["event"] == "access.request" and event["subject"] == made.json()["id"]
    assert SECRET not in body.decode()


def test_webhook_needs_a_secret(make_broker: Callable[..., RunningBroker]) -> None:
    from broker.runtime.errors import SettingsError

    with pytest.raises(SettingsError, match="webhook_secret"):
        make_broker(webhook_url="http://127.0.0.1:9/hook")
