"""The demo plant and the ``conduit demo`` runner (see :mod:`broker.cli.demo_cmd`)."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import Engine, update
from sqlmodel import col, select

from broker.app import create_app
from broker.dev.demo_plc import SimulatedPlc, start_simulated_plc
from broker.dev.devidp import DEFAULT_USERS_PATH, RunningIdP, start_dev_idp
from broker.dev.local_sshd import RunningSshd, SshdError, free_port, sshd_available, start_sshd
from broker.keys.ssh import SshKeys
from broker.runtime.errors import BrokerError
from broker.runtime.settings import load_settings
from broker.services import Services
from sessions import plant
from sessions.clock import Clock, SystemClock
from sessions.db import create_db_engine, migrate, session_scope
from sessions.errors import SessionsError
from sessions.models import AgentState, Asset, AssetEndpoint, Site
from sessions.plant import PlantDoc, load_yaml, parse

# The dev tools are composition roots: their waits read this clock.
_CLOCK = SystemClock()


def _now_s() -> float:
    return _CLOCK.now().timestamp()


DEMO_PLANT_PATH = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "plant.yaml"
DEMO_SITE = "Riverside Plant"
DEMO_AGENT_NAME = "demo-agent"
DEMO_AGENT_ZONE = "supervisory"
DEMO_UNMATCHED = ("opcua-gateway", 4841, "opcua")  # declared by the demo agent, no asset yet


def demo_plant(now: datetime) -> PlantDoc:
    """The demo plant, :data:`DEMO_PLANT_PATH` (relative contract times counted from ``now``)."""
    data, _ = load_yaml(DEMO_PLANT_PATH.read_text(encoding="utf-8"))
    return parse(data, now)


def seed(database_url: str) -> None:
    """Create the demo plant once (idempotent) in the database at ``database_url``."""
    engine = create_db_engine(database_url)
    migrate(engine)
    seed_plant(engine, SystemClock())
    engine.dispose()


def seed_plant(engine: Engine, clock: Clock) -> None:
    """Apply the demo plant file unless its site is already there (the first run only: later
    runs keep what the admin changed since, e.g. adopted endpoints)."""
    now = clock.now()
    doc = demo_plant(now)
    with session_scope(engine, write=True) as db:  # reads, then writes: take the lock first
        if db.exec(select(Site).where(Site.name == DEMO_SITE)).first() is not None:
            return
        plant.apply(db, plant.diff(db, doc), now)


class DemoAgent:
    """The demo's own ``conduit-agent`` subprocess (owner of the process: :meth:`stop`)."""

    def __init__(self, proc: subprocess.Popen[bytes], agent_id: str, name: str) -> None:
        self.proc, self.agent_id, self.name = proc, agent_id, name

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# (asset name, endpoint protocol) -> the port it really listens on in this run
Moved = dict[tuple[str, str], int]


def demo_endpoints(moved: Moved | None = None) -> list[tuple[str, int, str, str]]:
    """(name, port, protocol, matched asset or "") the demo agent declares on 127.0.0.1.

    One endpoint per distinct port of the demo plant's assets (assets sharing a port share it),
    plus :data:`DEMO_UNMATCHED`, which no asset uses, so the admin can try "adopt".
    ``moved`` gives the port an (asset, protocol) endpoint really listens on in this run (the
    simulated PLC, the demo sshd).
    """
    seen: dict[int, tuple[str, int, str, str]] = {}
    for asset in demo_plant(_CLOCK.now()).assets:
        for ep in asset.endpoints:
            port = (moved or {}).get((asset.name, ep.protocol), ep.port)
            seen.setdefault(port, (f"{ep.protocol}-{port}", port, ep.protocol, asset.name))
    return [*seen.values(), (*DEMO_UNMATCHED, "")]


def _agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agents", *args]


def _write_agent_config(directory: Path, moved: Moved) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"state_dir = {str(directory / 'state')!r}", "heartbeat_s = 5"]
    for name, port, protocol, _ in demo_endpoints(moved):
        lines += ["", "[[endpoint]]", f'name = "{name}"', 'host = "127.0.0.1"']
        lines += [f"port = {port}", f'protocol = "{protocol}"']
    path = directory / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _enrolled_agent(svc: Services, id_file: Path) -> str | None:
    """The demo agent enrolled by an earlier run, if it is still active."""
    try:
        agent_id = id_file.read_text(encoding="utf-8").strip()
        return agent_id if svc.agents.get(agent_id).state == AgentState.ACTIVE else None
    except (OSError, SessionsError):
        return None


def _move_endpoints(svc: Services, moved: Moved) -> None:
    """Give the plant's endpoints this run's real ports; each change is audited."""
    changed: list[tuple[str, str, int, int]] = []
    with session_scope(svc.engine, write=True) as db:
        for (asset_name, protocol), port in moved.items():
            rows = db.exec(
                select(AssetEndpoint)
                .join(Asset, col(Asset.id) == col(AssetEndpoint.asset_id))
                .where(col(Asset.name) == asset_name, col(AssetEndpoint.protocol) == protocol)
            ).all()
            for endpoint in rows:
                if endpoint.port != port:
                    changed.append((asset_name, endpoint.name, endpoint.port, port))
                    endpoint.port = port
                    db.add(endpoint)
    for asset_name, name, before, after in changed:
        svc.audit.append(
            "plant.asset.update",  # as `conduit plant apply` records it
            actor="system:demo",
            outcome="ok",
            subject=asset_name,
            details={
                "before": {"endpoints": {name: {"port": before}}},
                "after": {"endpoints": {name: {"port": after}}},
            },
        )
    svc.plant_changed()


def start_demo_agent(
    svc: Services, directory: Path, public_url: str, moved: Moved | None = None
) -> DemoAgent:
    """Enrol (once per demo directory) and start the demo agent; route the demo assets to it.

    The plant's endpoints in ``moved`` get this run's real ports first. A join token is made
    in-process, redeemed by the real ``conduit-agent join`` and never printed. Raises
    :class:`BrokerError` (code ``demo_agent``) if the join fails.
    """
    moved = moved or {}
    _move_endpoints(svc, moved)
    config = _write_agent_config(directory, moved)
    id_file = directory / "agent-id"
    agent_id = _enrolled_agent(svc, id_file)
    if agent_id is None:
        token, _ = svc.agents.create_token(
            actor="system:demo",
            site=DEMO_SITE,
            zone=DEMO_AGENT_ZONE,
            ttl=timedelta(minutes=5),
            name=DEMO_AGENT_NAME,
        )
        join = ("join", "--broker", public_url, "--token", str(token), "--config", str(config))
        done = subprocess.run(  # noqa: S603 - fixed argv: this interpreter + the agent module
            _agent_cmd(*join, "--force"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise BrokerError(
                f"demo agent: join failed: {done.stderr.strip()[:300]}", code="demo_agent"
            )
        agent_id = done.stdout.split()[3]  # "joined as agent <id> (...)"
        id_file.write_text(agent_id + "\n", encoding="utf-8")
    with session_scope(svc.engine, write=True) as db:
        db.execute(
            update(Asset)
            .where(col(Asset.name).in_([a.name for a in demo_plant(svc.clock.now()).assets]))
            .values(agent_id=agent_id)
        )
    log_file = (directory / "agent.log").open("ab")
    try:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter + the agent module
            _agent_cmd("run", "--config", str(config), "-v"),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    finally:
        log_file.close()  # the child holds its own descriptor
    return DemoAgent(proc, agent_id, DEMO_AGENT_NAME)


def _wait_connected(svc: Services, agent: DemoAgent, timeout: float = 15) -> bool:
    deadline = _now_s() + timeout
    while _now_s() < deadline and agent.proc.poll() is None:
        live = svc.gateway.live().get(agent.agent_id) if svc.gateway else None
        if live is not None and live.hello.is_set():
            return True
        time.sleep(0.1)
    return False


def _serve(server: uvicorn.Server) -> threading.Thread:
    thread = threading.Thread(target=server.run, name="broker", daemon=True)
    thread.start()
    deadline = _now_s() + 30
    while not server.started:
        if not thread.is_alive() or _now_s() > deadline:
            raise BrokerError("demo: the broker did not start", code="demo_broker")
        time.sleep(0.05)
    return thread


DEMO_SSH_ASSETS = ("hist-01", "scada-01")
DEMO_SSH_LOGINS = ("maint", "eng")  # the logins the demo plant's SSH endpoints allow


def start_demo_sshd(svc: Services, directory: Path) -> tuple[RunningSshd | None, str]:
    """Debian's sshd on a free loopback port for the demo's SSH assets, trusting the asset CA.

    Logins ``maint`` and ``eng`` (local users, created without a password if missing). sshd
    must switch to them, so this needs root; otherwise (or without openssh-server) returns
    ``None`` and the reason, and the demo runs without an SSH asset.
    """
    reason = sshd_available()
    if reason is not None:
        return None, f"no SSH server for {', '.join(DEMO_SSH_ASSETS)}: {reason}"
    ca = SshKeys.public(svc.ssh_keys.asset_ca)
    try:
        sshd = start_sshd(
            directory,
            user=DEMO_SSH_LOGINS[0],
            also_users=DEMO_SSH_LOGINS[1:],
            trusted_user_ca_keys=[ca],
            keep_host_key=True,  # the broker pinned it at first use: the same asset next run
        )
    except SshdError as exc:
        return None, f"no SSH server for {', '.join(DEMO_SSH_ASSETS)}: {exc}"
    line = (
        f"{' and '.join(DEMO_SSH_ASSETS)} are Debian's sshd on 127.0.0.1:{sshd.port} "
        f"(logins {' and '.join(DEMO_SSH_LOGINS)}, trusting the asset CA)"
    )
    return sshd, line


def _port(requested: int) -> int:
    """``0`` means any free loopback port (chosen now: the IdP needs the broker's URL)."""
    return requested or free_port()


def _idp_clients(workdir: Path, public_url: str) -> tuple[str, list[dict[str, Any]]]:
    secret_file = workdir / "client-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    client_secret = secret_file.read_text().strip()
    clients = [
        {
            "client_id": "conduit",
            "client_secret": client_secret,
            "redirect_uris": [f"{public_url}/auth/callback"],
            "post_logout_redirect_uris": [f"{public_url}/"],
        }
    ]
    return client_secret, clients


class _Running:
    """What one demo run started (stopped in reverse order by :meth:`stop`)."""

    def __init__(self) -> None:
        self.agent: DemoAgent | None = None
        self.sshd: RunningSshd | None = None
        self.plc: SimulatedPlc | None = None
        self.idp: RunningIdP | None = None

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.sshd is not None:
            self.sshd.stop()
        if self.plc is not None:
            self.plc.stop()
        if self.idp is not None:
            self.idp.stop()


def run(args: argparse.Namespace) -> int:
    """Run the dev IdP, the broker, the demo sshd, PLC and agent until Ctrl-C or SIGTERM.

    Ctrl-C (SIGINT) and SIGTERM both stop the broker's event loop on its own thread (so every
    policy evaluator is dropped on the thread that made it), then the rest; exit code 0.
    """
    workdir: Path = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = _port(args.port)
    public_url = f"http://127.0.0.1:{port}"
    client_secret, clients = _idp_clients(workdir, public_url)
    running = _Running()
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        running.idp = start_dev_idp(workdir / "idp", clients, port=args.idp_port or None)
        running.plc = start_simulated_plc()
        settings = load_settings(
            None,
            mode="dev",
            public_url=public_url,
            listen_port=port,
            database_url=f"sqlite:///{workdir / 'conduit.db'}",
            data_dir=workdir / "var",
            oidc={
                "issuer": running.idp.issuer,
                "client_id": "conduit",
                "client_secret": client_secret,
            },
        )
        seed(settings.database_url)
        logging.basicConfig(level=logging.WARNING)
        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                proxy_headers=False,  # as `conduit serve`: the broker reads X-Forwarded-For
                server_header=False,
            )
        )
        thread = _serve(server)  # uvicorn leaves signals alone outside the main thread
        lines = _start_plant(app.state.services, workdir, public_url, running)
        _banner(public_url, running.idp.issuer, lines)
        while thread.is_alive() and not stop.wait(0.5):
            pass
        server.should_exit = True
        thread.join(30)
    finally:
        running.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _start_plant(
    svc: Services, workdir: Path, public_url: str, running: _Running
) -> dict[str, str]:
    """The demo sshd and agent (the PLC is already up); the banner lines about them."""
    running.sshd, ssh_line = start_demo_sshd(svc, workdir / "sshd")
    moved: Moved = {}
    if running.plc is not None:
        moved[("plc-press-3", "modbus")] = running.plc.port
    if running.sshd is not None:
        moved.update({(name, "ssh"): running.sshd.port for name in DEMO_SSH_ASSETS})
    try:
        running.agent = start_demo_agent(svc, workdir / "agent", public_url, moved)
        online = _wait_connected(svc, running.agent)
        state = "connected" if online else f"not connected yet (see {workdir}/agent/agent.log)"
        unmatched = f"{DEMO_UNMATCHED[0]} on 127.0.0.1:{DEMO_UNMATCHED[1]}"
        agent_line = (
            f"{running.agent.name} ({running.agent.agent_id}), {state}; unmatched endpoint "
            f"to adopt: {unmatched}"
        )
    except BrokerError as exc:
        agent_line = f"not started: {exc.message}"
    plc_line = (
        f"plc-press-3 is a simulated Modbus PLC on 127.0.0.1:{running.plc.port} behind the agent"
        if running.plc is not None
        else "no simulated PLC (pymodbus is not installed)"
    )
    front = svc.front.port if svc.front is not None else None
    front_line = (
        f"front door on 127.0.0.1:{front}; after `conduit ssh-cert` and `conduit ssh-config "
        "--write`: ssh -F ~/.config/conduit/ssh/config maint@hist-01@conduit"
        if front is not None
        else "front door disabled"
    )
    return {"agent": agent_line, "plc": plc_line, "sshd": ssh_line, "front": front_line}


def _banner(public_url: str, issuer: str, lines: dict[str, str]) -> None:
    users = json.loads(DEFAULT_USERS_PATH.read_text())
    print("\nConduit demo is running.\n")
    print(f"  Broker:  {public_url}/")
    print(f"  IdP:     {issuer} (development IdP, demo users only)")
    print(f"  Agent:   {lines['agent']}")
    print(f"  Assets:  {lines['plc']}")
    print(f"           {lines['sshd']}")
    print(f"  SSH:     {lines['front']}")
    print()
    print("  Demo logins (username / password):")
    for u in users:
        extra = f"  one-time code {u['otp']}" if u.get("otp") else ""
        groups = ", ".join(u.get("groups", [])) or "no groups: signs in with no role"
        print(f"    {u['username']:<7} / {u['password']:<15} {u['name']} ({groups}){extra}")
    print("\n  Policy:  sign in as adam; Policy shows the active Rego bundle, What-if asks it")
    print("  Agents:  sign in as adam; Agents shows health, inventory, join tokens, adopt, revoke")
    print(f"  CLI:     conduit login --broker {public_url} --no-browser; conduit agents list")
    print("  OT:      as victor (MFA) request plc-press-3 (tune), approve as olga, then")
    print("           conduit forward plc-press-3 PORT --local-port 1502 and point a Modbus")
    print("           tool at 127.0.0.1:1502; adam/sam see the operations under Recordings")
    print("  Stop with Ctrl-C.\n", flush=True)
