"""``conduit ssh-cert|ssh|ssh-config|sessions``: SSH through the broker with stock OpenSSH.

Files, in ``$XDG_CONFIG_HOME/conduit/ssh/`` (default ``~/.config/conduit/ssh``, 0700):

* ``id_ed25519`` (0600) and ``id_ed25519.pub``: the vendor's key, made on first use;
* ``id_ed25519-cert.pub`` (0644): a short-lived certificate from the broker's user CA
  (``POST /api/ssh/cert``), never valid longer than the CLI's broker token;
* ``known_hosts``: the front door's host key from ``GET /api/ssh/info`` (so OpenSSH runs
  with ``StrictHostKeyChecking=yes``);
* ``conduit.json``: which broker, front-door host/port and expiry the certificate is for.

``conduit ssh TARGET`` takes ``LOGIN@ASSET`` or ``ASSET`` with ``--login LOGIN`` (or
``$CONDUIT_SSH_LOGIN``). There is deliberately no fallback to the local user name: logins on
OT assets rarely match the vendor's laptop account, and a wrong guess is a denied, audited
attempt. It renews the certificate when it is missing, for another broker or expires within a
minute, then *replaces itself* with ``ssh`` so the terminal, exit code and signals are OpenSSH's.

``conduit ssh-config`` prints an ``ssh_config`` snippet for ``ssh -F FILE LOGIN@ASSET@conduit``
(also ``scp``/``sftp``). OpenSSH cannot turn ``ssh root@plc-1.conduit`` into the user name
``root@plc-1`` (a user given on the command line always wins over ``User``), so the asset goes
into the user name and the host is the alias ``conduit``; OpenSSH splits at the *last* ``@``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.cli import credentials
from broker.cli.api_client import call, signed_in
from broker.cli.grant_check import check_forward
from broker.cli.ids import missing, resolve
from broker.runtime.errors import BrokerError
from sessions.clock import SystemClock

KEY_NAME = "id_ed25519"
RENEW_MARGIN_S = 60
ALIAS = "conduit"
LOGIN_ENV = "CONDUIT_SSH_LOGIN"


GRANT_HELP = (
    "the grant to work under (an id prefix from `conduit grants`); default: your grant on the "
    "asset that covers this login or port, the least privileged if several do"
)
_GRANT = re.compile(r"^[0-9a-fA-F-]{4,36}$")


def _with_grant(asset: str, grant: str | None) -> str:
    """``ASSET`` or ``ASSET+GRANT``: the front door binds the session to that one grant."""
    if grant is None:
        return asset
    if not _GRANT.match(grant):
        raise BrokerError(f"--grant {grant!r} is not a grant id (prefix)", code="bad_target")
    return f"{asset}+{grant.lower()}"


def add_parser(sub: Any) -> None:
    c = sub.add_parser("ssh-cert", help="get a short-lived SSH certificate for the front door")
    c.set_defaults(func=ssh_cert)
    s = sub.add_parser(
        "ssh",
        help="ssh to an asset through the broker (runs the stock ssh)",
        description="Examples: conduit ssh root@plc-1 | conduit ssh plc-1 --login root -- uptime",
    )
    s.add_argument("target", metavar="[LOGIN@]ASSET")
    s.add_argument("--grant", help=GRANT_HELP)
    _ssh_options(s)
    s.add_argument("rest", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="command to run")
    s.set_defaults(func=ssh)
    f = sub.add_parser(
        "forward",
        help="forward a local port to an asset's port (Modbus, OPC UA, VNC...) through the broker",
        description="Example: conduit forward plc-press-3 502 --local-port 1502, then point "
        "the engineering tool at 127.0.0.1:1502. Every connection is authorized against the "
        "active grant, inspected by its protocol (Modbus, S7, EtherNet/IP) and recorded as pcap.",
    )
    f.add_argument("asset")
    f.add_argument("port", type=int, help="the asset's port")
    f.add_argument("--local-port", type=int, default=0, help="default: the same as PORT")
    f.add_argument("--bind", default="127.0.0.1", help="local address (default %(default)s)")
    f.add_argument("--grant", help=GRANT_HELP)
    f.set_defaults(func=forward)
    ca = sub.add_parser(
        "asset-ca", help="the asset CA's public key and how an asset's sshd trusts it (admin)"
    )
    ca.set_defaults(func=asset_ca)
    g = sub.add_parser("ssh-config", help="print (or --write) an ssh_config snippet")
    g.add_argument("--write", action="store_true", help="write it to the ssh directory as 'config'")
    g.set_defaults(func=ssh_config)
    ls = sub.add_parser("sessions", help="live sessions (admins: kill one)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=sessions_list)
    lsub = ls.add_subparsers(dest="sessions_command", metavar="{kill}")
    k = lsub.add_parser("kill", help="end a live session now (admin)")
    k.add_argument("id", help="session id, or an unambiguous prefix, from `conduit sessions`")
    k.set_defaults(func=sessions_kill)


# ---- files ----------------------------------------------------------------------------------


def ssh_dir() -> Path:
    return credentials.config_dir() / "ssh"


@dataclass(frozen=True)
class CertInfo:
    """What ``conduit.json`` records about the current certificate."""

    broker: str
    host: str
    port: int
    valid_before: int
    public_key: str

    def fresh(self, broker: str, public_key: str, now: float | None = None) -> bool:
        """True if made by ``broker`` for ``public_key`` and valid for another minute."""
        now = SystemClock().now().timestamp() if now is None else now
        return (
            self.broker == broker
            and self.public_key == public_key
            and self.valid_before > now + RENEW_MARGIN_S
        )


def _paths() -> dict[str, Path]:
    d = ssh_dir()
    return {
        "key": d / KEY_NAME,
        "pub": d / f"{KEY_NAME}.pub",
        "cert": d / f"{KEY_NAME}-cert.pub",
        "known_hosts": d / "known_hosts",
        "info": d / "conduit.json",
        "config": d / "config",
    }


def _write(path: Path, data: str, mode: int) -> None:
    """Atomically replace ``path`` (temp file + rename) with ``data`` and ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ensure_key() -> str:
    """The vendor's public key (OpenSSH line); creates the 0600 key pair on first use."""
    import asyncssh  # imported here: every `conduit` start would pay for it

    paths = _paths()
    directory = ssh_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    key_path = paths["key"]
    if key_path.exists():
        if key_path.stat().st_mode & 0o077:
            raise BrokerError(
                f"{key_path} is readable by other users; chmod 600 it", code="key_insecure"
            )
        try:
            key = asyncssh.read_private_key(key_path)
        except (asyncssh.KeyImportError, OSError) as exc:
            raise BrokerError(f"reading {key_path}: {exc}", code="bad_key") from exc
    else:
        key = asyncssh.generate_private_key("ssh-ed25519", comment="conduit")
        _write(key_path, key.export_private_key().decode(), 0o600)
    public = key.export_public_key().decode().strip()
    if not paths["pub"].exists() or paths["pub"].read_text().strip() != public:
        _write(paths["pub"], public + "\n", 0o644)
    return public


def forget_certificate(broker: str) -> None:
    """Delete the stored certificate if ``broker`` issued it (``conduit logout``)."""
    info = _load_info()
    if info is not None and info.broker == broker:
        _paths()["cert"].unlink(missing_ok=True)
        _paths()["info"].unlink(missing_ok=True)


def _load_info() -> CertInfo | None:
    try:
        return CertInfo(**json.loads(_paths()["info"].read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _front_host(info_host: str, broker: str) -> str:
    """The front door's host: the broker's answer, unless that is a wildcard bind address."""
    try:
        wildcard = ipaddress.ip_address(info_host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = not info_host
    return (urlsplit(broker).hostname or "localhost") if wildcard else info_host


def _known_hosts_entry(host: str, port: int, host_key: str) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {' '.join(host_key.split()[:2])}\n"


def _stored_broker() -> str:
    return signed_in().broker


def renew() -> CertInfo:
    """Get a new certificate and the front door's host key; write them; return the info."""
    broker = _stored_broker()
    public = _ensure_key()
    front = call("GET", "/api/ssh/info")
    answer = call("POST", "/api/ssh/cert", body={"public_key": public})
    host = _front_host(str(front.get("host", "")), broker)
    info = CertInfo(
        broker=broker,
        host=host,
        port=int(answer["port"]),
        valid_before=int(answer["valid_before"]),
        public_key=public,
    )
    paths = _paths()
    _write(paths["cert"], str(answer["certificate"]).strip() + "\n", 0o644)
    _write(paths["known_hosts"], _known_hosts_entry(host, info.port, front["host_key"]), 0o644)
    _write(paths["info"], json.dumps(asdict(info), indent=2) + "\n", 0o600)
    return info


def current(*, renew_if_needed: bool = True) -> CertInfo:
    """The certificate info, renewed when missing, stale, for another broker or key."""
    broker = _stored_broker()
    info = _load_info()
    paths = _paths()
    if (
        info is not None
        and paths["cert"].exists()
        and paths["key"].exists()
        and info.fresh(broker, _ensure_key())
    ):
        return info
    if not renew_if_needed:
        raise BrokerError("no valid SSH certificate: run `conduit ssh-cert`", code="no_cert")
    return renew()


def _until(valid_before: int) -> str:
    return datetime.fromtimestamp(valid_before, UTC).isoformat(timespec="seconds")


# ---- commands -------------------------------------------------------------------------------


def _ssh_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--login", help=f"login on the asset (default: LOGIN@ in TARGET, ${LOGIN_ENV})")
    p.add_argument(
        "--ssh-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for ssh, e.g. --ssh-arg=-L5020:127.0.0.1:502 (repeatable)",
    )


def _split_rest(args: argparse.Namespace) -> list[str]:
    """Apply options given after TARGET (argparse leaves them in ``rest``); return the command.

    The command starts after ``--`` or at the first word that is not one of our options.
    """
    rest: list[str] = list(args.rest)
    extra: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--":
            i += 1
            break
        name, eq, value = word.partition("=")
        if name not in {"--login", "--ssh-arg", "--grant"}:
            break
        if not eq:
            if i + 1 >= len(rest):
                raise BrokerError(f"{name} needs a value", code="bad_arguments")
            value = rest[i + 1]
            i += 1
        if name == "--login":
            args.login = value
        elif name == "--grant":  # as the grant page writes it: `conduit ssh L@A --grant ID`
            args.grant = value
        else:
            extra.append(value)
        i += 1
    args.ssh_arg = [*args.ssh_arg, *extra]
    return rest[i:]


def ssh_cert(args: argparse.Namespace) -> int:
    info = renew()
    paths = _paths()
    left = max(0, info.valid_before - int(SystemClock().now().timestamp()))
    print(f"Certificate {paths['cert']}")
    print(f"  valid until {_until(info.valid_before)} ({left // 60} min)")
    print(f"  front door {info.host}:{info.port}; host key pinned in {paths['known_hosts']}")
    return 0


def _target(args: argparse.Namespace) -> tuple[str, str]:
    login, sep, asset = str(args.target).rpartition("@")
    login = args.login or (login if sep else "") or os.environ.get(LOGIN_ENV, "")
    if not asset or "@" in asset:
        raise BrokerError(f"target {args.target!r} is not [LOGIN@]ASSET", code="bad_target")
    if not login:
        raise BrokerError(
            f"which login on {asset}? use LOGIN@{asset}, --login LOGIN or ${LOGIN_ENV}",
            code="no_login",
        )
    if "@" in login or login.startswith("-"):
        raise BrokerError(f"login {login!r} is not valid", code="bad_target")
    return login, asset


def ssh_argv(
    info: CertInfo, login: str, asset: str, extra: list[str], command: list[str]
) -> list[str]:
    """The stock ``ssh`` command line for ``login`` on ``asset`` through the front door."""
    paths = _paths()
    exe = shutil.which("ssh") or "ssh"
    return [
        exe, "-F", "none",
        "-i", str(paths["key"]),
        "-o", f"CertificateFile={paths['cert']}",
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={paths['known_hosts']}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "ForwardAgent=no",
        "-p", str(info.port),
        *extra,
        f"{login}@{asset}@{info.host}",
        *command,
    ]  # fmt: skip


def ssh(args: argparse.Namespace) -> int:
    command = _split_rest(args)
    login, asset = _target(args)
    info = current()
    argv = ssh_argv(info, login, _with_grant(asset, args.grant), list(args.ssh_arg), command)
    return _exec_ssh(argv)


def _exec_ssh(argv: list[str]) -> int:
    """Replace this process with OpenSSH (returns only by raising BrokerError)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)  # noqa: S606 - argv list, no shell: OpenSSH takes over
    except OSError as exc:
        raise BrokerError(f"running ssh: {exc.strerror}", code="no_ssh") from exc
    return 0  # not reached


FORWARD_LOGIN = "forward"  # no login on the asset happens for a forward-only connection


def forward(args: argparse.Namespace) -> int:
    """``ssh -N -L`` through the front door (the stock client does the port listening), once
    the broker shows an active grant covering the port (:func:`check_forward`)."""
    if not 1 <= args.port <= 65535 or not 0 <= args.local_port <= 65535:
        raise BrokerError("ports must be 1-65535", code="invalid")
    local = args.local_port or args.port
    check_forward(args.asset, args.port, args.grant)  # say why now, not by resetting later
    info = current()
    spec = f"{args.bind}:{local}:localhost:{args.port}"
    extra = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", spec]
    argv = ssh_argv(info, FORWARD_LOGIN, _with_grant(args.asset, args.grant), extra, [])
    print(f"forwarding {args.bind}:{local} -> {args.asset}:{args.port} (Ctrl-C to stop)")
    return _exec_ssh(argv)


def config_snippet(info: CertInfo) -> str:
    """An ``ssh_config`` block for the alias ``conduit`` (and ``*.conduit``)."""
    paths = _paths()
    return (
        "# Conduit front door. OpenSSH splits user and host at the LAST '@', so the asset\n"
        "# goes into the user name:   ssh -F THIS_FILE LOGIN@ASSET@conduit\n"
        "#   e.g. ssh -F THIS_FILE root@plc-1@conduit\n"
        "#        scp -F THIS_FILE file root@plc-1@conduit:/tmp/\n"
        "#        ssh -F THIS_FILE -L 5020:127.0.0.1:502 -N root@plc-1@conduit\n"
        "# (`ssh root@plc-1.conduit` cannot work: a user given on the command line always\n"
        "# wins over User, so the asset name cannot be moved from the host into the user.)\n"
        f"# The certificate expires {_until(info.valid_before)}; renew with `conduit ssh-cert`.\n"
        f"Host {ALIAS} *.{ALIAS}\n"
        f"    HostName {info.host}\n"
        f"    Port {info.port}\n"
        "    ProxyCommand none\n"
        "    ProxyJump none\n"
        f"    IdentityFile {paths['key']}\n"
        f"    CertificateFile {paths['cert']}\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {paths['known_hosts']}\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    StrictHostKeyChecking yes\n"
        "    ForwardAgent no\n"
    )


def ssh_config(args: argparse.Namespace) -> int:
    snippet = config_snippet(current())
    if not args.write:
        print(snippet, end="")
        return 0
    path = _paths()["config"]
    _write(path, snippet, 0o644)
    print(f"Wrote {path}; use: ssh -F {path} LOGIN@ASSET@{ALIAS}")
    return 0


def sessions_list(args: argparse.Namespace) -> int:
    rows = call("GET", "/api/sessions")["sessions"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no live sessions")
    for s in rows:
        target = f"{s['login']}@{s['asset']}" if s.get("login") else s["asset"]
        print(
            f"{s['id']}  {s['kind']:<5} {s['user']:<16} {target:<24} "
            f"{s['started_at']} - {s['expires_at']}  up {s['bytes_up']} B, "
            f"down {s['bytes_down']} B"
        )
    return 0


def sessions_kill(args: argparse.Namespace) -> int:
    session = resolve(
        "session",
        args.id,
        "/api/sessions",
        "conduit sessions",
        key="sessions",
        label=lambda s: f"{s['user']} on {s['asset']}",
    )
    gone = missing("session", args.id, "`conduit sessions`")
    out = call("POST", f"/api/sessions/{session}/kill", not_found=gone)
    print(f"Session {out['id']} is {out['state']}: {out['reason']}")
    return 0


def asset_ca(args: argparse.Namespace) -> int:
    """Print the asset CA line, then the sshd set-up (admins only; the broker audits it)."""
    out = call("GET", "/api/ssh/asset-ca")
    print(out["public_key"])
    print()
    print(out["setup"], end="")
    return 0
