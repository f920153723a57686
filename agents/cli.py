"""``conduit-agent``: join a broker, run the tunnels, and the local kill switch.

Commands::

    conduit-agent join --broker URL --token T [--config agent.toml | --state-dir DIR]
    conduit-agent run [--config agent.toml]     # default /etc/conduit-agent/agent.toml
    conduit-agent stop-all --config agent.toml   # kill switch: close every channel now
    conduit-agent resume --config agent.toml     # allow channels again

The kill switch is a signal to the running agent (SIGUSR1 engages it, SIGUSR2 releases it;
SIGTERM stops the agent), found through ``agent.pid`` in the state directory: the agent has no
listening socket of any kind. Exit codes: 0 ok, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.config import AgentConfig, ConfigError, load_config
from agents.enrollment import EnrollmentError, join, load_enrollment

VERSION = "0.2.0"
PID_FILE = "agent.pid"
# Where the config and identity live unless told otherwise (packaged installs).
DEFAULT_CONFIG = Path(os.environ.get("CONDUIT_AGENT_CONFIG", "/etc/conduit-agent/agent.toml"))
DEFAULT_STATE_DIR = Path("/var/lib/conduit-agent")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conduit-agent", description="Conduit zone agent")
    p.add_argument("--version", action="version", version=f"conduit-agent {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)
    j = sub.add_parser("join", help="enroll this host with a broker (once)")
    j.add_argument("--broker", required=True, help="broker URL, e.g. https://conduit.example")
    j.add_argument("--token", required=True, help="one-time join token (cjt1....)")
    j.add_argument("--config", type=Path, help=f"agent config (default {DEFAULT_CONFIG})")
    j.add_argument(
        "--state-dir", type=Path, help=f"key and certificate (default {DEFAULT_STATE_DIR})"
    )
    j.add_argument("--ca-file", type=Path, help="CA bundle to verify the broker's TLS")
    j.add_argument("--allow-http", action="store_true", help="allow plain http (lab only)")
    j.add_argument("--force", action="store_true", help="replace an existing enrollment")
    for name, text in (
        ("run", "keep the tunnels to the broker(s) up"),
        ("stop-all", "kill switch: close every channel now and refuse new ones"),
        ("resume", "release the kill switch"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="default: %(default)s")
        if name == "run":
            c.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "join":
            return _join(args)
        config = load_config(args.config)
        if args.command == "run":
            _lean_reexec()
            return _run(config, verbose=args.verbose)
        return _signal(config, signal.SIGUSR1 if args.command == "stop-all" else signal.SIGUSR2)
    except ConfigError as exc:
        print(f"conduit-agent: config: {exc}", file=sys.stderr)
        return 2
    except EnrollmentError as exc:
        print(f"conduit-agent: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # one line, as for every other failure (state dir, pid file...)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"conduit-agent: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def _join(args: argparse.Namespace) -> int:
    if args.state_dir is not None:
        state_dir = args.state_dir
    elif args.config is not None or DEFAULT_CONFIG.exists():
        state_dir = load_config(args.config or DEFAULT_CONFIG).state_dir
    else:
        state_dir = DEFAULT_STATE_DIR
    enrollment = join(
        args.broker,
        args.token,
        state_dir,
        hostname=socket.gethostname(),
        version=VERSION,
        ca_file=args.ca_file,
        allow_http=args.allow_http,
        force=args.force,
    )
    zone = f", zone {enrollment.zone}" if enrollment.zone else ""
    where = f"site {enrollment.site}{zone}"
    print(f"joined as agent {enrollment.agent_id} ({enrollment.name}) for {where}")
    print(f"broker gateway(s): {', '.join(enrollment.gateways)}; identity stored in {state_dir}")
    return 0


def _lean_reexec() -> None:
    """Re-run this process under ``python -OO`` (once), unless disabled.

    The agent is a long-running process on small edge boxes: without docstrings (asyncssh's
    are large) it holds about 2.5 MiB less, given bytecode compiled at that level (``make``
    warms it; see ``warm-agent-bytecode``). ``CONDUIT_AGENT_OPTIMIZE=0`` turns this off.
    """
    if sys.flags.optimize >= 2 or os.environ.get("CONDUIT_AGENT_OPTIMIZE") == "0":
        return
    argv = [sys.executable, "-OO", "-m", "agents", *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):  # if it cannot re-exec, run as is
        os.execv(sys.executable, argv)  # noqa: S606 - this interpreter, our own arguments


def _run(config: AgentConfig, *, verbose: bool) -> int:
    from agents.tunnel import AgentRuntime  # asyncssh import only where needed

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s conduit-agent %(levelname)s %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(
        logging.DEBUG if os.environ.get("CONDUIT_AGENT_DEBUG") else logging.WARNING
    )
    enrollment = load_enrollment(config.state_dir)
    runtime = AgentRuntime(config, enrollment, version=VERSION)
    pid_path = config.state_dir / PID_FILE

    async def main_async() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, runtime.stop)
        loop.add_signal_handler(signal.SIGINT, runtime.stop)
        loop.add_signal_handler(signal.SIGUSR1, runtime.engage_kill_switch)
        loop.add_signal_handler(signal.SIGUSR2, runtime.release_kill_switch)
        await runtime.run()

    pid_path.write_text(f"{os.getpid()}\n", encoding="utf-8")
    print(
        f"conduit-agent {VERSION}: agent {enrollment.agent_id}, "
        f"{len(config.endpoints)} endpoint(s), broker(s) {', '.join(runtime.brokers)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        asyncio.run(main_async())
    finally:
        with contextlib.suppress(OSError):
            pid_path.unlink()
    return 0


def _signal(config: AgentConfig, sig: signal.Signals) -> int:
    pid_path = config.state_dir / PID_FILE
    try:
        pid = int(pid_path.read_text(encoding="utf-8").strip())
        os.kill(pid, sig)
    except (OSError, ValueError) as exc:
        print(f"conduit-agent: no running agent found via {pid_path}: {exc}", file=sys.stderr)
        return 1
    what = "kill switch engaged" if sig == signal.SIGUSR1 else "kill switch released"
    print(f"{what} (agent pid {pid})")
    return 0
