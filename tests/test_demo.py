"""``conduit demo`` as a new user runs it: a subprocess on free ports, stopped with Ctrl-C."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx2

from tests.harness.broker import same_origin_api, web_login
from tests.harness.components import needs
from tests.harness.demo_proc import start_demo
from tests.harness.sshd import start_sshd
from tests.harness.wait import TIMEOUT_S


@needs("sshd")
def test_ctrl_c_stops_the_demo_cleanly_after_policy_decisions(tmp_path: Path) -> None:
    """Ctrl-C after the policy engine decided on several threads: exit 0, no traceback (the
    embedded engine's per-thread evaluators are dropped on the threads that made them)."""
    demo = start_demo(tmp_path / "demo")
    try:
        with httpx2.Client(timeout=TIMEOUT_S) as client:
            web_login(client, demo.url, "adam", "adam-demo-pw")
            api = same_origin_api(client, demo.url)
            claims = {"sub": "x", "groups": ["conduit-vendors"], "amr": ["pwd", "mfa"]}
            for _ in range(3):
                answer = api.post(
                    f"{demo.url}/api/policy/whatif",
                    json={"claims": json.dumps(claims), "asset": "hist-01", "kind": "ssh"},
                )
                assert answer.status_code == 200, answer.text
            assert client.get(f"{demo.url}/admin/whatif").status_code == 200
    finally:
        code, output = demo.interrupt()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "unsendable" not in output, output
    assert "Conduit demo is running." in output


@needs("sshd")
def test_the_demo_sshd_keeps_its_host_key_across_runs(tmp_path: Path) -> None:
    """The broker pins an asset's host key at first use, so a restarted demo must present the
    same one (a fresh key would make every SSH session after a restart fail)."""
    keys = []
    for _ in range(2):
        with start_sshd(tmp_path / "sshd", user="maint", keep_host_key=True) as sshd:
            keys.append(sshd.host_public_key)
            scan = subprocess.run(
                ["ssh-keyscan", "-t", "ed25519", "-p", str(sshd.port), "127.0.0.1"],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
            assert sshd.host_public_key in scan.stdout, scan.stdout + scan.stderr
    assert keys[0] == keys[1]
