"""Benchmark: SSH sessions through Conduit (broker + agent, recording on) vs direct vs ProxyJump.

Everything runs on 127.0.0.1, side by side in one run:

- **target sshd** (the asset): Debian sshd (``tests.harness.sshd``) trusting the broker's asset CA;
- **jump sshd**: a second sshd, same test user, for the OpenSSH ``ssh -J`` baseline;
- **Conduit**: the dev IdP (node) and the broker in *their own process* (this script with
  ``--serve``: ``tests.harness.broker.start_broker`` + ``tests.harness.ssh_session.SshRig``: a
  real ``conduit-agent`` process, the vendor ``alice`` signed in through the IdP, her SSH
  certificate from ``POST /api/ssh/cert``, an active grant). Stock OpenSSH reaches the front
  door as ``conduit-test@lab-ssh@127.0.0.1``; the broker logs in to the asset with a
  per-session certificate through the agent tunnel and records every exec channel (asciicast).

Measures (each path with the same stock ``ssh`` client and ``-F`` config):

- bulk throughput with ``hyperfine``: upload ``head -c N /dev/zero | ssh … 'cat > /dev/null'``
  and download ``ssh … 'head -c N /dev/zero' > /dev/null``, for each client cipher in
  ``--ciphers`` (``default`` = OpenSSH's own preference). MB/s = N / mean wall time, session
  set-up included; "net" subtracts the mean ``ssh … true`` time of that path;
- broker (and agent) CPU: utime+stime from /proc/PID/stat around the Conduit transfers,
  per GB moved (warm-up runs counted);
- interactive echo RTT: one ``ssh … cat`` per path; 1 byte written, the same byte read back,
  ``--echo-n`` times after a warm-up; p50/p99;
- new sessions per second: sequential ``ssh … true`` (hyperfine), ``--sessions`` stock ``ssh``
  processes with ``--concurrency`` in flight, and the same count from one asyncssh client
  process (connect, ``run('true')``, close): this shows what the broker itself sustains when
  OpenSSH client start-up is not in the way; broker CPU per session;
- recordings: every Conduit channel must leave a signed recording (manifest); the echo
  session's asciicast must hold exactly the bytes echoed.

    .venv/bin/python bench/ssh_sessions.py [--mib 512] [--runs 5] [--echo-n 2000]
        [--sessions 200] [--concurrency 16] [--ciphers default,aes128-gcm@openssh.com]
        [--write docs/benchmarks.md]

Needs root (sshd), hyperfine (Debian package), node + deploy/dev-idp npm packages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_rig import ChildProcess  # noqa: E402 (bench/ is the script's directory)
from doc_section import write_section  # noqa: E402

MARK_BEGIN = "<!-- bench:ssh_sessions:begin -->"
MARK_END = "<!-- bench:ssh_sessions:end -->"
TARGET_THROUGHPUT_X = 1.0  # x ProxyJump
TARGET_RTT_X = 1.5  # p50 ≤ 1.5 x ProxyJump
TARGET_SESSIONS_S = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATHS = ("direct", "proxyjump", "conduit")


# --------------------------------------------------------------------------- broker process


def serve(workdir: Path) -> None:
    """``--serve``: IdP + broker + SshRig in this process; JSON on stdout; stop at stdin EOF."""
    from bench_rig import conduit_rig

    with conduit_rig(workdir) as (settings, _broker, rig):
        key = rig.vendor("alice")
        rig.grant("alice", minutes=3 * 60)  # within every class's longest window
        info = {
            "broker_pid": os.getpid(),
            "agent_pid": rig.agent.proc.pid,
            "front_port": rig.front_port,
            "front_known_hosts": str(rig.known_hosts()),
            "vendor_key": str(key),
            "sshd_port": rig.sshd.port,
            "sshd_pid": rig.sshd.process.pid,
            "sshd_user": rig.sshd.user,
            "sshd_key": str(rig.sshd.client_key_path),
            "sshd_known_hosts": str(rig.sshd.known_hosts_path),
            "recordings": str(settings.data_dir / "recordings"),
        }
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until the parent closes our stdin


def BrokerProcess(workdir: Path) -> ChildProcess:
    """This script's ``--serve`` side: IdP, broker and rig in their own process."""
    return ChildProcess(__file__, ["--serve", str(workdir)], workdir / "broker.log")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --------------------------------------------------------------------------- the three paths


class Paths:
    """ssh argv prefixes (everything but the command) for direct, ProxyJump and Conduit."""

    def __init__(self, info: dict[str, Any], jump_port: int, jump_known_hosts: Path, work: Path):
        user, port = info["sshd_user"], info["sshd_port"]
        known = work / "known_hosts"
        known.write_text(
            Path(info["sshd_known_hosts"]).read_text()
            + jump_known_hosts.read_text()
            + Path(info["front_known_hosts"]).read_text()
        )
        common = [
            "IdentitiesOnly yes",
            "BatchMode yes",
            "StrictHostKeyChecking yes",
            f"UserKnownHostsFile {known}",
            "GlobalKnownHostsFile /dev/null",
            "UpdateHostKeys no",
            "ControlMaster no",
            "ControlPath none",
            "LogLevel ERROR",
        ]
        asset_cfg = work / "ssh_config_asset"
        asset_cfg.write_text("Host *\n" + "".join(f"  {c}\n" for c in common) + (
            f"  IdentityFile {info['sshd_key']}\n"
        ))  # fmt: skip
        vendor_cfg = work / "ssh_config_conduit"
        vendor_cfg.write_text("Host *\n" + "".join(f"  {c}\n" for c in common) + (
            f"  IdentityFile {info['vendor_key']}\n"
            f"  CertificateFile {info['vendor_key']}-cert.pub\n"
        ))  # fmt: skip
        self.config = {"asset": asset_cfg, "conduit": vendor_cfg}
        self.argv: dict[str, list[str]] = {
            "direct": ["ssh", "-F", str(asset_cfg), "-p", str(port), f"{user}@127.0.0.1"],
            "proxyjump": [
                "ssh", "-F", str(asset_cfg), "-J", f"{user}@127.0.0.1:{jump_port}",
                "-p", str(port), f"{user}@127.0.0.1",
            ],
            "conduit": [
                "ssh", "-F", str(vendor_cfg), "-p", str(info["front_port"]),
                f"{user}@lab-ssh@127.0.0.1",
            ],
        }  # fmt: skip

    def cmd(self, path: str, remote: str, cipher: str = "default") -> list[str]:
        argv = list(self.argv[path])
        if cipher != "default":
            argv[1:1] = ["-c", cipher]
        return [*argv, remote]

    def shell(self, path: str, remote: str, cipher: str = "default") -> str:
        return shlex.join(self.cmd(path, remote, cipher))


def negotiated_cipher(paths: Paths, path: str, cipher: str) -> str:
    """The cipher the (last hop of the) client negotiated, from ``ssh -v``."""
    argv = paths.cmd(path, "true", cipher)
    argv.insert(1, "-v")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    found = [
        line.split("cipher:")[1].split()[0]
        for line in done.stderr.splitlines()
        if "kex: client->server cipher:" in line
    ]
    if done.returncode != 0 or not found:
        raise SystemExit(f"{path}: ssh -v true failed:\n{done.stderr[-2000:]}")
    return found[-1]


# --------------------------------------------------------------------------- measurements


def hyperfine(commands: dict[str, str], *, runs: int, warmup: int, out: Path) -> dict[str, Any]:
    """Run hyperfine on ``name -> shell command``; returns name -> result (mean, stddev, …)."""
    argv = ["hyperfine", "--style", "basic", "--runs", str(runs), "--warmup", str(warmup)]
    argv += ["--export-json", str(out)]
    for name, command in commands.items():
        argv += ["-n", name, command]
    print("+", shlex.join(argv[:6]), "…", flush=True)
    subprocess.run(argv, check=True, stdout=sys.stderr)
    return {r["command"]: r for r in json.loads(out.read_text())["results"]}


def echo_rtt(argv: list[str], n: int, warm: int = 200) -> list[float]:
    """One persistent ``ssh … cat``; 1 byte out, the same byte back; RTT in ms."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None
    assert proc.stdout is not None
    w, r = proc.stdin.fileno(), proc.stdout.fileno()
    samples: list[float] = []
    try:
        for i in range(warm + n):
            t0 = time.perf_counter_ns()
            os.write(w, b"x")
            got = os.read(r, 1)
            t1 = time.perf_counter_ns()
            if got != b"x":
                raise SystemExit(f"echo failed: {got!r} from {argv}")
            if i >= warm:
                samples.append((t1 - t0) / 1e6)
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return samples


def openssh_burst(argv: list[str], count: int, concurrency: int) -> tuple[float, int]:
    """``count`` stock ``ssh … true`` processes, ``concurrency`` at a time: (seconds, failures)."""

    def one(_: int) -> int:
        return subprocess.run(argv, capture_output=True, timeout=120, check=False).returncode

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(one, range(count)))
    return time.perf_counter() - t0, sum(1 for c in codes if c != 0)


async def asyncssh_burst(
    info: dict[str, Any], jump_port: int, path: str, count: int, concurrency: int
) -> tuple[float, int]:
    """``count`` asyncssh sessions (connect, run ``true``, close), ``concurrency`` at once."""
    import asyncssh

    user = info["sshd_user"]
    known = asyncssh.read_known_hosts(
        [info["sshd_known_hosts"], info["front_known_hosts"], info["jump_known_hosts"]]
    )
    if path == "conduit":
        key = asyncssh.read_private_key(info["vendor_key"])
        cert = asyncssh.read_certificate(info["vendor_key"] + "-cert.pub")
        keys: Any = [(key, cert)]
        port, username = info["front_port"], f"{user}@lab-ssh"
    else:
        keys = [asyncssh.read_private_key(info["sshd_key"])]
        port, username = info["sshd_port"], user
    opts = {"known_hosts": known, "client_keys": keys, "config": None, "agent_path": None}
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with gate:
            try:
                if path == "proxyjump":
                    async with (
                        asyncssh.connect("127.0.0.1", jump_port, username=user, **opts) as jump,
                        asyncssh.connect(
                            "127.0.0.1", port, username=username, tunnel=jump, **opts
                        ) as conn,
                    ):
                        done = await conn.run("true")
                else:
                    async with asyncssh.connect(
                        "127.0.0.1", port, username=username, **opts
                    ) as conn:
                        done = await conn.run("true")
                if done.exit_status != 0:
                    failures += 1
            except (OSError, asyncssh.Error):
                failures += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - t0, failures


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- recordings


def check_recordings(root: Path, echoed: int) -> dict[str, Any]:
    """Every recording has a signed manifest; one asciicast holds exactly ``echoed`` x's."""
    from sessions.recording import assemble

    dirs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    manifests = sum(1 for d in dirs if (d / "manifest.json").exists())
    echo_ok = False
    for d in dirs:
        if not (d / "manifest.json").exists():
            continue
        size = sum(f.stat().st_size for f in d.iterdir())
        if size > 10 * echoed + 1_000_000:
            continue  # a bulk transfer: do not read it back
        lines = assemble(d).decode().splitlines()
        text = "".join(e[2] for e in map(json.loads, lines[1:]) if e[1] == "o")
        if text and set(text) == {"x"}:
            echo_ok = echo_ok or len(text) == echoed
    return {"recordings": len(dirs), "manifests": manifests, "echo_recording_exact": echo_ok}


def du(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=512, help="bulk transfer size, MiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--echo-n", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seq-runs", type=int, default=30, help="sequential `ssh true` runs")
    parser.add_argument("--ciphers", default="default,aes128-gcm@openssh.com")
    parser.add_argument("--keep-recordings", action="store_true")
    parser.add_argument("--write", type=Path, help="insert/replace the section in this file")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if shutil.which("hyperfine") is None:
        raise SystemExit("hyperfine not found: apt-get install hyperfine")

    from tests.harness.sshd import start_sshd

    work = Path(tempfile.mkdtemp(prefix="conduit-bench-ssh-"))
    os.chmod(work, 0o755)
    broker = BrokerProcess(work)
    jump = None
    try:
        info = broker.info
        jump = start_sshd(work / "jump", user=info["sshd_user"])
        jump.authorized_keys_path.write_text(Path(info["sshd_key"] + ".pub").read_text())
        info["jump_known_hosts"] = str(jump.known_hosts_path)
        paths = Paths(info, jump.port, jump.known_hosts_path, work)
        load_before = os.getloadavg()
        results = run_all(args, info, paths, jump.port, work)
        results["load"] = (load_before, os.getloadavg())
    finally:
        if jump is not None:
            jump.stop()
        broker.stop()
    recordings = Path(info["recordings"])
    if not args.keep_recordings:
        shutil.rmtree(work, ignore_errors=True)
    report = render(args, results)
    print(report)
    if args.write:
        write_section(args.write, report, MARK_BEGIN, MARK_END)
    if args.keep_recordings:
        print(f"recordings kept in {recordings}")
    return 0


def run_all(
    args: argparse.Namespace, info: dict[str, Any], paths: Paths, jump_port: int, work: Path
) -> dict[str, Any]:
    broker_pid, agent_pid = info["broker_pid"], info["agent_pid"]
    rec_root = Path(info["recordings"])
    nbytes = args.mib * 1024 * 1024
    ciphers = [c.strip() for c in args.ciphers.split(",") if c.strip()]
    res: dict[str, Any] = {"ciphers": {}, "throughput": {}, "cpu": {}, "mib": args.mib}

    for path in PATHS:  # every path works, with every cipher, before anything is timed
        for cipher in ciphers:
            res["ciphers"][(path, cipher)] = negotiated_cipher(paths, path, cipher)

    # session set-up time (sequential `ssh true`), also the "new sessions/s, sequential" row
    setup = hyperfine(
        {p: paths.shell(p, "true") for p in PATHS},
        runs=args.seq_runs,
        warmup=3,
        out=work / "hf_true.json",
    )
    res["setup_s"] = {p: setup[p]["mean"] for p in PATHS}

    runs_total = args.runs + args.warmup
    for cipher in ciphers:
        for direction in ("upload", "download"):
            commands = {}
            for p in PATHS:
                if direction == "upload":
                    remote = "cat > /dev/null"
                    commands[p] = f"head -c {nbytes} /dev/zero | {paths.shell(p, remote, cipher)}"
                else:
                    remote = f"head -c {nbytes} /dev/zero"
                    commands[p] = f"{paths.shell(p, remote, cipher)} > /dev/null"
            # conduit alone first so its CPU window holds only its own transfers
            rec_before = du(rec_root)
            b0, a0 = cpu_seconds(broker_pid), cpu_seconds(agent_pid)
            out = work / f"hf_{direction}_{cipher}_c.json"
            r = hyperfine(
                {"conduit": commands.pop("conduit")},
                runs=args.runs,
                warmup=args.warmup,
                out=out,
            )
            b1, a1 = cpu_seconds(broker_pid), cpu_seconds(agent_pid)
            moved_gb = nbytes * runs_total / 1e9
            res["cpu"][(direction, cipher)] = {
                "broker_s_per_gb": (b1 - b0) / moved_gb,
                "agent_s_per_gb": (a1 - a0) / moved_gb,
                "recorded_bytes_per_run": (du(rec_root) - rec_before) / runs_total,
            }
            out = work / f"hf_{direction}_{cipher}_b.json"
            r |= hyperfine(commands, runs=args.runs, warmup=args.warmup, out=out)
            for p in PATHS:
                mean = r[p]["mean"]
                res["throughput"][(direction, cipher, p)] = {
                    "mb_s": nbytes / mean / 1e6,
                    "net_mb_s": nbytes / max(mean - res["setup_s"][p], 1e-9) / 1e6,
                    "mean_s": mean,
                    "stddev_s": r[p]["stddev"] or 0.0,
                }
            if not args.keep_recordings:  # 512 MiB of NULs is ~3 GiB of asciicast per run
                for d in rec_root.iterdir():
                    if (d / "manifest.json").exists() and du(d) > 64 * 1024 * 1024:
                        shutil.rmtree(d, ignore_errors=True)
                        (rec_root.parent / "bench-bulk-recordings-removed").touch()

    res["rtt"] = {}
    for p in PATHS:
        print(f"+ echo RTT {p}", flush=True)
        res["rtt"][p] = echo_rtt(paths.cmd(p, "cat"), args.echo_n)

    res["sessions"] = {}
    for p in PATHS:
        print(f"+ {args.sessions} x openssh `true` ({args.concurrency} at a time) {p}", flush=True)
        b0 = cpu_seconds(broker_pid)
        took, failed = openssh_burst(paths.cmd(p, "true"), args.sessions, args.concurrency)
        res["sessions"][("openssh", p)] = (took, failed, cpu_seconds(broker_pid) - b0)
    for p in PATHS:
        print(f"+ {args.sessions} x asyncssh `true` ({args.concurrency} at a time) {p}", flush=True)
        b0 = cpu_seconds(broker_pid)
        took, failed = asyncio.run(
            asyncssh_burst(info, jump_port, p, args.sessions, args.concurrency)
        )
        res["sessions"][("asyncssh", p)] = (took, failed, cpu_seconds(broker_pid) - b0)

    time.sleep(2)  # let the last recordings close (flushed ≤ 1 s, manifests off-loop)
    res["recordings"] = check_recordings(rec_root, args.echo_n + 200)
    return res


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def cipher_label(asked: str, negotiated: str) -> str:
    """``default → X`` when the client used its own preference, else just the cipher."""
    return f"default → {negotiated}" if asked == "default" else negotiated


def render(args: argparse.Namespace, res: dict[str, Any]) -> str:
    ciphers = [c.strip() for c in args.ciphers.split(",") if c.strip()]
    runtime = f"{platform.python_implementation()} {platform.python_version()}"
    command = (
        f".venv/bin/python bench/ssh_sessions.py --mib {args.mib} --runs {args.runs} "
        f"--echo-n {args.echo_n} --sessions {args.sessions} --concurrency {args.concurrency} "
        f"--ciphers {args.ciphers}"
    )
    ssh_version = subprocess.run(
        ["ssh", "-V"], capture_output=True, text=True, check=False
    ).stderr.strip()
    lines = [
        MARK_BEGIN,
        "## SSH sessions: Conduit vs direct vs ProxyJump",
        "",
        f"Command: `{command}`.",
        f"Machine: {os.cpu_count()} vCPU (shared by client, broker, agent and both sshds), "
        f"{runtime}, {ssh_version}; everything on 127.0.0.1. Paths: **direct** = "
        "`ssh` → target sshd; **ProxyJump** = `ssh -J` through a second sshd; **Conduit** = "
        "`ssh LOGIN@ASSET@broker` → broker front door (asyncssh, its own process, "
        "recording on: every exec channel's output to a signed asciicast) → real "
        "`conduit-agent` process (reverse SSH tunnel) → target sshd, logged in with a "
        "per-session asset-CA certificate. Same stock OpenSSH client and keys config for all. "
        f"Load average (1/5/15 min) at start {fmt_load(res['load'][0])}, at end "
        f"{fmt_load(res['load'][1])}: anything above ~0.5 means other work shared the 2 vCPUs.",
        "",
        f"### Bulk throughput ({args.mib} MiB, hyperfine, {args.runs} runs + "
        f"{args.warmup} warm-up)",
        "",
        "Upload = `head -c N /dev/zero | ssh … 'cat > /dev/null'`; download = "
        "`ssh … 'head -c N /dev/zero' > /dev/null`. MB/s = N / mean wall time (10^6 bytes), "
        "session set-up included; *net* subtracts that path's mean `ssh … true` time. "
        "Cipher = what the client negotiated on its first hop (`default` = no `-c`, OpenSSH's "
        "own preference against what that server offers; the front door offers AES-GCM only, "
        "and the broker's legs to the agent and asset are pinned to AES-GCM).",
        "",
        "| direction | client cipher | path | MB/s | net MB/s | mean s ± sd | vs ProxyJump |",
        "|---|---|---|---|---|---|---|",
    ]
    for cipher in ciphers:
        for direction in ("upload", "download"):
            base = res["throughput"][(direction, cipher, "proxyjump")]["mb_s"]
            for p in PATHS:
                t = res["throughput"][(direction, cipher, p)]
                neg = cipher_label(cipher, res["ciphers"][(p, cipher)])
                lines.append(
                    f"| {direction} | {neg} | {p} | {t['mb_s']:.0f} | {t['net_mb_s']:.0f} | "
                    f"{t['mean_s']:.2f} ± {t['stddev_s']:.2f} | {t['mb_s'] / base:.2f}x |"
                )
    lines += [
        "",
        "Broker and agent CPU during the Conduit transfers (utime+stime of each process, "
        "/proc/PID/stat, warm-up runs included; GB = 10^9 bytes moved):",
        "",
        "| direction | client cipher | broker CPU s/GB | agent CPU s/GB | recorded per run |",
        "|---|---|---|---|---|",
    ]
    for cipher in ciphers:
        for direction in ("upload", "download"):
            c = res["cpu"][(direction, cipher)]
            neg = cipher_label(cipher, res["ciphers"][("conduit", cipher)])
            lines.append(
                f"| {direction} | {neg} | {c['broker_s_per_gb']:.2f} | "
                f"{c['agent_s_per_gb']:.2f} | {c['recorded_bytes_per_run'] / 1e6:,.0f} MB |"
            )
    lines += [
        "",
        f"### Interactive echo RTT (one `ssh … cat` per path, 1 byte each way, "
        f"{args.echo_n} round trips after 200 warm-up)",
        "",
        "| path | p50 ms | p99 ms | mean ms | vs ProxyJump p50 |",
        "|---|---|---|---|---|",
    ]
    rtt_base = pct(res["rtt"]["proxyjump"], 50)
    for p in PATHS:
        v = res["rtt"][p]
        lines.append(
            f"| {p} | {pct(v, 50):.3f} | {pct(v, 99):.3f} | {statistics.fmean(v):.3f} | "
            f"{pct(v, 50) / rtt_base:.2f}x |"
        )
    lines += [
        "",
        "### New sessions per second (each: connect, authenticate, exec `true`, close)",
        "",
        f"Sequential = hyperfine, {args.seq_runs} runs of `ssh … true`. Burst = "
        f"{args.sessions} sessions, {args.concurrency} in flight: stock `ssh` processes, or "
        "asyncssh clients in one Python process (the Conduit client uses the vendor "
        "certificate). Each Conduit session also opens its own SSH connection to the asset "
        "through the agent and a recording.",
        "",
        "| path | sequential `ssh` sessions/s | burst `ssh` sessions/s | "
        "burst asyncssh sessions/s | failures | broker CPU ms/session |",
        "|---|---|---|---|---|---|",
    ]
    for p in PATHS:
        o_took, o_fail, o_cpu = res["sessions"][("openssh", p)]
        a_took, a_fail, a_cpu = res["sessions"][("asyncssh", p)]
        cpu = (
            f"{o_cpu / args.sessions * 1000:.1f} / {a_cpu / args.sessions * 1000:.1f}"
            if p == "conduit"
            else "-"
        )
        lines.append(
            f"| {p} | {1 / res['setup_s'][p]:.1f} | {args.sessions / o_took:.1f} | "
            f"{args.sessions / a_took:.1f} | {o_fail} / {a_fail} | {cpu} |"
        )
    rec = res["recordings"]
    lines += [
        "",
        f"Recordings: {rec['recordings']} Conduit channels recorded, {rec['manifests']} with a "
        f"signed manifest; the echo session's asciicast holds exactly the echoed bytes: "
        f"{'yes' if rec['echo_recording_exact'] else 'NO'}.",
        "",
    ]
    # targets
    worst = min(
        res["throughput"][(d, c, "conduit")]["mb_s"]
        / res["throughput"][(d, c, "proxyjump")]["mb_s"]
        for d in ("upload", "download")
        for c in ciphers
    )
    best_default = {
        d: res["throughput"][(d, ciphers[0], "conduit")]["mb_s"]
        / res["throughput"][(d, ciphers[0], "proxyjump")]["mb_s"]
        for d in ("upload", "download")
    }
    rtt_x = pct(res["rtt"]["conduit"], 50) / rtt_base
    a_took = res["sessions"][("asyncssh", "conduit")][0]
    o_took = res["sessions"][("openssh", "conduit")][0]
    rate = max(args.sessions / a_took, args.sessions / o_took)

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**NOT met**"

    lines += [
        "Targets (issue):",
        "",
        f"- throughput ≥ {TARGET_THROUGHPUT_X}x ProxyJump: "
        f"{verdict(worst >= TARGET_THROUGHPUT_X)} (worst case {worst:.2f}x; "
        f"{ciphers[0]} client cipher: upload {best_default['upload']:.2f}x, "
        f"download {best_default['download']:.2f}x);",
        f"- echo RTT p50 ≤ {TARGET_RTT_X}x ProxyJump: {verdict(rtt_x <= TARGET_RTT_X)} "
        f"({rtt_x:.2f}x);",
        f"- ≥ {TARGET_SESSIONS_S} new sessions/s: {verdict(rate >= TARGET_SESSIONS_S)} "
        f"(best burst {rate:.1f}/s).",
        MARK_END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
