"""A broker SIGKILLed mid-session: the recording verifies up to its last flush (≤ 1 s lost)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessions.recording import assemble, load_public_key, verify_recording
from tests.harness.broker import settings_overrides
from tests.harness.cli import REPO, clean_env
from tests.harness.components import needs

pytestmark = needs("sshd")


def test_recording_survives_a_broker_sigkill(
    make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    settings = make_settings()
    spec = {
        "settings": settings_overrides(settings),
        "workdir": str(tmp_path / "rig"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    broker = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.ssh_broker_proc", str(tmp_path / "spec.json")],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert broker.stdout is not None
    info: dict[str, Any] = {"children": []}
    try:
        info = json.loads(broker.stdout.readline())
        script = "for i in $(seq 1 200); do echo line-$i; sleep 0.1; done"
        vendor = subprocess.Popen(
            [*info["argv"], script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert vendor.stdout is not None
        received = []
        while len(received) < 30:  # about 3 s of output
            received.append(vendor.stdout.readline().strip())
        os.kill(broker.pid, signal.SIGKILL)  # the broker only: agent and sshd live on
        broker.wait(10)
        vendor.wait(10)
        vendor.stdout.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(broker.pid, signal.SIGKILL)
        for pid in info["children"]:  # the agent and sshd it left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        broker.stdout.close()

    [recording] = [p for p in Path(info["recordings"]).iterdir() if p.is_dir()]
    result = verify_recording(recording, load_public_key(Path(info["public_key"])))
    assert result.status == "incomplete", result.summary()
    text = assemble(recording).decode()
    last_recorded = max(int(n) for n in re.findall(r"line-(\d+)", text))
    last_seen = int(received[-1].removeprefix("line-"))
    # Output is flushed at least every second: at most ~1 s (10 lines) of it can be lost.
    assert last_recorded >= last_seen - 11, (last_recorded, last_seen)
