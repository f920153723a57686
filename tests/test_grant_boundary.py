"""The grant is the boundary: each attack from the adversarial review, replayed through the
public surface (HTTP API, stock ssh, a Modbus client) with grants made through request →
policy → approval, and checked from the far side (the PLC's registers, sshd's log).

Plant: ``lab-ssh`` (Purdue 3, a real sshd) and ``plc-lab`` (a real pymodbus PLC), both behind
one real agent; alice is the vendor, olga the approver.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException
from sqlmodel import select

from sessions.db import session_scope
from sessions.models import Agent, Asset, AssetEndpoint, MaintenanceSession
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.cli import cli_env, run_conduit
from tests.harness.components import needs
from tests.harness.plc import PlcServer
from tests.harness.ports import free_port
from tests.harness.ssh_session import PLC_SETTINGS, SshRig
from tests.harness.wait import wait_until

pytestmark = needs("sshd")


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, plc: PlcServer) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", plc.port, "modbus")])
    rig.add_asset("plc-lab", plc.port, "modbus", settings=PLC_SETTINGS)
    rig.vendor("alice")
    yield rig
    rig.close()


def _forward(rig: SshRig, target: str, dest: str) -> tuple[subprocess.Popen[str], int]:
    """``ssh -N -L LOCAL:DEST forward@TARGET@broker``; returns once ssh listens (or exits)."""
    local = free_port()
    proc = subprocess.Popen(
        [*rig.ssh_argv("alice", "-N", "-o", "ExitOnForwardFailure=no",
                       "-L", f"127.0.0.1:{local}:{dest}", login="forward", asset=target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def listening() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        out = subprocess.run(
            ["ss", "-ltnH", f"( sport = :{local} )"], capture_output=True, text=True, check=True
        )
        return bool(out.stdout.strip())

    wait_until(listening, "ssh -L to listen")
    return proc, local


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    return proc.communicate(5)[1]


def _write(port: int, address: int, value: int) -> Any:
    """One FC6 write through a fresh connection; the response, or the exception raised."""
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
    try:
        if not client.connect():
            return ConnectionError("no connection")
        return client.write_register(address, value, device_id=1)
    except (ModbusException, OSError) as exc:  # the broker refused or cut the connection
        return exc
    finally:
        client.close()


def _refused_reasons(rig: SshRig, kind: str = "session.denied") -> str:
    return " | ".join(
        " ".join(e["details"].get("reasons", [])) for e in audit_events(rig.broker, kind)
    )


# --------------------------------------------------------------------------- 1. ports


def test_a_vendor_chosen_port_list_cannot_widen_a_grant_to_another_asset(
    rig: SshRig, plc: PlcServer
) -> None:
    """The review's attack: a request on the SSH asset naming the PLC's port, then a forward
    to the PLC through the SSH asset's grant. Both are refused; no write lands on the PLC."""
    sshd_port = rig.sshd.port
    widened = rig.request(ports=[sshd_port, plc.port, 5900, 4840])
    assert widened.status_code == 400, widened.text
    message = widened.json()["message"]
    stray = ", ".join(map(str, sorted([plc.port, 4840, 5900])))
    assert f"port(s) {stray} are not declared endpoints of lab-ssh" in message
    assert f"declared: ssh 127.0.0.1:{sshd_port} (ssh)" in message
    [rejected] = [e for e in audit_events(rig.broker, "access.request") if e["outcome"] != "ok"]
    assert rejected["outcome"] == "rejected" and rejected["subject"] == "lab-ssh"

    # A legitimate grant on lab-ssh: approvers see exactly what it reaches.
    made = rig.request()
    assert made.status_code == 201, made.text
    assert made.json()["ports"] == [sshd_port] and made.json()["login"] == rig.sshd.user
    assert [e["protocol"] for e in made.json()["endpoints"]] == ["ssh"]
    queue = httpx2.get(
        f"{rig.broker.url}/api/requests",
        params={"state": "pending"},
        headers={"Authorization": f"Bearer {rig.sign_in('olga')}"},
    ).json()
    [seen] = [r for r in queue if r["id"] == made.json()["id"]]
    assert seen["endpoints"] == [
        {"name": "ssh", "host": "127.0.0.1", "port": sshd_port, "protocol": "ssh"}
    ]
    rig.approve(made.json()["id"], "olga")

    # The forward through lab-ssh's grant to the PLC's host:port is refused at the broker.
    proc, local = _forward(rig, "lab-ssh", f"127.0.0.1:{plc.port}")
    try:
        answer = _write(local, 150, 4242)
        assert not hasattr(answer, "registers") or answer.isError()
        wait_until(
            lambda: (
                f"127.0.0.1:{plc.port} is not a declared endpoint of lab-ssh"
                in _refused_reasons(rig)
            ),
            "the refusal to be audited",
        )
    finally:
        err = _stop(proc)
    assert "administratively prohibited" in err
    assert plc.holding(150) == [7]  # the PLC's own registers: nothing landed


def test_a_host_port_another_asset_declares_is_refused_even_when_declared_twice(
    rig: SshRig, plc: PlcServer
) -> None:
    """An admin mistake declares the PLC's host:port on the SSH asset too: the broker still
    refuses a forward to a target that belongs to another asset."""
    with session_scope(rig.broker.services.engine, write=True) as db:
        asset = db.exec(select(Asset).where(Asset.name == "lab-ssh")).one()
        db.add(
            AssetEndpoint(
                asset_id=asset.id, name="oops", host="127.0.0.1", port=plc.port, protocol="tcp"
            )
        )
    rig.broker.refresh_policy_data()
    rig.grant(ports=[rig.sshd.port, plc.port])
    proc, local = _forward(rig, "lab-ssh", f"localhost:{plc.port}")
    try:
        _write(local, 150, 4242)
        wait_until(
            lambda: f"127.0.0.1:{plc.port} is also an endpoint of plc-lab" in _refused_reasons(rig),
            "the refusal to be audited",
        )
    finally:
        _stop(proc)
    assert plc.holding(150) == [7]


def test_modbus_is_inspected_by_declared_protocol_on_any_port(rig: SshRig, plc: PlcServer) -> None:
    """The PLC listens on a random port, not 502: a read_only grant still gets Modbus
    inspection (FC6 refused with exception 01), recorded as an operations log."""
    assert plc.port != 502
    rig.grant(asset="plc-lab")
    proc, local = _forward(rig, "plc-lab", f"localhost:{plc.port}")
    try:
        answer = _write(local, 10, 999)
        assert answer.isError() and answer.exception_code == 1  # ILLEGAL FUNCTION
    finally:
        _stop(proc)
    assert plc.holding(10) == [7]
    [started] = audit_events(rig.broker, "session.started")
    assert started["details"]["endpoint"] == f"modbus 127.0.0.1:{plc.port} (modbus)"
    root = rig.broker.services.settings.data_dir / "recordings"
    assert any(p.name.endswith("-ops") for p in root.iterdir())


def test_generic_tcp_only_where_policy_allows_it(rig: SshRig, plc: PlcServer) -> None:
    """An uninspected protocol at Purdue level 1 is refused by the default bundle (request and
    connection); at level 3 it is relayed as generic TCP (the OPC UA test shows that path)."""
    rig.add_asset("rtu-lab", plc.port, "dnp3", zone="press-line-control", host="localhost")
    refused = rig.request(asset="rtu-lab")
    assert refused.status_code == 403, refused.text
    assert (
        f"dnp3 at localhost:{plc.port} speaks dnp3, which is not inspected; generic TCP is not "
        "allowed for rtu-lab" in refused.json()["reasons"]
    )


# --------------------------------------------------------------------------- 1. logins


def test_the_ssh_login_is_part_of_the_grant(rig: SshRig) -> None:
    """A read_only grant names its login; it never becomes another login (e.g. root)."""
    user = rig.sshd.user
    rig.declare("lab-ssh", {"logins": {"read_only": [user], "program": ["root"]}})

    as_root = rig.request(login="root")
    assert as_root.status_code == 400
    assert f"lab-ssh allows {user} for read_only (not 'root')" in as_root.json()["message"]

    grant_id = rig.grant()  # the only read_only login, by default
    denied = rig.ssh("id -un", login="root")
    assert denied.returncode != 0
    assert f"grant {grant_id} does not cover this connection" in denied.stderr
    assert f"it allows login '{user}', not 'root'" in denied.stderr
    assert "root" not in rig.sshd.log()  # the asset never saw a root login attempt

    allowed = rig.ssh("id -un")
    assert allowed.returncode == 0 and allowed.stdout.strip() == user, allowed.stderr
    assert f"Accepted publickey for {user}" in rig.sshd.log()
    with session_scope(rig.broker.services.engine) as db:
        [row] = db.exec(select(MaintenanceSession)).all()
    assert (row.grant_id, row.login) == (grant_id, user)


# --------------------------------------------------------------------------- 1b. one grant


def test_each_session_runs_under_one_grant_and_ends_with_it(rig: SshRig, plc: PlcServer) -> None:
    """Two grants on one PLC (read_only, tune): a session picks one (the least privileged
    unless named), takes its obligations only from it, and ends when it is revoked; no write
    lands after the cut, checked on the PLC."""
    read_only = rig.grant(asset="plc-lab")
    tune = rig.grant(asset="plc-lab", operation_class="tune")
    dest = f"localhost:{plc.port}"
    default_proc, default_port = _forward(rig, "plc-lab", dest)
    ro_proc, ro_port = _forward(rig, f"plc-lab+{read_only[:8]}", dest)
    tune_proc, tune_port = _forward(rig, f"plc-lab+{tune[:8]}", dest)
    try:
        assert _write(default_port, 11, 1).exception_code == 1  # least privileged: read_only
        assert _write(ro_port, 11, 2).exception_code == 1
        assert not _write(tune_port, 11, 3).isError()
        assert plc.holding(11) == [3]
        live = {s.grant_id for s in rig.broker.services.live.list()}
        assert live == {read_only, tune}

        revoked = httpx2.post(
            f"{rig.broker.url}/api/grants/{tune}/revoke",
            json={"reason": "test: tune window closed"},
            headers={"Authorization": f"Bearer {rig.sign_in('olga')}"},
        )
        assert revoked.status_code == 200, revoked.text
        wait_until(
            lambda: tune not in {s.grant_id for s in rig.broker.services.live.list()},
            "the tune session to end",
        )
        for value in range(100, 110):  # the open forward keeps trying
            answer = _write(tune_port, 12, value)
            assert not hasattr(answer, "isError") or answer.isError()
        assert plc.holding(12) == [7]  # no write landed after the cut
        assert {s.grant_id for s in rig.broker.services.live.list()} == {read_only}
        ended = wait_until(
            lambda: [
                e
                for e in audit_events(rig.broker, "session.ended")
                if "grant revoked" in e["details"]["reason"]
            ],
            "the cut session's end in the audit log",
        )
        assert len(ended) == 1

        # A new connection naming the revoked grant is refused.
        refused_proc, refused_port = _forward(rig, f"plc-lab+{tune[:8]}", dest)
        assert _write(refused_port, 13, 1) is not None
        _stop(refused_proc)
        assert plc.holding(13) == [7]
    finally:
        for proc in (default_proc, ro_proc, tune_proc):
            _stop(proc)
    with session_scope(rig.broker.services.engine) as db:
        grants = {row.grant_id for row in db.exec(select(MaintenanceSession))}
    assert grants == {read_only, tune}


# --------------------------------------------------------------------------- 1c. tables


def test_register_ranges_do_not_open_coils(rig: SshRig, plc: PlcServer) -> None:
    """The review's case: tune may write holding registers 10-30; FC5 to coil 15 is refused
    (exception 02) and the coil stays off; FC6 to register 15 lands."""
    tune_10_30 = {"table": "holding_registers", "first": 10, "last": 30}
    rig.declare("plc-lab", {"write_ranges": {"tune": [tune_10_30]}})
    rig.grant(asset="plc-lab", operation_class="tune")
    proc, local = _forward(rig, "plc-lab", f"localhost:{plc.port}")
    client = ModbusTcpClient("127.0.0.1", port=local, timeout=3, retries=0)
    try:
        assert client.connect()
        coil = client.write_coil(15, True, device_id=1)
        assert coil.isError() and coil.exception_code == 2  # ILLEGAL DATA ADDRESS
        coils = client.write_coils(10, [True, True], device_id=1)
        assert coils.isError() and coils.exception_code == 2
        assert not client.write_register(15, 1515, device_id=1).isError()
        outside = client.write_register(31, 1, device_id=1)
        assert outside.isError() and outside.exception_code == 2
    finally:
        client.close()
        _stop(proc)
    assert plc.coils(10, 6) == [False] * 6
    assert plc.holding(15) == [1515] and plc.holding(31) == [7]
    wait_until(
        lambda: any(e["details"]["function"] == 5 for e in audit_events(rig.broker, "ot.refused")),
        "the refused coil write in the audit log",
    )


def test_a_write_range_changed_by_plant_apply_binds_the_next_modbus_session(
    rig: SshRig, plc: PlcServer, tmp_path: Path
) -> None:
    """Issue 14: an admin widens plc-lab's tune range with ``conduit plant apply`` (the dry
    run shows it first); the session open before keeps its obligations, the next one writes
    where it was refused before. Checked at the PLC's registers."""
    rig.declare("plc-lab", {"write_ranges": {"tune": [{"table": "holding_registers",
                                                       "first": 10, "last": 30}]}})  # fmt: skip
    rig.grant(asset="plc-lab", operation_class="tune")
    dest = f"localhost:{plc.port}"
    before_proc, before_port = _forward(rig, "plc-lab", dest)
    client = ModbusTcpClient("127.0.0.1", port=before_port, timeout=3, retries=0)
    try:
        assert client.connect()
        refused = client.write_register(40, 4040, device_id=1)
        assert refused.isError() and refused.exception_code == 2
        assert plc.holding(40) == [7]

        env = cli_env(rig.broker, tmp_path, "adam")
        exported = run_conduit("plant", "export", env=env)
        assert exported.returncode == 0, exported.stderr
        plant = yaml.safe_load(exported.stdout)
        [asset] = [a for a in plant["assets"] if a["name"] == "plc-lab"]
        asset["endpoints"][0]["settings"]["write_ranges"]["tune"][0]["last"] = 50
        plant_file = tmp_path / "plant.yaml"
        plant_file.write_text(yaml.safe_dump(plant, sort_keys=False))
        dry = run_conduit("plant", "apply", str(plant_file), "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        assert "~ asset plc-lab (changed)" in dry.stdout
        assert client.write_register(40, 4040, device_id=1).isError()  # a dry run changes nothing
        done = run_conduit("plant", "apply", str(plant_file), env=env)
        assert done.returncode == 0 and "1 changed" in done.stdout, done.stdout + done.stderr

        # The session open before the change keeps the obligations it started with.
        assert client.write_register(40, 4040, device_id=1).isError()
        assert plc.holding(40) == [7]
    finally:
        client.close()
        _stop(before_proc)

    after_proc, after_port = _forward(rig, "plc-lab", dest)
    try:
        assert not isinstance(_write(after_port, 40, 4040), Exception)
        assert plc.holding(40) == [4040]
        outside = _write(after_port, 51, 1)
        assert outside.isError() and outside.exception_code == 2
        assert plc.holding(51) == [7]
    finally:
        _stop(after_proc)


# --------------------------------------------------------------------------- 6. agents


def _route(rig: SshRig, asset_agent: str, endpoint_agent: str) -> None:
    """An admin routes plc-lab's endpoint through ``endpoint_agent``, the asset through
    ``asset_agent`` (its fallback)."""
    with session_scope(rig.broker.services.engine, write=True) as db:
        asset = db.exec(select(Asset).where(Asset.name == "plc-lab")).one()
        endpoint = db.exec(select(AssetEndpoint).where(AssetEndpoint.asset_id == asset.id)).one()
        asset.agent_id, endpoint.agent_id = asset_agent, endpoint_agent
        db.add_all([asset, endpoint])
    rig.broker.refresh_policy_data()


def test_an_endpoint_is_reached_through_its_own_agent_not_its_assets(
    rig: SshRig, plc: PlcServer
) -> None:
    """The endpoint's agent wins over the asset's: with it connected the write lands; with
    the endpoint on an agent that is not connected, the asset's live agent is not used."""
    with session_scope(rig.broker.services.engine, write=True) as db:
        site_id = db.exec(select(Asset).where(Asset.name == "plc-lab")).one().site_id
        offline = Agent(name="edge-offline", site_id=site_id, state="active")
        db.add(offline)
        db.flush()
        offline_id = offline.id
    _route(rig, asset_agent=offline_id, endpoint_agent=rig.agent_id)
    rig.grant(asset="plc-lab", operation_class="tune")
    proc, local = _forward(rig, "plc-lab", f"localhost:{plc.port}")
    try:
        answer = _write(local, 10, 1111)
        assert hasattr(answer, "isError") and not answer.isError(), answer
    finally:
        _stop(proc)
    assert plc.holding(10) == [1111]

    _route(rig, asset_agent=rig.agent_id, endpoint_agent=offline_id)
    proc, local = _forward(rig, "plc-lab", f"localhost:{plc.port}")
    try:
        answer = _write(local, 11, 2222)
        assert not hasattr(answer, "registers") or answer.isError()
        wait_until(
            lambda: (
                "agent for plc-lab is offline"
                in _refused_reasons(rig, "policy.decision") + _refused_reasons(rig)
            ),
            "the refusal to be audited",
        )
    finally:
        _stop(proc)
    assert plc.holding(11) == [7]  # the PLC's own registers: nothing landed
