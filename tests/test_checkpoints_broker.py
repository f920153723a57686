"""The running broker checkpoints its audit log: file, syslog (a real UDP socket), webhook.

Time is the broker's injected clock; the test waits on conditions. A broker started on a log
that no longer reaches its newest checkpoint says so: an audited alert and ``/healthz``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa

from sessions.checkpoints import parse_checkpoint, read_checkpoints
from sessions.recording import load_public_key
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.cli import run_conduit
from tests.harness.wait import wait_until

SECRET = "webhook-secret-0123456789"


@pytest.fixture
def syslog() -> Iterator[tuple[str, list[str]]]:
    """A UDP syslog receiver on 127.0.0.1 collecting messages."""
    received: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                received.append(sock.recv(65536).decode())
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"udp://127.0.0.1:{sock.getsockname()[1]}", received
    stop.set()
    thread.join(5)
    sock.close()


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, object]]]]:
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def _append(broker: RunningBroker, count: int) -> None:
    for i in range(count):
        broker.services.audit.append("test.event", actor="tester", outcome="ok", details={"i": i})


def test_broker_ships_checkpoints_and_notices_a_truncated_log(
    make_broker: Callable[..., RunningBroker],
    syslog: tuple[str, list[str]],
    hook: tuple[str, list[dict[str, object]]],
) -> None:
    clock = ManualClock(datetime.now(UTC))
    syslog_url, datagrams = syslog
    hook_url, posts = hook
    broker = make_broker(
        clock=clock,
        webhook_url=hook_url,
        webhook_secret=SECRET,
        audit={
            "checkpoint_events": 5,
            "checkpoint_interval_s": 30,
            "checkpoint_syslog": syslog_url,
        },
    )
    settings = broker.services.settings
    path = settings.data_dir / "audit" / "checkpoints.jsonl"
    key = load_public_key(settings.data_dir / "keys" / "recording_ed25519.pub")

    def seqs() -> list[int]:
        return [cp.seq for cp in read_checkpoints(path, key)[0]] if path.exists() else []

    wait_until(lambda: bool(seqs()), "the start-up checkpoint", timeout=15)
    start = seqs()[-1]
    _append(broker, 12)  # the 5th and 10th events after it are checkpointed without delay
    wait_until(
        lambda: seqs()[-2:] == [start + 5, start + 10], "the every-5-events checkpoints", timeout=15
    )
    clock.advance(30)  # the two left over are now 30 s old: the head is checkpointed
    head = broker.services.audit.head()
    assert head is not None
    wait_until(lambda: seqs()[-1] >= head[0], "the every-30-seconds checkpoint", timeout=15)

    # The same checkpoints went to syslog and the webhook, verifiable with the public key.
    wait_until(lambda: len(datagrams) >= 4, "syslog messages", timeout=15)
    from_syslog = [parse_checkpoint(d[d.index("{") :], key).seq for d in datagrams]
    assert from_syslog[:4] == seqs()[:4]
    assert all(d.startswith("<85>1 ") and " conduit " in d for d in datagrams)
    wait_until(lambda: any(p["event"] == "audit.checkpoint" for p in posts), "webhook", timeout=15)
    shipped = [p for p in posts if p["event"] == "audit.checkpoint"]
    assert parse_checkpoint(json.dumps(shipped[0]["details"]), key).seq == seqs()[0]
    # Captures of syslog and of the webhook work as checkpoint files for `audit verify`.
    captures = settings.data_dir.parent / "captures"
    captures.mkdir()
    (captures / "syslog.log").write_text("".join(d + "\n" for d in datagrams))
    (captures / "webhook.jsonl").write_text("".join(json.dumps(p) + "\n" for p in shipped))
    from_captures = [
        read_checkpoints(captures / n, key)[0] for n in ("syslog.log", "webhook.jsonl")
    ]
    assert [cp.seq for cp in from_captures[0]] == from_syslog
    assert [cp.seq for cp in from_captures[1]][:1] == seqs()[:1]
    assert httpx2.get(f"{broker.url}/healthz").json()["checks"]["audit_checkpoints"] == "ok"

    broker.stop()  # a clean stop checkpoints the final head
    final = seqs()[-1]
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT max(seq) FROM audit_events")).scalar_one() == final
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq > :s"), {"s": final - 3})
    engine.dispose()
    pub = settings.data_dir / "keys" / "recording_ed25519.pub"
    verified = run_conduit(
        "audit", "verify", "--database-url", settings.database_url,
        "--checkpoints", str(path), "--public-key", str(pub),
    )  # fmt: skip
    assert verified.returncode == 1 and "TRUNCATED" in verified.stdout, verified.stdout

    # A broker started on the truncated log reports it: audited alert and /healthz.
    again = make_broker(clock=clock, audit={"checkpoint_events": 5, "checkpoint_interval_s": 30})
    [alert] = audit_events(again, "audit.checkpoint.mismatch")
    assert alert["outcome"] == "error"
    assert f"covers event {final}" in str(alert["details"]["problem"])
    health = httpx2.get(f"{again.url}/healthz").json()
    assert health["checks"]["audit_checkpoints"] == (
        "failing: the audit log does not match its checkpoints"
    )


def test_settings_refuse_a_bad_syslog_target(make_broker: Callable[..., RunningBroker]) -> None:
    from broker.runtime.errors import SettingsError

    with pytest.raises(SettingsError, match="checkpoint_syslog"):
        make_broker(audit={"checkpoint_syslog": "syslog.example:514"})


def test_healthz_names_its_checks(broker: RunningBroker, tmp_path: Path) -> None:
    body = httpx2.get(f"{broker.url}/healthz").json()
    assert body == {
        "status": "ok",
        "checks": {"database": "ok", "recording_storage": "ok", "audit_checkpoints": "ok"},
    }
