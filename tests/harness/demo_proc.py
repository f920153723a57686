"""``conduit demo`` as a subprocess on free ports, the way a new user runs it.

:func:`start_demo` starts it with ``--port 0 --idp-port 0`` (and the SSH front door and agent
gateway on free ports through their ``CONDUIT_*`` settings) in a fresh directory, waits for the
banner and parses the URLs and ports out of it. :meth:`RunningDemo.interrupt` sends Ctrl-C
(SIGINT) and returns the exit code and everything the demo printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.cli import REPO, clean_env
from tests.harness.wait import wait_until

DEMO_ARGV = (sys.executable, "-m", "broker", "demo")
START_TIMEOUT_S = 180.0  # first run: IdP keys, database, agent join, on a loaded machine


@dataclass
class RunningDemo:
    process: subprocess.Popen[str]
    workdir: Path
    url: str = ""
    front_port: int = 0
    sshd_port: int = 0
    plc_port: int = 0
    _lines: list[str] = field(default_factory=list)
    _reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, name="demo-output", daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    def interrupt(self, timeout: float = 60) -> tuple[int, str]:
        """Ctrl-C as a terminal sends it: SIGINT to the demo's whole process group (its agent
        and IdP too); waits for the exit and returns (exit code, all output)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout)
        self._reader.join(timeout)  # the rest of the output, up to EOF
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code, self.output

    def stop(self) -> None:
        """Ctrl-C, then kill if it does not stop; idempotent."""
        try:
            self.interrupt()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_demo(workdir: Path) -> RunningDemo:
    """Start ``conduit demo`` in ``workdir`` on free ports; return once its banner is out."""
    env = clean_env(CONDUIT_SSH__LISTEN_PORT="0", CONDUIT_AGENTS__LISTEN_PORT="0")
    process = subprocess.Popen(
        [*DEMO_ARGV, "--dir", str(workdir), "--port", "0", "--idp-port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    demo = RunningDemo(process, workdir)
    try:
        wait_until(
            lambda: "Stop with Ctrl-C" in demo.output or process.poll() is not None,
            "the demo's banner",
            timeout=START_TIMEOUT_S,
        )
        text = demo.output
        assert "Stop with Ctrl-C" in text, f"conduit demo exited {process.poll()}:\n{text}"
        demo.url = _find(r"Broker:\s+(http://\S+?)/?\n", text)
        demo.front_port = int(_find(r"front door on 127\.0\.0\.1:(\d+)", text))
        demo.plc_port = int(_find(r"simulated Modbus PLC on 127\.0\.0\.1:(\d+)", text))
        demo.sshd_port = int(_find(r"sshd on 127\.0\.0\.1:(\d+)", text))
    except BaseException:
        demo.stop()
        raise
    return demo


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the demo's banner:\n{text}"
    return found.group(1)
