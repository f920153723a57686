"""A real OpenSSH server on 127.0.0.1: the demo's SSH assets and the tests' sshd.

``start_sshd`` runs Debian's ``/usr/sbin/sshd`` in the foreground with its own
config, host key, client key and authorized_keys, all inside ``workdir``.
Only public-key (and, with ``trusted_user_ca_keys``, certificate) logins for
the named local users are accepted (created, with no password, if missing).
Needs root: sshd must switch to the user who logs in. Used by ``conduit demo``
(:mod:`broker.dev.demo`) and by ``tests/harness``; development only.

``extra_config`` is appended to the generated config.  sshd keeps the *first*
value it reads for a keyword, so it can add settings and ``Match`` blocks but
not override the generated ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sessions.clock import SystemClock

# The dev tools are composition roots: their waits read this clock.
_CLOCK = SystemClock()


def _now_s() -> float:
    return _CLOCK.now().timestamp()


SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 30.0
_USER_LOCK = Path("/run/lock/conduit-harness-useradd.lock")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SshdError(RuntimeError):
    """sshd could not be configured or started."""


def sshd_available() -> str | None:
    """Return why the real sshd cannot be used here, or None when it can."""
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} not installed (Debian package openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not installed (Debian package openssh-client)"
    if os.geteuid() != 0:
        return "sshd needs root (it must switch to the user who logs in)"
    if shutil.which("useradd") is None or shutil.which("usermod") is None:
        return "useradd/usermod not available"
    return None


@dataclass
class RunningSshd:
    host: str
    port: int
    user: str
    client_key_path: Path
    host_key_path: Path
    host_public_key: str
    known_hosts_path: Path
    config_path: Path
    process: subprocess.Popen[bytes]
    authorized_keys_path: Path
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def client_public_key(self) -> str:
        return _public_key_line(self.client_key_path.with_suffix(".pub"))

    def log(self) -> str:
        """sshd's stderr log so far (LogLevel VERBOSE)."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate sshd and every connection process it forked.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _terminate_tree(self.process)

    def __enter__(self) -> RunningSshd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_sshd(
    workdir: Path,
    *,
    user: str = "conduit-test",
    also_users: Sequence[str] = (),
    port: int | None = None,
    extra_config: str = "",
    trusted_user_ca_keys: list[str] | None = None,
    keep_host_key: bool = False,
) -> RunningSshd:
    """Configure and start sshd on 127.0.0.1; return once it sends its banner.

    ``user`` (and ``also_users``) may log in. ``keep_host_key`` reuses a host key already in
    ``workdir`` (a broker pins an asset's host key at first use). Raises :class:`SshdError`
    if sshd is missing, this process is not root, a user cannot be created or sshd does not
    start.
    """
    reason = sshd_available()
    if reason is not None:
        raise SshdError(f"start sshd: {reason}")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in (user, *also_users):
        _ensure_user(name)

    host_key, client_key, authorized_keys, ca_file = _key_files(
        workdir, user, trusted_user_ca_keys, keep_host_key=keep_host_key
    )
    host_public_key = _public_key_line(host_key.with_suffix(".pub"))

    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        config = workdir / "sshd_config"
        config.write_text(
            _config(
                port=chosen,
                workdir=workdir,
                host_key=host_key,
                authorized_keys=authorized_keys,
                users=(user, *also_users),
                ca_file=ca_file,
                extra_config=extra_config,
            )
        )
        config.chmod(0o644)
        log_path = workdir / "sshd.log"
        process = _launch(config, log_path)
        try:
            _wait_for_banner(process, chosen, log_path)
        except SshdError:
            _terminate_tree(process)
            text = log_path.read_text(errors="replace")
            if "Address already in use" in text and attempt + 1 < attempts:
                continue
            raise
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{chosen} {host_public_key}\n")
        return RunningSshd(
            host="127.0.0.1",
            port=chosen,
            user=user,
            client_key_path=client_key,
            host_key_path=host_key,
            host_public_key=host_public_key,
            known_hosts_path=known_hosts,
            config_path=config,
            process=process,
            authorized_keys_path=authorized_keys,
            log_path=log_path,
        )
    raise SshdError("start sshd: no free port")  # pragma: no cover


def _key_files(
    workdir: Path, user: str, trusted_user_ca_keys: list[str] | None, *, keep_host_key: bool
) -> tuple[Path, Path, Path, Path | None]:
    """Host (fresh unless kept) and client keys, authorized_keys, the trusted CA file."""
    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "id_ed25519"
    if not (keep_host_key and host_key.exists() and host_key.with_suffix(".pub").exists()):
        _keygen(host_key, comment="conduit-test-host")
    _keygen(client_key, comment=f"{user}@conduit-test")
    # sshd opens AuthorizedKeysFile with the *user's* uid (StrictModes no does
    # not change that), and pytest's tmp root is 0700 root, so the file is
    # served by a root-run AuthorizedKeysCommand instead; permissions of the
    # tmp dir then do not matter.  Rewrite this file to change accepted keys.
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(_public_key_line(client_key.with_suffix(".pub")) + "\n")
    authorized_keys.chmod(0o644)
    ca_file: Path | None = None
    if trusted_user_ca_keys:
        ca_file = workdir / "trusted_user_ca_keys"
        ca_file.write_text("".join(k.strip() + "\n" for k in trusted_user_ca_keys))
        ca_file.chmod(0o644)
    return host_key, client_key, authorized_keys, ca_file


def _launch(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Check ``config`` with ``sshd -t``, then run sshd in the foreground in its own session."""
    check = subprocess.run(  # noqa: S603 - fixed argv: Debian sshd and our config
        [SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise SshdError(f"start sshd: config rejected by sshd -t: {check.stderr.strip()}")
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - fixed argv: Debian sshd and our config
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _config(
    *,
    port: int,
    workdir: Path,
    host_key: Path,
    authorized_keys: Path,
    users: Sequence[str],
    ca_file: Path | None,
    extra_config: str,
) -> str:
    lines = [
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin no",
        "AuthorizedKeysFile none",
        f"AuthorizedKeysCommand /usr/bin/cat {authorized_keys}",
        "AuthorizedKeysCommandUser root",
        "StrictModes no",
        f"AllowUsers {' '.join(users)}",
        "Subsystem sftp internal-sftp",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "MaxStartups 100:30:200",
        "LogLevel VERBOSE",
    ]
    if ca_file is not None:
        lines.append(f"TrustedUserCAKeys {ca_file}")
    # sshd uses the first value it reads for most keywords, so extra_config
    # can only add settings; Match blocks must come last, which they do.
    return "\n".join(lines) + "\n" + extra_config.strip() + "\n"


def _ensure_user(user: str) -> None:
    _USER_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _USER_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam(user)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", user], "create test user")
        # '*' = no password but not locked ('!'), so public-key auth works.
        _run(["usermod", "-p", "*", user], "unlock test user")


def _keygen(path: Path, *, comment: str) -> None:
    for p in (path, path.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        f"generate key {path.name}",
    )
    path.chmod(0o600)


def _public_key_line(pub: Path) -> str:
    algo, blob, *_ = pub.read_text().split()
    return f"{algo} {blob}"


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise SshdError(f"{what}: {argv[0]} exited {result.returncode}: {result.stderr.strip()}")


def _wait_for_banner(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = _now_s() + START_TIMEOUT
    while _now_s() < deadline:
        if process.poll() is not None:
            raise SshdError(
                f"start sshd: exited with {process.returncode}: "
                f"{log_path.read_text(errors='replace').strip()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.settimeout(max(0.1, deadline - _now_s()))
                if sock.makefile("rb").readline().startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise SshdError(f"start sshd: no SSH banner on 127.0.0.1:{port} within {START_TIMEOUT} s")


def _descendants(pid: int) -> list[int]:
    """All live descendants of pid (connection handlers call setsid, so no pgid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _terminate_tree(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        victims = _descendants(process.pid)
        _signal(process.pid, victims, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal(process.pid, victims, signal.SIGKILL)
            process.wait(timeout=5)
        deadline = _now_s() + 2
        while victims and _now_s() < deadline:
            victims = [v for v in victims if Path(f"/proc/{v}").exists() and not _zombie(v)]
            if victims:
                time.sleep(0.02)
        _signal(None, victims, signal.SIGKILL)
    else:
        process.wait()


def _signal(leader: int | None, pids: list[int], sig: signal.Signals) -> None:
    for pid in ([leader] if leader is not None else []) + pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
