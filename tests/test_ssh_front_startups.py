"""The SSH front door keeps unauthenticated connections few and short (issue 13, item 9).

300 banner-only TCP connections were once all accepted and held for five minutes. Now they are
capped per source address and overall (OpenSSH's MaxStartups), and must sign in within
``ssh.login_timeout_s``. Every refused or timed-out connection is told why (an SSH disconnect
message: visible in the raw bytes, and printed by the stock ``ssh`` client), the audit log
says so once a minute per source, and vendors from other addresses keep getting in.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.harness.broker import RunningBroker, audit_events
from tests.harness.clientless import Approver, ClientlessSsh
from tests.harness.components import needs
from tests.harness.ssh_session import SshRig
from tests.harness.wait import wait_until

LOGIN_S = 4.0
ATTACKER = "127.0.0.2"  # all of 127/8 is loopback: a second source address on this machine
PER_SOURCE = "too many unauthenticated connections from"
OVERALL = "too many unauthenticated connections; try again later"
TIMED_OUT = "not signed in within"


class BannerOnly:
    """A raw TCP connection that reads what the door says and never answers."""

    opened: ClassVar[list[BannerOnly]] = []  # closed after each test (see close_sockets)

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        BannerOnly.opened.append(self)
        self.data = b""
        self.closed = False
        # Wait for the version line: the door has then counted (or refused) this connection.
        while b"\r\n" not in self.data and not self.closed:
            self._recv()
        self.sock.setblocking(False)

    def _recv(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.data += chunk
        else:
            self.closed = True
            self.sock.close()

    def poll(self) -> bool:
        """Read what arrived; True once the door has closed the connection."""
        if not self.closed:
            self._recv()
        return self.closed

    def said(self, text: str) -> bool:
        return text.encode() in self.data


def flood(port: int, source: str, count: int) -> list[BannerOnly]:
    return [BannerOnly(port, source) for _ in range(count)]


def all_closed(conns: list[BannerOnly]) -> Callable[[], bool]:
    return lambda: all([c.poll() for c in conns])


def events_since(broker: RunningBroker, kind: str, seq: int) -> list[dict[str, Any]]:
    return [e for e in audit_events(broker, kind) if e["seq"] > seq]


def last_seq(broker: RunningBroker) -> int:
    return max((e["seq"] for e in audit_events(broker)), default=0)


def front_port(broker: RunningBroker) -> int:
    front = broker.services.front
    assert front is not None
    return front.port


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    for conn in BannerOnly.opened:
        conn.sock.close()
    BannerOnly.opened.clear()


@pytest.fixture
def rig(make_broker: Callable[..., RunningBroker], tmp_path: Path) -> Iterator[SshRig]:
    broker = make_broker(ssh={"listen_port": 0, "login_timeout_s": LOGIN_S})
    rig = SshRig.build(broker, tmp_path)
    rig.vendor("alice")
    yield rig
    rig.close()


@needs("sshd")
def test_300_banner_only_connections_are_capped_per_source_and_timed_out(rig: SshRig) -> None:
    broker = rig.broker
    rig.grant()
    limits = broker.services.settings.ssh.startup_limits()
    assert (limits.start, limits.rate, limits.full, limits.per_source) == (10, 30, 100, 8)
    since = last_seq(broker)

    started = time.monotonic()
    conns = flood(front_port(broker), ATTACKER, 300)
    flooded_in = time.monotonic() - started
    # Meanwhile a vendor from another address signs in and works: one host alone can never
    # push the door into refusing others (its cap is below MaxStartups' start).
    done = rig.ssh("echo still-open")
    assert done.returncode == 0 and "still-open" in done.stdout, done.stderr

    wait_until(
        all_closed(conns), "the door to close every banner-only connection", timeout=LOGIN_S + 15
    )
    refused = [c for c in conns if c.said(PER_SOURCE)]
    timed_out = [c for c in conns if c.said(TIMED_OUT)]
    assert all(c.data.startswith(b"SSH-2.0-") for c in conns)
    assert len(refused) + len(timed_out) == 300  # each one was told why
    assert all(c.said(f"{PER_SOURCE} {ATTACKER} (limit 8)") for c in refused)
    if flooded_in < LOGIN_S:  # none timed out during the flood: exactly the cap was held
        assert len(timed_out) == limits.per_source, len(timed_out)
    assert not broker.services.front or broker.services.front.listener.gate.unauthenticated == 0

    # Audited once per source and kind (a flood of refusals is not a flood of audit events).
    wait_until(
        lambda: bool(events_since(broker, "ssh.login.timeout", since)), "the audit", timeout=10
    )
    (refusal,) = events_since(broker, "ssh.connect.refused", since)
    assert refusal["source_ip"] == ATTACKER and refusal["outcome"] == "refused"
    assert refusal["details"]["reason"] == "max_startups_per_source"
    (timeout,) = events_since(broker, "ssh.login.timeout", since)
    assert timeout["source_ip"] == ATTACKER and timeout["details"]["reason"] == "login_timeout"

    # The vendor still gets in afterwards.
    again = rig.ssh("echo after")
    assert again.returncode == 0 and "after" in again.stdout, again.stderr


def test_the_overall_cap_holds_across_sources_and_the_stock_client_says_why(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    broker = make_broker(
        ssh={
            "listen_port": 0,
            "login_timeout_s": LOGIN_S,
            "max_startups": "5",  # a hard limit: 5:100:5
            "max_startups_per_source": 3,
        }
    )
    port = front_port(broker)
    since = last_seq(broker)
    first = flood(port, "127.0.0.2", 4)  # 3 held, the 4th over the per-source cap
    second = flood(port, "127.0.0.3", 3)  # 2 held, then the door is full
    third = flood(port, "127.0.0.4", 1)  # a new source: the door is full for everybody
    wait_until(
        lambda: first[3].poll() and second[2].poll() and third[0].poll(), "refusals", timeout=10
    )
    assert first[3].said(f"{PER_SOURCE} 127.0.0.2 (limit 3)")
    assert second[2].said(OVERALL) and third[0].said(OVERALL)
    assert not any(c.poll() for c in first[:3] + second[:2])  # those are held, for now

    # The stock OpenSSH client prints the reason.
    ssh = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "-p", str(port),
         "maint@lab@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert ssh.returncode == 255 and OVERALL in ssh.stderr, ssh.stderr

    def by_source() -> dict[str, str]:
        refusals = events_since(broker, "ssh.connect.refused", since)
        return {e["source_ip"]: e["details"]["reason"] for e in refusals}

    wait_until(lambda: len(by_source()) == 4, "a refusal event per source", timeout=10)
    assert by_source() == {
        "127.0.0.2": "max_startups_per_source",
        "127.0.0.3": "max_startups",
        "127.0.0.4": "max_startups",
        "127.0.0.1": "max_startups",
    }
    # After the login timeout the held ones are gone and the door takes connections again.
    wait_until(all_closed(first + second), "the held connections to time out", timeout=LOGIN_S + 10)
    assert all(c.said(TIMED_OUT) for c in first[:3] + second[:2])
    fresh = flood(port, "127.0.0.4", 1)[0]
    assert not fresh.poll() and not fresh.said("too many")


@needs("sshd")
def test_a_clientless_sign_in_awaiting_approval_outlives_the_login_timeout(
    rig: SshRig, tmp_path: Path
) -> None:
    """The login timeout is for reaching sign-in; a vendor approving a clientless code in a
    browser (minutes, with MFA) keeps the connection until the code expires."""
    rig.grant()
    vendor = ClientlessSsh(rig.broker, tmp_path, f"{rig.sshd.user}@lab-ssh", "echo clientless-ok")
    approver = Approver(rig.broker, "alice")
    try:
        _, code = vendor.prompt()
        vendor.press_enter()  # Enter before approving: the broker waits for the browser
        # A connection opened after it is cut by the login timeout; the clientless one is not.
        idle = BannerOnly(rig.front_port, ATTACKER)
        wait_until(idle.poll, "the idle connection's login timeout", timeout=LOGIN_S + 10)
        assert idle.said(TIMED_OUT)
        assert vendor.proc.poll() is None
        assert approver.approve(code).status_code == 200
        assert b"clientless-ok" in vendor.read_until(b"clientless-ok")
        assert vendor.proc.wait(10) == 0
    finally:
        approver.close()
        if vendor.proc.poll() is None:
            vendor.proc.kill()
            vendor.proc.wait(5)
