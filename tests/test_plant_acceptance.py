"""Issue 14's acceptance: a plant built from scratch in the browser works end to end.

adam (admin) builds a small plant in Chromium: a site and two zones on ``/admin/plant``, a join
token on ``/admin/agents`` (the real ``conduit-agent`` joins with it and declares a real sshd
and a real Modbus PLC), an SSH asset and a Modbus asset each with one endpoint reached through
that agent (the endpoint's own agent: neither asset has one), a third asset no contract covers,
and a vendor organisation mapped from victor's IdP ``vendor_org`` value with one contract per
covered asset. victor (a vendor with a one-time code: level 1-2 assets need MFA) signs in: the
request form offers exactly what the contracts cover (assets, endpoints, logins, classes) and
crafted requests outside them are refused with nothing filed. olga approves in the browser,
seeing the organisation and contract. victor's grant page shows the connect commands; he signs
the CLI in (``conduit login``, the browser step done by tests.harness.cli_browser) and the test
runs exactly those commands (``conduit ssh``, ``ssh``, ``conduit forward`` then a Modbus
client), checking the far side: the sshd's log and the PLC's own registers. Screenshots of every page go to the test's tmp dir (or
``$CONDUIT_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
from playwright.sync_api import Browser, Page, expect
from pymodbus.client import ModbusTcpClient
from sqlmodel import col, select

from broker.keys.ssh import SshKeys
from sessions.db import session_scope
from sessions.models import AccessRequest, Asset, AssetEndpoint
from tests.harness.agent import AgentProcess, agent_cmd, wait_connected, write_config
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.browser import screenshot
from tests.harness.cli import REPO, clean_env, run_conduit
from tests.harness.components import needs
from tests.harness.plc import PlcServer
from tests.harness.sshd import RunningSshd, start_sshd
from tests.harness.wait import wait_until
from tests.test_access_browser import _sign_in

pytestmark = [pytest.mark.browser, needs("sshd")]

SITE = "Lakeside Works"
AGENT = "edge-lakeside"
ORG = "acme-field-service"
WS, PLC, HMI = "ws-lakeside", "plc-lakeside", "hmi-lakeside"
TUNE_RANGE = '{"table": "holding_registers", "first": 0, "last": 99}'
VENDOR, PASSWORD, OTP = "victor", "victor-demo-pw", "246810"


@dataclass
class Stage:
    broker: RunningBroker
    sshd: RunningSshd
    plc: PlcServer
    tmp: Path

    @property
    def shots(self) -> Path:
        return self.tmp / "screenshots"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stage(
    request: pytest.FixtureRequest, make_broker: Callable[..., RunningBroker], tmp_path: Path
) -> Iterator[Stage]:
    database: dict[str, str] = {}
    if request.param == "postgres":
        server = request.getfixturevalue("pg_server")
        database["database_url"] = server.create_database(f"a_{uuid4().hex[:16]}")
    # A loaded machine must not turn a slow policy decision into a failed login here.
    broker = make_broker(policy={"budget_ms": 2000}, **database)
    ca = SshKeys.public(broker.services.ssh_keys.asset_ca)
    sshd = start_sshd(tmp_path / "sshd", trusted_user_ca_keys=[ca])
    # The plant network is 127.0.0.2, so the vendor's forward can listen on 127.0.0.1 with the
    # PLC's own port number (what `conduit forward` does for ports above 1023).
    plc = PlcServer(host="127.0.0.2")
    try:
        yield Stage(broker, sshd, plc, tmp_path)
    finally:
        plc.stop()
        sshd.stop()


# --------------------------------------------------------------------------- adam


def _sites_and_zones(page: Page) -> None:
    site = page.locator("#form-site")
    site.locator('[name="name"]').fill(SITE)
    site.locator('[name="timezone"]').fill("Europe/Vienna")
    site.locator("button").click()
    expect(page.locator("h3.site")).to_contain_text(SITE)
    for zone, level in (("cell-a", "2"), ("cell-b", "1")):
        form = page.locator("#form-zone")
        form.locator('[name="site"]').select_option(SITE)
        form.locator('[name="name"]').fill(zone)
        form.locator('[name="purdue_level"]').fill(level)
        form.locator("button").click()
        expect(page.locator("table.zones")).to_contain_text(zone)


def _enrol_agent(page: Page, stage: Stage) -> tuple[AgentProcess, str]:
    """adam makes a join token in the browser; the real agent joins with exactly the command
    the page shows, declaring the sshd and the PLC."""
    page.goto(stage.broker.url + "/admin/agents")
    page.select_option("#token-site", SITE)
    page.select_option("#token-zone", "cell-a")
    page.fill("#token-name", AGENT)
    page.click("#token-submit")
    command = shlex.split(page.locator("#join-command").inner_text())
    assert command[:2] == ["conduit-agent", "join"], command
    endpoints = [
        ("127.0.0.1", stage.sshd.port, "ssh"),
        (stage.plc.host, stage.plc.port, "modbus"),
    ]
    config = write_config(stage.tmp / "agent", endpoints)
    joined = agent_cmd(*command[1:], "--config", str(config))
    assert joined.returncode == 0, joined.stderr
    agent_id = joined.stdout.split()[3]
    agent = AgentProcess.start(config)
    wait_connected(stage.broker, agent_id)
    return agent, agent_id


def _asset(page: Page, name: str, zone: str, endpoint: dict[str, str]) -> None:
    form = page.locator("#form-asset")
    form.locator('[name="name"]').fill(name)
    form.locator('[name="site"]').select_option(SITE)
    form.locator('[name="zone"]').fill(zone)
    form.locator('[name="owner_group"]').fill("ot-approvers")
    form.locator("button").click()
    expect(page.locator(f"#asset-{name}")).to_contain_text("none declared")
    form = page.locator("#form-endpoint")
    form.locator('[name="asset"]').select_option(name)
    for key in ("name", "host", "port", "settings"):
        form.locator(f'[name="{key}"]').fill(endpoint.get(key, ""))
    form.locator('[name="protocol"]').select_option(endpoint["protocol"])
    form.locator('[name="agent"]').select_option(endpoint.get("agent", ""))
    form.locator("button").click()
    expect(page.locator(f"#asset-{name}")).to_contain_text(
        f"{endpoint['name']}: {endpoint['protocol']} {endpoint['host']}:{endpoint['port']}"
    )


def _assets(page: Page, stage: Stage) -> None:
    sshd, plc = stage.sshd, stage.plc
    # The agent reports its inventory after connecting: both endpoints await adoption.
    unmatched = page.locator("table.unmatched")
    wait_until(
        lambda: (
            page.goto(stage.broker.url + "/admin/plant")
            and f"{plc.host}:{plc.port}" in unmatched.inner_text()
            and f"127.0.0.1:{sshd.port}" in unmatched.inner_text()
        ),
        "the agent's declared endpoints on the plant page",
    )
    logins = f"logins: {{read_only: [{sshd.user}], program: [root]}}"
    ssh = {"name": "ssh", "protocol": "ssh", "host": "127.0.0.1", "port": str(sshd.port)}
    _asset(page, WS, "cell-a", {**ssh, "settings": logins, "agent": AGENT})
    modbus = {"name": "modbus", "protocol": "modbus", "host": plc.host, "port": str(plc.port)}
    ranges = f'{{"unit_ids": [1], "write_ranges": {{"tune": [{TUNE_RANGE}]}}}}'
    _asset(page, PLC, "cell-b", {**modbus, "settings": ranges, "agent": AGENT})
    vnc = {"name": "vnc", "protocol": "vnc", "host": "127.0.0.1", "port": "5900"}
    _asset(page, HMI, "cell-a", vnc)
    expect(page.locator(f"#asset-{WS}")).to_contain_text(f"declared by {AGENT}")
    expect(page.locator(f"#asset-{PLC}")).to_contain_text(f"declared by {AGENT}")
    expect(page.locator(f"#asset-{HMI}")).to_contain_text("no agent declares 127.0.0.1:5900")
    for name, agent in ((WS, AGENT), (PLC, AGENT), (HMI, "none")):  # the Agent column
        expect(page.locator(f"#asset-{name} td").nth(4)).to_have_text(agent)
    expect(unmatched).to_contain_text("none")


def _vendor_org(page: Page) -> None:
    org = page.locator("#form-vendor_org")
    org.locator('[name="slug"]').fill(ORG)
    org.locator('[name="name"]').fill("ACME Field Service")
    org.locator('[name="idp_values"]').fill("acme-automation")  # victor's vendor_org claim
    org.locator("button").click()
    for reference, asset, op in (("LW-SSH-1", WS, "read_only"), ("LW-PLC-1", PLC, "tune")):
        form = page.locator("#form-contract")
        form.locator('[name="org"]').select_option(ORG)
        form.locator('[name="reference"]').fill(reference)
        form.locator('[name="asset"]').select_option(asset)
        form.locator('[name="valid_from"]').fill("-1d")
        form.locator('[name="valid_until"]').fill("+30d")
        form.locator(f'[name="operation_classes"][value="{op}"]').check()
        form.locator("button").click()
        expect(page.locator("#plant-vendors")).to_contain_text(reference)


def _adam_builds_the_plant(chromium: Browser, stage: Stage) -> tuple[AgentProcess, str]:
    page = _sign_in(chromium, stage.broker, "adam", "adam-demo-pw")
    page.click('nav a[href="/admin/plant"]')
    expect(page.locator("h1")).to_have_text("Plant")
    _sites_and_zones(page)
    agent, agent_id = _enrol_agent(page, stage)
    try:
        page.goto(stage.broker.url + "/admin/plant")
        _assets(page, stage)
        _vendor_org(page)
        screenshot(page, stage.shots, "1-admin-plant")
    except BaseException:
        agent.stop()
        raise
    finally:
        page.context.close()
    return agent, agent_id


# --------------------------------------------------------------------------- vendor and olga


def _values(page: Page, selector: str) -> list[str]:
    return [o.get_attribute("value") or "" for o in page.locator(selector).all()]


def _vendor_signs_in(chromium: Browser, broker: RunningBroker) -> Page:
    """A fresh browser context signed in as the vendor, with the one-time code (MFA)."""
    page = chromium.new_context().new_page()
    page.goto(broker.url + "/")
    page.click("#signin-main")
    page.fill("#username", VENDOR)
    page.fill("#password", PASSWORD)
    page.fill("#otp", OTP)
    page.click("#login-submit")
    page.wait_for_url(broker.url + "/")
    return page


def _cli_login(stage: Stage) -> dict[str, str]:
    """``conduit login`` for the vendor, the browser step by tests.harness.cli_browser."""
    env = clean_env(
        XDG_CONFIG_HOME=str(stage.tmp / "vendor-laptop"),
        BROWSER=f"{sys.executable} -m tests.harness.cli_browser %s",
        CONDUIT_TEST_USER=VENDOR,
        CONDUIT_TEST_PASSWORD=PASSWORD,
        CONDUIT_TEST_OTP=OTP,
    )
    done = run_conduit("login", "--broker", stage.broker.url, "--timeout", "30", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def _form_offers_exactly_the_contracts(page: Page, stage: Stage) -> None:
    assert page.locator("#asset option").all_inner_texts() == [
        f"{PLC} (cell-b, level 1)",
        f"{WS} (cell-a, level 2)",
    ]
    ws, plc = f"#scope-{WS}", f"#scope-{PLC}"
    assert _values(page, f"{ws} select[name=operation_class] option") == ["read_only"]
    assert _values(page, f"{plc} select[name=operation_class] option") == ["tune"]
    assert _values(page, f"{ws} input[name=ports]") == [str(stage.sshd.port)]
    assert _values(page, f"{plc} input[name=ports]") == [str(stage.plc.port)]
    assert _values(page, f"{ws} select[name=login] option") == ["", stage.sshd.user]  # no root
    assert page.locator(f"{plc} select[name=login]").count() == 0
    expect(page.locator(ws)).to_contain_text("Contract: LW-SSH-1")
    expect(page.locator(plc)).to_contain_text("Contract: LW-PLC-1")


def _crafted_requests_are_refused(page: Page, stage: Stage) -> None:
    """POSTs the form would never send, with the vendor's own session and CSRF token."""
    base = {
        "csrf": page.locator("#request-form input[name=csrf]").get_attribute("value") or "",
        "starts_at": page.input_value("#starts_at"),
        "duration": "60",
        "reason": "outside the contract",
    }
    outside = [
        ({"asset": HMI, "operation_class": "read_only", "ports": "5900"}, 403, "refuses"),
        (
            {"asset": WS, "operation_class": "program", "ports": str(stage.sshd.port)}
            | {"login": "root"},
            403,
            "refuses",
        ),
        ({"asset": PLC, "operation_class": "tune", "ports": "5900"}, 400, "not declared"),
    ]
    for fields, status, message in outside:
        answer = page.request.post(
            stage.broker.url + "/vendor/requests", form=base | fields, max_redirects=0
        )
        assert answer.status == status, (fields, answer.status, answer.text()[:300])
        assert message in answer.text(), fields
    with session_scope(stage.broker.services.engine) as db:
        assert db.exec(select(AccessRequest)).all() == []  # nothing was filed


def _request(page: Page, asset: str, op: str, port: int, login: str | None) -> None:
    page.select_option("#asset", asset)
    scope = page.locator(f"#scope-{asset}")
    expect(scope).to_be_visible()
    scope.locator("select[name=operation_class]").select_option(op)
    scope.locator(f"input[name=ports][value='{port}']").check()
    if login:
        scope.locator("select[name=login]").select_option(login)
    page.fill("#reason", f"acceptance: {op} on {asset}")
    page.click("#request-submit")
    expect(page.locator("#access-message")).to_contain_text(f"request for {op} on {asset}")


def _olga_approves(chromium: Browser, stage: Stage) -> None:
    page = _sign_in(chromium, stage.broker, "olga", "olga-demo-pw")
    page.goto(stage.broker.url + "/approvals")
    rows = page.locator("tr[id^=pending-]")
    expect(rows).to_have_count(2)
    text = page.locator("main").inner_text()
    assert "ACME Field Service" in text and "LW-SSH-1" in text and "LW-PLC-1" in text
    screenshot(page, stage.shots, "3-approver-queue")
    for _ in range(2):
        page.locator("button[id^=approve-]").first.click()
        page.wait_for_load_state()
    expect(page.locator("tr[id^=pending-]")).to_have_count(0)
    page.context.close()


def _connect_lines(page: Page, stage: Stage) -> dict[str, list[str]]:
    """Once both grants are active: asset -> the connect commands its grant row shows."""
    active = page.locator("#my-grants tbody tr[data-grant-state=active]")
    wait_until(
        lambda: page.goto(stage.broker.url + "/vendor") and active.count() == 2,
        "both grants active",
    )
    screenshot(page, stage.shots, "4-vendor-grants")
    lines = {}
    for row in active.all():
        asset = row.locator("td").first.inner_text().strip()
        lines[asset] = row.locator("ul.connect code").all_inner_texts()
    expect(page.locator("#my-grants")).to_contain_text("writes to holding registers 0\u201399")
    return lines


# --------------------------------------------------------------------------- the commands


def _ssh_lines(stage: Stage, lines: list[str], env: dict[str, str]) -> None:
    conduit_ssh, stock_ssh = lines
    argv = shlex.split(conduit_ssh)
    assert argv[:2] == ["conduit", "ssh"], conduit_ssh
    done = run_conduit(*argv[1:], "--", "echo", "conduit-ssh-$((6*7))", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "conduit-ssh-42"  # the shell on the asset ran it
    wait_until(
        lambda: f"Accepted publickey for {stage.sshd.user}" in stage.sshd.log(),
        "the asset's sshd to log the certificate login",
    )
    # The stock ssh line, with the key, certificate and pinned host key `conduit ssh` keeps.
    argv = shlex.split(stock_ssh)
    assert argv[0] == "ssh", stock_ssh
    keys = Path(env["XDG_CONFIG_HOME"]) / "conduit" / "ssh"
    done = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(keys / "id_ed25519"),
         "-o", f"CertificateFile={keys / 'id_ed25519-cert.pub'}",
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
         *argv[1:], "echo stock-ssh-$((6*7))"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stock-ssh-42"


def _listening(proc: subprocess.Popen[str], port: int) -> bool:
    assert proc.poll() is None, proc.communicate()[1]
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return f"127.0.0.1:{port} " in out


def _forward_line(stage: Stage, line: str, env: dict[str, str]) -> None:
    argv = shlex.split(line)
    assert argv[:2] == ["conduit", "forward"], line
    local = int(argv[argv.index("--local-port") + 1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", *argv[1:]],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _listening(proc, local), "conduit forward to listen")
        client = ModbusTcpClient("127.0.0.1", port=local, timeout=10, retries=0)
        assert client.connect()
        try:
            assert not client.write_register(10, 4321, device_id=1).isError()
            outside = client.write_register(150, 42, device_id=1)
            assert outside.isError() and outside.exception_code == 2  # ILLEGAL DATA ADDRESS
            assert client.read_holding_registers(10, count=1, device_id=1).registers == [4321]
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert stage.plc.holding(10) == [4321]  # the PLC's own registers
    assert stage.plc.holding(150) == [7]  # unchanged: the write outside the range never arrived


# --------------------------------------------------------------------------- the test


def test_a_plant_built_in_the_browser_is_requested_approved_and_reached(
    chromium: Browser, stage: Stage
) -> None:
    agent, agent_id = _adam_builds_the_plant(chromium, stage)
    try:
        with session_scope(stage.broker.services.engine) as db:
            routes = db.exec(
                select(Asset.name, Asset.agent_id, AssetEndpoint.agent_id)
                .join(AssetEndpoint, col(AssetEndpoint.asset_id) == col(Asset.id))
                .where(col(Asset.name).in_([WS, PLC]))
            ).all()
        # Reached through the endpoint's own agent: the assets have none to fall back on.
        assert sorted(routes) == [(PLC, None, agent_id), (WS, None, agent_id)]

        vendor = _vendor_signs_in(chromium, stage.broker)
        vendor.goto(stage.broker.url + "/vendor")
        _form_offers_exactly_the_contracts(vendor, stage)
        screenshot(vendor, stage.shots, "2-vendor-form")
        _crafted_requests_are_refused(vendor, stage)
        vendor.goto(stage.broker.url + "/vendor")
        _request(vendor, WS, "read_only", stage.sshd.port, stage.sshd.user)
        _request(vendor, PLC, "tune", stage.plc.port, None)
        _olga_approves(chromium, stage)
        lines = _connect_lines(vendor, stage)
        vendor.context.close()

        prefixes = {a: lines[a][0].split("--grant ")[1].split()[0] for a in (WS, PLC)}
        front = stage.broker.services.front
        assert front is not None
        user, ws, plc = stage.sshd.user, prefixes[WS], prefixes[PLC]
        assert lines == {
            WS: [
                f"conduit ssh {user}@{WS} --grant {ws}",
                f"ssh -p {front.port} {user}@{WS}+{ws}@127.0.0.1",
            ],
            PLC: [
                f"conduit forward {PLC} {stage.plc.port} --grant {plc} "
                f"--local-port {stage.plc.port}"
            ],
        }
        env = _cli_login(stage)
        _ssh_lines(stage, lines[WS], env)
        _forward_line(stage, lines[PLC][0], env)
        refused = wait_until(
            lambda: audit_events(stage.broker, "ot.refused"), "the refused write's audit"
        )
        assert [e["details"]["function"] for e in refused] == [6]
    finally:
        agent.stop()
