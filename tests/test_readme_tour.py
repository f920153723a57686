"""The README's "A short tour" (steps 1-11) against ``conduit demo``, as a new user walks it.

The README is the script: every command this test runs is asserted to be in the README's step
(after putting the demo's real URL and ports in place of 8080/PORT/1502), and step 9's shell
block is taken from the README and run as written with stock ``ssh`` and ``scp`` (HOME in a
temporary directory). Browser steps run in Chromium; every page visited is screenshotted into
``$CONDUIT_ARTIFACTS/readme-tour`` (default ``artifacts/readme-tour`` in the repository).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from pymodbus.client import ModbusTcpClient

from broker.dev.local_sshd import free_port
from tests.harness.browser import launch_browser_sync
from tests.harness.cli import REPO, clean_env
from tests.harness.components import needs
from tests.harness.demo_proc import RunningDemo, start_demo
from tests.harness.wait import wait_until

README = REPO / "README.md"
ARTIFACTS = Path(os.environ.get("CONDUIT_ARTIFACTS", REPO / "artifacts")) / "readme-tour"


def tour_step(number: int) -> str:
    """The text of step ``number`` of the README's tour."""
    text = README.read_text(encoding="utf-8")
    tour = text[text.index("## A short tour") :]
    found = re.search(rf"^{number}\. (.*?)(?=^\d+\. |^\S)", tour, re.S | re.M)
    assert found, f"README tour has no step {number}"
    return found.group(1)


def shell_block(step: str) -> list[str]:
    """The commands of the step's fenced ``sh`` block, one per line."""
    found = re.search(r"```sh\n(.*?)```", step, re.S)
    assert found, "the step has no ```sh block"
    return [line.strip() for line in found.group(1).splitlines() if line.strip()]


def assert_in_step(number: int, *commands: str) -> None:
    step = " ".join(tour_step(number).split())
    for command in commands:
        assert command in step, f"README step {number} does not say {command!r}"


class Tour:
    """The demo, a browser, per-user CLI homes and the screenshot counter."""

    def __init__(self, demo: RunningDemo, browser: Browser, root: Path) -> None:
        self.demo, self.browser, self.root = demo, browser, root
        self.shots = 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob("*.png"):
            old.unlink()

    # -- browser
    def sign_in(self, username: str) -> Page:
        page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(self.demo.url + "/")
        page.click("#signin-main")
        page.fill("#username", username)
        page.fill("#password", f"{username}-demo-pw")
        page.click("#login-submit")
        page.wait_for_url(self.demo.url + "/**")
        return page

    def visit(self, page: Page, path: str, name: str) -> str:
        page.goto(self.demo.url + path)
        return self.shot(page, name)

    def shot(self, page: Page, name: str) -> str:
        self.shots += 1
        page.screenshot(path=str(ARTIFACTS / f"{self.shots:02d}-{name}.png"), full_page=True)
        return page.content()

    # -- terminal
    def home(self, user: str) -> Path:
        home = self.root / user
        (home / "work").mkdir(parents=True, exist_ok=True)
        return home

    def env(self, user: str, **extra: str) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        env = clean_env(HOME=str(self.home(user)), PATH=path, **extra)  # `conduit` on PATH
        env.pop("XDG_CONFIG_HOME", None)
        return env

    def conduit(self, user: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "broker", *args],
            env=self.env(user),
            cwd=self.root,  # where `.demo/` is, as after `make demo`
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if ok:
            assert done.returncode == 0, f"conduit {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def login(self, user: str, otp: str | None = None) -> None:
        """``conduit login --broker URL`` with a stand-in browser that signs ``user`` in."""
        env = self.env(
            user,
            BROWSER=f"{sys.executable} -m tests.harness.cli_browser %s",
            CONDUIT_TEST_USER=user,
            CONDUIT_TEST_PASSWORD=f"{user}-demo-pw",
            **({"CONDUIT_TEST_OTP": otp} if otp else {}),
        )
        done = subprocess.run(
            [sys.executable, "-m", "broker", "login", "--broker", self.demo.url],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def login_no_browser(self, user: str) -> None:
        """``conduit login --no-browser``: the code it prints is typed in the browser."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "login", "--broker", self.demo.url, "--no-browser"],
            env=self.env(user),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(3)]
            url, code = lines[1].strip(), lines[2].split()[-1]
            page = self.sign_in(user)
            page.goto(url)
            page.fill("#user_code", code)
            page.click("#continue")
            assert code in self.shot(page, "step5-cli-code")
            page.click("#approve")
            self.shot(page, "step5-cli-allowed")
            page.close()
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, f"{lines}{out}{err}"

    def request_and_approve(self, user: str, *request: str) -> str:
        made = self.conduit(user, "request", *request).stdout
        request_id = re.search(r"Request (\S+) for", made)
        assert request_id, made
        self.conduit("olga", "approve", request_id.group(1))
        self.wait_active(user, request_id.group(1))
        return request_id.group(1)

    def wait_active(self, user: str, request_id: str) -> None:
        """Until the approved request's grant is active (the broker's tick activates it)."""

        def active() -> bool:
            rows = json.loads(self.conduit(user, "requests", "--json").stdout)
            return any(r["id"] == request_id and r["state"] == "active" for r in rows)

        wait_until(active, f"the grant of request {request_id} to turn active")

    def shell(self, user: str, line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", line],
            env=self.env(user),
            cwd=self.home(user) / "work",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[Tour]:
    demo = start_demo(tmp_path / ".demo")
    try:
        with launch_browser_sync() as browser:
            yield Tour(demo, browser, tmp_path)
    finally:
        code, output = demo.interrupt()
        assert code == 0 and "Traceback" not in output, output


@needs("sshd", "chromium")
@pytest.mark.timeout(600)  # the whole tour, with a fresh demo, on a shared machine
def test_readme_tour(tour: Tour) -> None:
    _browser_steps(tour)  # steps 1-4 and 8

    # Step 5: alice types the terminal's code in her browser; olga uses the loopback flow.
    assert_in_step(5, "conduit login --broker http://127.0.0.1:8080 --no-browser", "whoami")
    tour.login_no_browser("alice")
    tour.login("olga")
    assert "Alice Vendor" in tour.conduit("alice", "whoami").stdout

    # Step 6: offline, in the demo's directory, exactly as written (no server settings).
    assert_in_step(6, "`conduit audit verify`", "`conduit audit export --format jsonl`")
    verified = tour.conduit("sam", "audit", "verify")
    assert "audit chain intact" in verified.stdout, verified.stdout
    exported = tour.conduit("sam", "audit", "export", "--format", "jsonl")
    assert '"kind":"auth.login"' in exported.stdout  # the sign-ins of steps 1-5
    assert '"kind":"plant.asset.update"' in exported.stdout  # the demo's real ports, audited

    assert_in_step(7, 'conduit request hist-01 --for 1h --reason "..."', "conduit approve ID")
    tour.request_and_approve("alice", "hist-01", "--for", "1h", "--reason", "README tour")
    page = tour.sign_in("alice")
    wait_until(
        lambda: 'data-grant-state="active"' in tour.visit(page, "/vendor", "step7-my-access"),
        "alice's hist-01 grant to turn active",
    )
    page.close()

    # Step 9, exactly as the README's block says it.
    commands = shell_block(tour_step(9))
    assert any(c.startswith("ssh ") for c in commands) and any(
        c.startswith("scp ") for c in commands
    )
    marker = f"tour-{free_port()}"
    for line in commands:
        done = tour.shell("alice", line.replace("shift notes", marker))
        assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        if line.startswith("ssh "):
            assert done.stdout.strip() == socket.gethostname(), done.stdout + done.stderr
    assert Path("/home/maint/notes.txt").read_text().strip() == marker  # on the asset
    page = tour.sign_in("adam")
    tour.visit(page, "/sessions", "step9-sessions")
    recordings = tour.visit(page, "/recordings", "step9-recordings")
    assert "hist-01" in recordings
    _lockout(tour, page, next(c for c in commands if c.startswith("ssh ")))

    # Step 10: victor, MFA, tune on the PLC; a write outside the ranges gets exception 02.
    assert_in_step(
        10,
        "`victor` (MFA code 246810)",
        'conduit request plc-press-3 --class tune --reason "..."',
        "conduit forward plc-press-3 PORT --local-port 1502",
        "exception 02",
    )
    tour.login("victor", otp="246810")
    tour.request_and_approve("victor", "plc-press-3", "--class", "tune", "--reason", "tour")
    _modbus_through_forward(tour)
    tour.visit(page, "/recordings", "step10-recordings")
    page.close()

    assert_in_step(8, 'conduit agents token --site "Riverside Plant" --zone supervisory')
    token = tour.conduit(
        "adam", "agents", "token", "--site", "Riverside Plant", "--zone", "supervisory"
    )
    assert "conduit-agent join --broker" in token.stdout and "--token" in token.stdout
    assert_in_step(11, "conduit policy test")
    assert "PASS" in tour.conduit("adam", "policy", "test").stdout.upper()
    assert tour.shots >= 15


def _browser_steps(tour: Tour) -> None:
    """Steps 1-4 and 8: each role's pages in Chromium, the what-if question asked twice."""
    assert_in_step(1, "make demo", "`alice` / `alice-demo-pw`", "**Who am I**")
    page = tour.sign_in("alice")
    home = tour.shot(page, "step1-alice-home")
    assert "Alice Vendor" in home and "vendor" in home
    page.click("#whoami-link")
    assert "pwd" in tour.shot(page, "step1-whoami")
    page.close()

    assert_in_step(2, "`sam` / `sam-demo-pw`", "**Audit log**", "**Verify the hash chain**")
    page = tour.sign_in("sam")
    assert "login" in tour.visit(page, "/security/audit", "step2-audit")
    page.click("#verify-chain")
    assert "intact" in tour.shot(page, "step2-verify").lower()
    page.close()

    assert_in_step(3, "`adam` / `adam-demo-pw`", "**Assets**", "**Policy**", "**What-if**")
    page = tour.sign_in("adam")
    assets = tour.visit(page, "/admin/assets", "step3-assets")
    assert "Riverside Plant" in assets and "hist-01" in assets
    tour.visit(page, "/admin/policy", "step3-policy")
    tour.visit(page, "/admin/whatif", "step3-whatif")
    claims = '{"sub": "x", "groups": ["conduit-vendors"], "amr": ["pwd"], "vendor_org": "acme-automation"}'
    assert_in_step(3, claims, "`plc-press-3`, `tcp`, the PLC's port", "MFA missing")
    for amr, outcome in (('["pwd"]', "deny"), ('["pwd", "mfa"]', "allow")):
        page.fill("#claims", claims.replace('["pwd"]', amr))
        page.select_option("#asset", "plc-press-3")
        page.select_option("#kind", "tcp")
        page.fill("#port", str(tour.demo.plc_port))  # the demo moved the PLC to a free port
        page.check("#with_grant")
        page.check("#agent_online")
        page.click("#evaluate")
        assert page.inner_text("#decision-outcome") == outcome
        tour.shot(page, f"step3-whatif-{outcome}")

    assert_in_step(8, "**Agents**", "demo agent")
    assert "demo-agent" in tour.visit(page, "/admin/agents", "step8-agents")
    page.close()

    assert_in_step(4, "`nora` / `nora-demo-pw`", "no role")
    page = tour.sign_in("nora")
    assert "Nora Nobody" in tour.shot(page, "step4-nora")
    page.close()


def _lockout(tour: Tour, page: Page, ssh: str) -> None:
    """Step 7's lockout: the Grants switch asks first; on suspends alice, off resumes her."""
    assert_in_step(
        7,
        '`conduit lockout on --reason "..."`',
        '`conduit lockout off --reason "..."`',
        "asks you to confirm first",
    )
    tour.visit(page, "/admin/grants", "step7-grants")
    page.fill("#lockout-reason", "README tour drill")
    page.click("#lockout-submit")
    assert "Suspend all vendor access?" in tour.shot(page, "step7-lockout-confirm")
    page.click("#lockout-cancel")
    assert "Vendor access is enabled" in page.content()
    tour.login("adam")
    tour.conduit("adam", "lockout", "on", "--reason", "README tour drill")
    refused = tour.shell("alice", ssh)
    assert refused.returncode != 0 and "lockout" in refused.stderr, refused.stderr
    assert "DISABLED" in tour.visit(page, "/admin/grants", "step7-lockout-on")
    tour.conduit("adam", "lockout", "off", "--reason", "drill over")
    again = tour.shell("alice", ssh)
    assert again.returncode == 0 and again.stdout.strip() == socket.gethostname(), again.stderr


def _modbus_through_forward(tour: Tour) -> None:
    local = free_port()  # the README's 1502 may be taken on a shared machine
    plc = tour.demo.plc_port
    argv = ["forward", "plc-press-3", str(plc), "--local-port", str(local)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", *argv],
        env=tour.env("victor"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.communicate()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", local)) == 0

        wait_until(listening, "conduit forward listening")
        client = ModbusTcpClient("127.0.0.1", port=local, timeout=10, retries=0)
        assert client.connect()
        assert not client.read_holding_registers(0, count=4, device_id=1).isError()
        refused = client.write_register(200, 4242, device_id=1)  # outside 0-99
        assert refused.isError() and refused.exception_code == 2
        client.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    direct = ModbusTcpClient("127.0.0.1", port=plc, timeout=10, retries=0)
    assert direct.connect()
    assert direct.read_holding_registers(200, count=1, device_id=1).registers != [4242]
    direct.close()
