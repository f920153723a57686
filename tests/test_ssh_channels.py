"""SSH channel types through the front door: interactive PTY, port forwards, idle timeout."""

from __future__ import annotations

import os
import pty
import re
import select as select_mod
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from sessions.testing import ManualClock
from tests.harness.agent import EchoAsset
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.components import needs
from tests.harness.ports import free_port
from tests.harness.ssh_session import SshRig
from tests.harness.wait import wait_until

pytestmark = needs("sshd")


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, echo: EchoAsset) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", echo.port, "tcp")])
    rig.vendor("alice")
    yield rig
    rig.close()


def _read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {needle!r}; got {seen[-300:]!r}"
        ready, _, _ = select_mod.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_interactive_pty_with_window_change(rig: SshRig) -> None:
    rig.grant()
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [*rig.ssh_argv("alice", "-tt")],
        stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True,
    )  # fmt: skip
    os.close(secondary)
    try:
        os.write(primary, b"stty size; echo $((6*7))-marker\n")
        out = _read_until(primary, b"42-marker")
        assert b"42-marker" in out
        # A remote PTY: the asset's shell runs with a terminal (tty prints a /dev/pts path).
        os.write(primary, b"tty\n")
        assert b"/dev/pts/" in _read_until(primary, b"/dev/pts/")
        # Window change travels to the asset.
        import fcntl
        import struct
        import termios

        fcntl.ioctl(primary, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        os.kill(proc.pid, 28)  # SIGWINCH: ssh re-reads the size and sends window-change

        def size_arrived() -> bool:  # ask until the asset reports it ($((3*3)): not the echo)
            os.write(primary, b"stty size; echo $((3*3))-sized\n")
            return b"33 111" in _read_until(primary, b"9-sized")

        _wait(size_arrived, "the window change to reach the asset")
        os.write(primary, b"exit 5\n")
        assert proc.wait(10) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)


def _forward(rig: SshRig, local: int, remote_port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*rig.ssh_argv("alice", "-N", "-o", "ExitOnForwardFailure=no",
                       "-L", f"127.0.0.1:{local}:localhost:{remote_port}")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _try_echo(port: int) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"through-the-forward\n")
                sock.shutdown(socket.SHUT_WR)
                data = b""
                try:
                    while chunk := sock.recv(4096):
                        data += chunk
                except ConnectionResetError:
                    pass  # ssh drops the local connection when the channel is refused
                return data
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "ssh -L never listened"
            time.sleep(0.1)


def test_port_forward_to_an_undeclared_port_is_refused(rig: SshRig, echo: EchoAsset) -> None:
    """The echo port is declared by the agent but by no asset: lab-ssh's grant cannot reach it."""
    rig.grant()
    local = free_port()
    proc = _forward(rig, local, echo.port)
    try:
        assert _try_echo(local) == b""
        why = f"localhost:{echo.port} is not a declared endpoint of lab-ssh"
        _wait(lambda: any(
            why in " ".join(e["details"]["reasons"])
            for e in audit_events(rig.broker, "session.denied")
        ), "the refusal to be audited")  # fmt: skip
        assert echo.opened == 0
    finally:
        proc.kill()
        _, err = proc.communicate(5)
    assert "administratively prohibited" in err and why in err


def test_a_request_cannot_name_a_port_the_asset_does_not_declare(
    rig: SshRig, echo: EchoAsset
) -> None:
    """Ports are inventory, not request input: the request is refused with 400 and audited."""
    refused = rig.request(ports=[rig.sshd.port, echo.port])
    assert refused.status_code == 400, refused.text
    assert f"port(s) {echo.port} are not declared endpoints of lab-ssh" in refused.json()["message"]
    [event] = [e for e in audit_events(rig.broker, "access.request") if e["outcome"] == "rejected"]
    assert event["details"]["ports"] == [rig.sshd.port, echo.port]
    assert not rig.broker.services.maintenance.live()


def test_port_forward_to_a_declared_endpoint_of_the_granted_asset(
    rig: SshRig, echo: EchoAsset
) -> None:
    rig.add_asset("echo-lab", echo.port, "tcp")
    grant_id = rig.grant(asset="echo-lab")
    local = free_port()
    proc = subprocess.Popen(
        [*rig.ssh_argv("alice", "-N", "-o", "ExitOnForwardFailure=no",
                       "-L", f"127.0.0.1:{local}:localhost:{echo.port}", asset="echo-lab")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert _try_echo(local) == b"through-the-forward\n"
        assert echo.opened == 1
        [started] = audit_events(rig.broker, "session.started")
        assert started["details"]["grant"] == grant_id
        assert started["details"]["endpoint"] == f"tcp 127.0.0.1:{echo.port} (tcp)"
    finally:
        proc.kill()
        proc.communicate(5)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_idle_timeout_ends_the_session(
    make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    clock = ManualClock(datetime.now(UTC))
    broker = make_broker(clock=clock)
    rig = SshRig.build(broker, tmp_path)
    try:
        rig.vendor("alice")
        rig.grant()
        proc = subprocess.Popen(
            [*rig.ssh_argv(), "echo ready; sleep 120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        [live] = broker.services.live.list()
        clock.advance(live.idle_timeout_s + 1)
        _, err = proc.communicate(timeout=30)  # the watchdog's next tick (speed: bench/)
        assert f"conduit: session ended: idle for {int(live.idle_timeout_s)} s" in err
        wait_until(lambda: bool(audit_events(broker, "session.ended")), "session.ended")
        [ended] = audit_events(broker, "session.ended")
        assert (ended["outcome"], ended["details"]["reason_code"]) == ("deny", "idle_timeout")
    finally:
        rig.close()


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty on stdin (/dev/tty)."""
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_clientless_sign_in_approved_in_a_browser(rig: SshRig, chromium: Browser) -> None:
    rig.grant()
    primary, secondary = pty.openpty()
    argv = [
        "ssh", "-F", "/dev/null", "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=keyboard-interactive",
        "-o", f"UserKnownHostsFile={rig.known_hosts()}", "-o", "StrictHostKeyChecking=yes",
        "-p", str(rig.front_port), f"{rig.sshd.user}@lab-ssh@127.0.0.1", "echo clientless-ok",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=secondary, stdout=secondary, stderr=secondary, preexec_fn=_own_terminal
    )
    os.close(secondary)
    try:
        prompt = _read_until(primary, b"Press Enter once approved")
        found = re.search(
            rb"open (http://\S+/ssh/approve) .*code there: ([A-Z0-9-]+)", prompt, re.S
        )
        assert found, prompt
        url, code = found[1].decode(), found[2].decode()

        page = chromium.new_context().new_page()
        page.goto(url)  # not signed in: the broker sends the browser through the IdP first
        page.click("#signin-main")
        page.fill("#username", "alice")
        page.fill("#password", "alice-demo-pw")
        page.click("#login-submit")
        page.fill("#code", code.lower().replace("-", " "))  # typed, as people do
        page.click("#continue")
        expect(page.locator("#ssh-asset")).to_have_text("lab-ssh")
        expect(page.locator("#ssh-login")).to_have_text(rig.sshd.user)
        expect(page.locator("#ssh-source")).to_have_text("127.0.0.1")
        expect(page.locator("#ssh-warning")).to_contain_text("started this SSH connection yourself")
        page.click("#approve")
        expect(page.locator("#ssh-approved")).to_be_visible()

        os.write(primary, b"\n")
        assert b"clientless-ok" in _read_until(primary, b"clientless-ok")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    approved = audit_events(rig.broker, "ssh.clientless.approved")
    assert approved and approved[-1]["actor"] == rig.users["alice"]
