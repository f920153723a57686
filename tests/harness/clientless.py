"""Stock OpenSSH signing in *clientless* (keyboard-interactive, no certificate) to the front door.

OpenSSH reads keyboard-interactive answers from ``/dev/tty``, so the client runs in a new
session whose controlling terminal is a pty we hold; :meth:`ClientlessSsh.prompt` reads the
page address and the code it shows, :meth:`press_enter` answers the prompt. Anything the
front door says (auth banners: ``conduit: ...``) lands in :attr:`output`. ``source`` binds the
client to another loopback address (``ssh -b``), to test per-address limits.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import httpx2

from broker.keys.ssh import SshKeys
from tests.harness.broker import RunningBroker, form_values, web_login

PROMPT = b"Press Enter once approved"
_SHOWN = re.compile(
    rb"open (\S+) in your browser.*?type this code there: ([A-Z0-9]{4}-[A-Z0-9]{4})", re.S
)


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty on stdin (/dev/tty)."""
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def front_known_hosts(broker: RunningBroker, workdir: Path) -> Path:
    """A known_hosts file pinning the front door's host key."""
    front = broker.services.front
    assert front is not None
    path = workdir / "front_known_hosts"
    path.write_text(f"[127.0.0.1]:{front.port} {SshKeys.public(broker.services.ssh_keys.host)}\n")
    return path


class ClientlessSsh:
    """One stock ``ssh`` run without a certificate, on its own pty."""

    def __init__(
        self,
        broker: RunningBroker,
        workdir: Path,
        target: str,
        command: str | None = None,
        *,
        source: str = "127.0.0.1",
    ) -> None:
        front = broker.services.front
        assert front is not None
        argv = [
            "ssh", "-F", "/dev/null", "-b", source,
            "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=keyboard-interactive",
            "-o", f"UserKnownHostsFile={front_known_hosts(broker, workdir)}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=INFO",
            "-p", str(front.port), f"{target}@127.0.0.1", *([command] if command else []),
        ]  # fmt: skip
        self._fd, secondary = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=secondary, stdout=secondary, stderr=secondary, preexec_fn=_own_terminal
        )
        os.close(secondary)
        self.output = b""
        self.url = ""
        self.code = ""

    def read_until(self, needle: bytes, timeout: float = 20) -> bytes:
        """Read until ``needle`` shows (or the client ends); returns everything read so far."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"ssh never printed {needle!r}; got {self.output[-600:]!r}"
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self._fd, 4096)
            except OSError:  # EIO: the client closed its terminal
                break
            if not chunk:
                break
            self.output += chunk
        return self.output

    def prompt(self) -> tuple[str, str]:
        """Wait for the keyboard-interactive prompt; returns (page address, code) as shown."""
        out = self.read_until(PROMPT)
        found = _SHOWN.search(out)
        assert PROMPT in out and found, out[-800:]
        self.url, self.code = found[1].decode(), found[2].decode()
        return self.url, self.code

    def press_enter(self) -> None:
        os.write(self._fd, b"\n")

    def refused(self, timeout: float = 20) -> bytes:
        """Wait for the client to give up; returns its output (it must have failed)."""
        out = self.read_until(b"Permission denied", timeout)
        assert self.proc.wait(timeout) != 0
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Approver:
    """A signed-in user at ``/ssh/approve``, posting the page's forms as a browser does."""

    def __init__(self, broker: RunningBroker, name: str) -> None:
        self.url = f"{broker.url}/ssh/approve"
        self.client = httpx2.Client(timeout=30)
        answer = web_login(self.client, broker.url, name, f"{name}-demo-pw")
        assert answer.status_code == 303, answer.text

    def type_code(self, code: str) -> httpx2.Response:
        page = self.client.get(self.url)
        assert page.status_code == 200, page.text
        csrf = form_values(page.text)["csrf"]
        return self.client.post(self.url, data={"csrf": csrf, "code": code})

    def decide(self, review: httpx2.Response, decision: str) -> httpx2.Response:
        values = form_values(review.text)
        return self.client.post(
            self.url, data={"csrf": values["csrf"], "ref": values["ref"], "decision": decision}
        )

    def approve(self, code: str) -> httpx2.Response:
        review = self.type_code(code)
        assert review.status_code == 200 and 'id="approve"' in review.text, review.text
        return self.decide(review, "approve")

    def close(self) -> None:
        self.client.close()
