"""Benchmark: the broker holding N idle agent tunnels, and one agent's own footprint.

Part 1, broker (for each N in ``--sizes``, with a fresh broker each time):

- a temp SQLite database is migrated, a site and zone are created and N agent identities are
  **provisioned directly**: Ed25519 keys (asyncssh), host certificates signed by the broker's
  own agent CA (``broker.keys.agent.load_agent_keys`` on the broker's key dir) and ``active``
  Agent rows with the key pin. Joining 10,000 agents over HTTP would only measure join;
  the tunnels are the real thing;
- the broker runs as ``python -m broker serve`` (its own process, dev mode, the OIDC issuer
  points at an unused loopback port: sign-in is not exercised);
- a load generator of M = max(2, ceil(N / per-worker)) processes runs N simulated agents, each
  an unmodified ``agents.tunnel.AgentRuntime`` (``asyncssh.connect_reverse``, SSH server role
  with the certificate, control subsystem with ``hello`` and a heartbeat every 15 s, SSH
  keepalives every 15 s), dialling with at most ``--concurrency`` handshakes in flight;
- once the broker's database shows every agent's ``hello`` processed (inventory stored) and
  ``ss`` counts N established connections on the gateway port, the broker idles ``--settle-s``
  and then ``--idle-s`` seconds: RSS (``VmRSS`` in /proc) is sampled every 2 s and CPU is
  utime+stime from /proc/PID/stat over the window, as % of one core. The same is measured for
  the broker with 0 agents before the load generator starts.

Part 2, one real agent: an in-process broker (``tests.harness.broker.start_broker``) and an
echo TCP asset; ``conduit-agent join`` (real HTTP join), then ``conduit-agent run`` under
``/usr/bin/time -v``; idle RSS after ``--agent-idle-s``, then K channels (``--channels``,
cumulative) opened with ``AgentGateway.open_channel`` to the echo asset and kept busy (16 KiB
echoed per channel every 100 ms, after a 256 KiB burst): RSS delta / K.

    .venv/bin/python bench/agents_scale.py --sizes 100,1000,10000 [--write docs/benchmarks.md]
        [--idle-s 60] [--concurrency 25] [--per-worker 1000] [--channels 10,50]
        [--skip-agent] [--skip-broker] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from doc_section import write_section  # noqa: E402 (bench/ is the script's directory)

MARK_BEGIN = "<!-- bench:agents:begin -->"
MARK_END = "<!-- bench:agents:end -->"
TARGET_BROKER_KIB = 100
TARGET_AGENT_IDLE_MIB = 40
TARGET_CHANNEL_MIB = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Where simulated agents say they may connect (declared only: no channel is opened in part 1).
SIM_ENDPOINT = {"host": "127.0.0.1", "port": 15020, "protocol": "modbus", "name": "plc"}

_children: list[subprocess.Popen[Any]] = []


# --------------------------------------------------------------------------- process probes


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def proc_status_kib(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def system_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all CPUs (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


def established(port: int) -> int:
    """TCP connections in ESTABLISHED whose local port is ``port`` (the broker's side)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    proc: subprocess.Popen[Any] = subprocess.Popen(cmd, **kwargs)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    with contextlib.suppress(ValueError):
        _children.remove(proc)


@atexit.register
def _reap() -> None:
    for proc in list(_children):
        stop(proc, timeout=5)


@dataclass
class Window:
    """CPU and RSS of one process over an idle window."""

    cpu_pct: float
    rss_kib: int  # max VmRSS sampled in the window
    hwm_kib: int  # VmHWM (peak since start) at the end of the window
    anon_kib: int = 0  # RssAnon at the end (the rest of VmRSS is mostly shared library pages)
    machine_pct: float = 0.0  # whole machine busy over the window, % of one core (max 100 x CPUs)


def idle_window(pid: int, seconds: float, every: float = 2.0) -> Window:
    t0, c0, (m0, _) = time.monotonic(), cpu_seconds(pid), system_busy_s()
    samples = [proc_status_kib(pid)]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(every, max(0.0, seconds - (time.monotonic() - t0))))
        samples.append(proc_status_kib(pid))
    t1, c1, (m1, _) = time.monotonic(), cpu_seconds(pid), system_busy_s()
    return Window(
        100 * (c1 - c0) / (t1 - t0),
        max(samples),
        proc_status_kib(pid, "VmHWM"),
        proc_status_kib(pid, "RssAnon"),
        100 * (m1 - m0) / (t1 - t0),
    )


# --------------------------------------------------------------------------- load generator


def worker_main(spec_path: Path) -> int:
    """One load-generator process: many simulated agents, each a real ``AgentRuntime``."""
    import logging

    raise_nofile()
    logging.basicConfig(level=logging.WARNING, format="worker %(levelname)s %(name)s %(message)s")
    spec = json.loads(spec_path.read_text())
    asyncio.run(_worker(spec))
    return 0


async def _worker(spec: dict[str, Any]) -> None:
    import asyncssh

    from agents.cli import VERSION
    from agents.config import AgentConfig
    from agents.enrollment import Enrollment
    from agents.tunnel import AgentRuntime
    from agents.wire import Endpoint

    broker_key = asyncssh.import_public_key(spec["broker_key"])
    ca_key = asyncssh.import_public_key(spec["ca_key"])
    config = AgentConfig(
        state_dir=Path(spec["state_dir"]),
        endpoints=(Endpoint.parse(spec["endpoint"]),),
        brokers=(spec["broker"],),
    )
    runtimes = [
        AgentRuntime(
            config,
            Enrollment(
                agent_id=item["id"],
                name=item["id"],
                broker_url="http://127.0.0.1",
                gateways=(spec["broker"],),
                broker_key=broker_key,
                ca_key=ca_key,
                key=asyncssh.import_private_key(item["key"]),
                certificate=asyncssh.import_certificate(item["cert"]),
                site="bench",
                zone="bench",
            ),
            version=VERSION,
            hostname=f"sim-{i}",
        )
        for i, item in enumerate(spec["agents"])
    ]
    del spec["agents"]
    print(f"BASE {proc_status_kib(os.getpid())}", flush=True)
    gate = asyncio.Semaphore(spec["concurrency"])
    tasks: list[asyncio.Task[None]] = []
    up = failed = 0

    async def start(runtime: AgentRuntime) -> None:
        nonlocal up, failed
        async with gate:
            tasks.append(asyncio.create_task(runtime.run()))
            deadline = time.monotonic() + 120
            # Up = the broker opened the control channel and our hello went out.
            while not any(link.control is not None for link in runtime.links.values()):
                if time.monotonic() > deadline:
                    failed += 1
                    return
                await asyncio.sleep(0.05)
            up += 1
            if up % 100 == 0:
                print(f"UP {up}", flush=True)

    await asyncio.gather(*(start(r) for r in runtimes))
    print(f"DONE {up} {failed}", flush=True)
    await asyncio.Event().wait()  # until SIGTERM


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    base_kib: int = 0
    up: int = 0
    done: bool = False
    failed: int = 0
    lines: list[str] = field(default_factory=list)

    def follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, *rest = line.split()
            if word == "BASE":
                self.base_kib = int(rest[0])
            elif word == "UP":
                self.up = int(rest[0])
            elif word == "DONE":
                self.up, self.failed, self.done = int(rest[0]), int(rest[1]), True
            else:
                self.lines.append(line.rstrip())


# --------------------------------------------------------------------------- part 1: broker


@dataclass
class BrokerRun:
    n: int
    workers: int
    connected: int
    connect_s: float
    base: Window
    loaded: Window
    loadgen_kib_per_agent: float
    ss_after: int
    failed_handshakes: int = 0  # broker log: handshakes that failed (the agents retried)
    db_errors: int = 0  # broker log: gateway database writes that failed
    note: str = ""
    # CPU over the connect phase, % of one core: broker, load generators, whole machine
    connect_cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)
    log_stats: dict[str, int] = field(default_factory=dict)

    @property
    def kib_per_agent(self) -> float:
        return (self.loaded.rss_kib - self.base.rss_kib) / max(1, self.connected)


def provision(n: int, work: Path) -> tuple[str, list[dict[str, str]], str, str]:
    """Database with a site, zone and ``n`` active agents; returns (db url, agents, keys)."""
    import asyncssh

    from agents.wire import key_pin
    from broker.keys.agent import load_agent_keys
    from sessions.db import create_db_engine, migrate, session_scope
    from sessions.models import Agent, AgentState, Site, Zone

    url = f"sqlite:///{work / 'conduit.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    keys = load_agent_keys(work / "var" / "keys", 30 * 86400)
    agents: list[dict[str, str]] = []
    rows: list[Agent] = []
    with session_scope(engine, write=True) as db:
        site = Site(name="Bench Plant", timezone="Europe/Berlin")
        db.add(site)
        db.flush()
        zone = Zone(site_id=site.id, name="cell", purdue_level=1)
        db.add(zone)
        db.flush()
        for i in range(n):
            key = asyncssh.generate_private_key("ssh-ed25519")
            public = key.export_public_key().decode().strip()
            row = Agent(
                name=f"sim-{i:05d}",
                site_id=site.id,
                zone_id=zone.id,
                state=AgentState.ACTIVE,
                public_key=public,
                key_pin=key_pin(public),
            )
            cert, serial = keys.sign_agent(public, row.id)
            row.cert_serial = str(serial)
            rows.append(row)
            agents.append({"id": row.id, "key": key.export_private_key().decode(), "cert": cert})
        db.add_all(rows)
    engine.dispose()
    return url, agents, keys.gateway_public, keys.ca_public


def hellos_stored(db_file: Path) -> int:
    """Agents whose hello the broker processed (it stores their version with the inventory)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        (count,) = db.execute("SELECT count(*) FROM agents WHERE version IS NOT NULL").fetchone()
        return int(count)


def broker_log_stats(text: str) -> dict[str, int]:
    """What the gateway logged: failed handshakes, deferred authentications, database errors."""
    lines = text.splitlines()
    return {
        "handshake_failed": sum("conduit.gateway: agent handshake from" in x for x in lines),
        "handshake_timeout": sum(
            "conduit.gateway: agent handshake from" in x and "imed out" in x for x in lines
        ),
        "auth_deferred": sum("could not be authenticated now" in x for x in lines),
        "protocol_error": sum(": protocol error " in x for x in lines),
        "task_failed": sum("agent gateway task failed" in x for x in lines),
        "flush_failed": sum("writing agents' last-seen times failed" in x for x in lines),
        "housekeeping_failed": sum("agent gateway housekeeping failed" in x for x in lines),
        "db_locked": sum("database is locked" in x for x in lines),
        "errors_other": sum(
            (" ERROR " in x or "Traceback" in x) and "conduit.gateway" not in x for x in lines
        ),
    }


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"broker did not start ({url})")
        time.sleep(0.2)


def broker_run(n: int, args: argparse.Namespace) -> BrokerRun:
    work = Path(tempfile.mkdtemp(prefix=f"conduit-bench-agents-{n}-"))
    t0 = time.monotonic()
    db_url, agents, gateway_key, ca_key = provision(n, work)
    print(f"[N={n}] provisioned {n} identities in {time.monotonic() - t0:.1f} s ({work})")
    http_port, gw_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env.update(
        {
            "CONDUIT_MODE": "dev",
            "CONDUIT_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
            "CONDUIT_LISTEN_PORT": str(http_port),
            "CONDUIT_DATABASE_URL": db_url,
            "CONDUIT_DATA_DIR": str(work / "var"),
            # Settings require an issuer; nothing signs in during this bench, so none runs.
            "CONDUIT_OIDC__ISSUER": f"http://127.0.0.1:{free_port()}",
            "CONDUIT_AGENTS__LISTEN_HOST": "127.0.0.1",
            "CONDUIT_AGENTS__LISTEN_PORT": str(gw_port),
        }
    )
    log = (work / "broker.log").open("w")
    broker = spawn(
        [sys.executable, "-m", "broker", "serve"], env=env, cwd=REPO, stdout=log, stderr=log
    )
    workers: list[Worker] = []
    try:
        wait_http(f"http://127.0.0.1:{http_port}/healthz", broker)
        time.sleep(args.settle_s)
        base = idle_window(broker.pid, args.base_idle_s)
        print(f"[N={n}] broker alone: RSS {base.rss_kib / 1024:.1f} MiB, CPU {base.cpu_pct:.2f} %")
        m = max(2, math.ceil(n / args.per_worker))
        per_conc = max(1, args.concurrency // m)
        for index in range(m):
            spec = {
                "broker": f"127.0.0.1:{gw_port}",
                "broker_key": gateway_key,
                "ca_key": ca_key,
                "endpoint": SIM_ENDPOINT,
                "state_dir": str(work / f"worker{index}"),
                "concurrency": per_conc,
                "agents": agents[index::m],
            }
            path = work / f"worker{index}.json"
            path.write_text(json.dumps(spec))
            with (work / f"worker{index}.log").open("w") as err:
                proc = spawn(
                    [sys.executable, str(Path(__file__).resolve()), "_worker", str(path)],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            worker = Worker(proc)
            threading.Thread(target=worker.follow, daemon=True).start()
            workers.append(worker)
        del agents
        t_start = time.monotonic()
        cpu0, mach0 = cpu_seconds(broker.pid), system_busy_s()[0]
        deadline = t_start + args.connect_timeout_s + n / 10
        stored = live = 0
        last_print = 0.0
        while True:
            stored, live = hellos_stored(work / "conduit.db"), established(gw_port)
            done = all(w.done for w in workers)
            if stored >= n and live >= n:
                break
            settled = sum(w.up for w in workers) + sum(w.failed for w in workers) >= n
            if done and settled and stored == live:
                break  # some agents gave up: measure what is connected
            if time.monotonic() > deadline or any(w.proc.poll() is not None for w in workers):
                break
            if time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                print(f"[N={n}] {stored} hellos stored, {live} established")
            time.sleep(1)
        connect_s = time.monotonic() - t_start
        gen_cpu = 0.0
        for w in workers:
            with contextlib.suppress(OSError):
                gen_cpu += cpu_seconds(w.proc.pid)  # the workers started just before t_start
        connect_cpu = (
            100 * (cpu_seconds(broker.pid) - cpu0) / connect_s,
            100 * gen_cpu / connect_s,
            100 * (system_busy_s()[0] - mach0) / connect_s,
        )
        connected = min(stored, live)
        print(
            f"[N={n}] {connected} connected in {connect_s:.1f} s; CPU % of one core while "
            f"connecting: broker {connect_cpu[0]:.0f}, load gen {connect_cpu[1]:.0f}, "
            f"machine {connect_cpu[2]:.0f}; settling"
        )
        time.sleep(args.settle_s)
        loaded = idle_window(broker.pid, args.idle_s)
        ss_after = established(gw_port)
        gen_kib = sum(proc_status_kib(w.proc.pid) - w.base_kib for w in workers)
        note = ""
        if connected < n:
            failed = sum(w.failed for w in workers)
            note = f"only {connected} of {n} connected ({failed} gave up)"
        log.flush()
        text = (work / "broker.log").read_text(errors="replace")
        stats = broker_log_stats(text)
        print(f"[N={n}] broker log: {stats}")
        run = BrokerRun(
            n,
            m,
            connected,
            connect_s,
            base,
            loaded,
            gen_kib / max(1, connected),
            ss_after,
            failed_handshakes=stats["handshake_failed"],
            db_errors=stats["task_failed"] + stats["flush_failed"] + stats["auth_deferred"],
            note=note,
            connect_cpu=connect_cpu,
            log_stats=stats,
        )
        print(
            f"[N={n}] broker RSS {loaded.rss_kib / 1024:.1f} MiB "
            f"({run.kib_per_agent:.1f} KiB/agent), CPU {loaded.cpu_pct:.2f} %, "
            f"{ss_after} still established; machine busy {loaded.machine_pct:.0f} % of one core"
        )
        return run
    finally:
        for w in workers:
            stop(w.proc, timeout=10)
        stop(broker, timeout=30)
        log.close()
        if not args.keep:  # the worker specs hold private keys: do not leave them behind
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- part 2: agent


@dataclass
class AgentRun:
    idle: Window
    time_max_kib: int
    channels: list[tuple[int, int]]  # (K, max VmRSS with K busy channels)
    bytes_echoed: int


def agent_footprint(args: argparse.Namespace) -> AgentRun:
    from broker.dev.demo import seed
    from broker.runtime.settings import load_settings
    from tests.harness.agent import (
        EchoAsset,
        gateway,
        join,
        make_token,
        on_broker_loop,
        wait_connected,
        write_config,
    )
    from tests.harness.broker import start_broker
    from tests.harness.cli import clean_env

    work = Path(tempfile.mkdtemp(prefix="conduit-bench-agent-"))
    port = free_port()
    settings = load_settings(
        None,
        mode="dev",
        public_url=f"http://127.0.0.1:{port}",
        listen_port=port,
        database_url=f"sqlite:///{work / 'conduit.db'}",
        data_dir=work / "var",
        agents={"listen_port": 0},
        oidc={"issuer": f"http://127.0.0.1:{free_port()}"},
    )
    broker = start_broker(settings)
    echo = EchoAsset()
    agent: subprocess.Popen[Any] | None = None
    stderr_path = work / "agent.stderr"
    try:
        seed(settings.database_url)
        config = write_config(
            work / "agent",
            [("127.0.0.1", echo.port, "tcp")],
            heartbeat_s=15.0,  # the agent's defaults, not the tests' fast ones
            backoff_max_s=4.0,
        )
        agent_id = join(broker, make_token(broker), config)
        pid_file = work / "agent" / "state" / "agent.pid"
        with stderr_path.open("w") as err:
            agent = spawn(
                [
                    "/usr/bin/time",
                    "-v",
                    sys.executable,
                    "-m",
                    "agents",
                    "run",
                    "--config",
                    str(config),
                ],
                env=clean_env(),
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        wait_connected(broker, agent_id, timeout=20)
        pid = int(pid_file.read_text().strip())
        time.sleep(2)
        idle = idle_window(pid, args.agent_idle_s, every=1.0)
        print(f"[agent] idle RSS {idle.rss_kib / 1024:.1f} MiB, CPU {idle.cpu_pct:.2f} %")

        loop = gateway(broker).loop
        assert loop is not None
        channels: list[Any] = []
        pumps: list[asyncio.Future[int]] = []
        results: list[tuple[int, int]] = []
        block = os.urandom(16 * 1024)

        async def pump(ch: Any) -> int:
            moved, rounds = 0, 16  # a 256 KiB burst, then 16 KiB every 100 ms
            try:
                while True:
                    for _ in range(rounds):
                        ch.write(block)
                        await ch.drain()
                        got = 0
                        while got < len(block):
                            data = await ch.read(65536)
                            if not data:
                                return moved
                            got += len(data)
                        moved += got
                    rounds = 1
                    await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                return moved

        async def open_more(k: int) -> None:
            gw = gateway(broker)
            expires = broker.services.clock.now() + timedelta(hours=1)
            for _ in range(k):
                ch = await gw.open_channel(agent_id, "127.0.0.1", echo.port, expires_at=expires)
                channels.append(ch)
                pumps.append(asyncio.ensure_future(pump(ch)))

        for k in args.channels:
            on_broker_loop(broker, open_more(k - len(channels)), timeout=60)
            time.sleep(5)
            busy = idle_window(pid, 5, every=1.0)
            results.append((k, busy.rss_kib))
            print(f"[agent] {k} busy channels: RSS {busy.rss_kib / 1024:.1f} MiB")

        async def finish() -> int:
            for task in pumps:
                task.cancel()
            moved = 0
            for task in pumps:
                moved += await task
            for ch in channels:
                ch.close()
            return moved

        echoed = on_broker_loop(broker, finish(), timeout=30)
        os.kill(pid, signal.SIGTERM)  # the agent exits; /usr/bin/time then prints its report
        agent.wait(15)
        stop(agent)
        agent = None
        text = stderr_path.read_text()
        max_kib = 0
        for line in text.splitlines():
            if "Maximum resident set size" in line:
                max_kib = int(line.rsplit(":", 1)[1])
        return AgentRun(idle, max_kib, results, echoed)
    finally:
        if agent is not None:
            stop(agent, timeout=10)
        echo.close()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- report


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def report(args: argparse.Namespace, runs: list[BrokerRun], agent: AgentRun | None) -> str:
    runtime = f"{platform.python_implementation()} {platform.python_version()}"
    command = ".venv/bin/python bench/agents_scale.py"
    if runs:
        command += " --sizes " + ",".join(map(str, args.sizes))
    else:
        command += " --skip-broker"
    if agent is None:
        command += " --skip-agent"
    for flag, default in (
        ("idle_s", 60.0),
        ("base_idle_s", 15.0),
        ("settle_s", 10.0),
        ("concurrency", 25),
        ("per_worker", 1000),
        ("agent_idle_s", 20.0),
    ):
        value = getattr(args, flag)
        if value != default:
            command += f" --{flag.replace('_', '-')} {value:g}"
    if args.channels != [10, 50]:
        command += " --channels " + ",".join(map(str, args.channels))
    command += " --write docs/benchmarks.md"
    import asyncssh

    from agents.config import AgentConfig
    from broker.runtime.settings import AgentSettings

    gw, ag = AgentSettings(), AgentConfig
    lines = [
        MARK_BEGIN,
        "## Agents: idle tunnels and agent footprint",
        "",
        f"Command: `{command}`.",
        f"Machine: {os.cpu_count()} vCPU, {runtime}, asyncssh {asyncssh.__version__}; "
        f"open files hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}; everything "
        "on 127.0.0.1. The broker, the load generator and the agent share the 2 vCPUs.",
        "",
    ]
    if runs:
        lines += [
            "**Broker holding N idle agents.** Broker = `python -m broker serve` in its own "
            "process (dev mode, SQLite WAL, default `[agents]` settings: broker keepalive "
            f"{gw.keepalive_s:g} s, heartbeat flush {gw.heartbeat_flush_s:g} s, hello within "
            f"{gw.handshake_timeout_s:g} s). Agent identities are provisioned directly in "
            "the database (keys, CA-signed host certificates, `active` rows): joining over "
            "HTTP is not what this measures. Each simulated agent is an unmodified "
            "`agents.tunnel.AgentRuntime` (real protocol: `connect_reverse`, SSH server role "
            "with the certificate, control channel `hello` then a heartbeat every "
            f"{ag.heartbeat_s:g} s, SSH keepalive every {ag.keepalive_s:g} s, connect timeout "
            f"{ag.connect_timeout_s:g} s, retry backoff {ag.backoff_initial_s:g} to "
            f"{ag.backoff_max_s:g} s), up to {args.per_worker} per load-generator process, "
            f'at most {args.concurrency} handshakes in flight. "Connected" = the broker '
            "stored the agent's hello (inventory) and `ss` shows the TCP connection "
            "established; connect time runs from starting the load generator. "
            f"RSS = max `VmRSS` over the idle window ({args.idle_s:g} s, after "
            f"{args.settle_s:g} s of settling; 0 agents: {args.base_idle_s:g} s); "
            "CPU = utime+stime over the window, % of one core; KiB/agent = "
            "(RSS at N - RSS at 0) / N; slope = the same between consecutive sizes.",
            "",
            "| N agents | load-gen procs | connected | connect time s (agents/s) | "
            "broker RSS 0 → N MiB | peak RSS MiB | KiB / agent | slope KiB / agent | "
            "broker idle CPU % (0 → N) | load-gen KiB / agent |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        prev: BrokerRun | None = None
        for r in runs:
            slope = "-"
            if prev is not None and r.connected > prev.connected:
                grown = r.loaded.rss_kib - prev.loaded.rss_kib
                slope = f"{grown / (r.connected - prev.connected):.0f}"
            rate = r.connected / r.connect_s if r.connect_s else 0
            lines.append(
                f"| {r.n:,} | {r.workers} | {r.connected:,} | {r.connect_s:.1f} ({rate:.0f}) | "
                f"{mib(r.base.rss_kib)} → {mib(r.loaded.rss_kib)} | {mib(r.loaded.hwm_kib)} | "
                f"{r.kib_per_agent:.0f} | {slope} | {r.base.cpu_pct:.1f} → "
                f"{r.loaded.cpu_pct:.1f} | {r.loadgen_kib_per_agent:.0f} |"
            )
            prev = r
        lines += [
            "",
            "While connecting (CPU % of one core; the machine has "
            f"{100 * (os.cpu_count() or 1)} %) and what the broker logged over the whole run:",
            "",
            "| N agents | broker CPU % | load-gen CPU % | machine busy % (others = rest) | "
            "machine busy % in idle window | failed handshakes (timeouts) | "
            "authentications deferred (storage) | failed gateway DB tasks / flushes | "
            "`database is locked` lines |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            b, g, m = r.connect_cpu
            st = r.log_stats
            lines.append(
                f"| {r.n:,} | {b:.0f} | {g:.0f} | {m:.0f} ({max(0.0, m - b - g):.0f}) | "
                f"{r.loaded.machine_pct:.0f} | {st.get('handshake_failed', 0):,} "
                f"({st.get('handshake_timeout', 0):,}) | {st.get('auth_deferred', 0):,} | "
                f"{st.get('task_failed', 0):,} / {st.get('flush_failed', 0):,} | "
                f"{st.get('db_locked', 0):,} |"
            )
        notes = [f"N={r.n}: {r.note}" for r in runs if r.note]
        notes += [
            f"N={r.n}: {r.ss_after} connections still established after the window"
            for r in runs
            if r.ss_after < r.connected
        ]
        if notes:
            lines += ["", "Notes: " + "; ".join(notes) + "."]
        biggest = max(runs, key=lambda r: r.connected)
        met = biggest.connected >= 10_000 and biggest.kib_per_agent <= TARGET_BROKER_KIB
        lines += [
            "",
            f"Target (issue): 10,000 idle agents on one broker process at ≤ {TARGET_BROKER_KIB} "
            f"KiB each: {verdict(met)} (largest run: {biggest.connected:,} agents at "
            f"{biggest.kib_per_agent:.0f} KiB each).",
        ]
    if agent is not None:
        lines += [
            "",
            "**One agent.** The real `conduit-agent run` (joined with `conduit-agent join` "
            "over HTTP to an in-process broker, `tests.harness.broker.start_broker`), under "
            "`/usr/bin/time -v`; one TCP echo asset on loopback. Idle = "
            f"{args.agent_idle_s:g} s connected with no channel (heartbeat 15 s). Channels are "
            "opened with `AgentGateway.open_channel` to the echo asset and kept busy (a 256 "
            "KiB burst each, then 16 KiB echoed per channel every 100 ms); K is cumulative; "
            "RSS = max `VmRSS` over 5 s after 5 s of traffic.",
            "",
            "| measure | RSS MiB | per channel MiB |",
            "|---|---|---|",
            f"| idle agent (`VmRSS`; `RssAnon` {mib(agent.idle.anon_kib)} MiB; CPU "
            f"{agent.idle.cpu_pct:.2f} % of one core) | {mib(agent.idle.rss_kib)} | - |",
        ]
        worst = 0.0
        for k, kib in agent.channels:
            per = (kib - agent.idle.rss_kib) / k
            worst = max(worst, per)
            lines.append(f"| {k} busy channels | {mib(kib)} | {per / 1024:.3f} |")
        lines.append(
            f"| whole run, max RSS from `/usr/bin/time -v` | {mib(agent.time_max_kib)} | - |"
        )
        lines += [
            "",
            f"Targets (issue): agent ≤ {TARGET_AGENT_IDLE_MIB} MiB idle: "
            f"{verdict(agent.idle.rss_kib <= TARGET_AGENT_IDLE_MIB * 1024)} "
            f"({mib(agent.idle.rss_kib)} MiB); ≤ {TARGET_CHANNEL_MIB} MiB per channel: "
            f"{verdict(worst <= TARGET_CHANNEL_MIB * 1024)} ({worst / 1024:.3f} MiB worst). "
            f"{agent.bytes_echoed / 2**20:.0f} MiB echoed through the channels in all.",
        ]
    lines.append(MARK_END)
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        return worker_main(Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--sizes", type=ints, default=[100, 1000, 10_000])
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--base-idle-s", type=float, default=15.0)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--connect-timeout-s", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--per-worker", type=int, default=1000)
    parser.add_argument("--channels", type=ints, default=[10, 50])
    parser.add_argument("--agent-idle-s", type=float, default=20.0)
    parser.add_argument("--skip-agent", action="store_true")
    parser.add_argument("--skip-broker", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep temp dirs (logs, databases)")
    parser.add_argument("--write", type=Path, help="insert/replace the section in this file")
    args = parser.parse_args()
    hard = raise_nofile()
    need = max(args.sizes, default=0) + 1000
    if not args.skip_broker and hard < need:
        print(f"warning: open files hard limit {hard} < {need}: the largest size may not fit")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = [] if args.skip_broker else [broker_run(n, args) for n in args.sizes]
    agent = None if args.skip_agent else agent_footprint(args)
    section = report(args, runs, agent)
    print(section)
    if args.write:
        write_section(args.write, section, MARK_BEGIN, MARK_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
