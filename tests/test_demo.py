"""``conduit demo`` as a new user runs it: a subprocess on free ports, stopped with Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2

from tests.harness.broker import same_origin_api, web_login
from tests.harness.components import needs
from tests.harness.demo_proc import start_demo
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
