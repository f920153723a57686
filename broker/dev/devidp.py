"""Launcher for the development OIDC identity provider (deploy/dev-idp, npm ``oidc-provider``).

Used by ``conduit demo`` and by the test harness. Development only: it runs from a source
checkout (it needs ``deploy/dev-idp/node_modules``, installed by ``make deps``), listens on
127.0.0.1 and its users' passwords are in plain text in ``deploy/dev-idp/users.json``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from joserfc.jwk import RSAKey

from sessions.clock import SystemClock

# The dev tools are composition roots: their waits read this clock.
_CLOCK = SystemClock()


def _now_s() -> float:
    return _CLOCK.now().timestamp()


REPO_ROOT = Path(__file__).resolve().parents[2]
IDP_DIR = REPO_ROOT / "deploy" / "dev-idp"
DEFAULT_USERS_PATH = IDP_DIR / "users.json"

_READY_PREFIX = "dev-idp listening on "
_START_TIMEOUT_S = 20.0


def generate_rsa_jwks(kid: str = "dev-1") -> dict[str, Any]:
    """Return a fresh private JWKS ``{"keys": [RSA-2048 key]}`` with kid, alg RS256, use sig."""
    key = RSAKey.generate_key(2048)
    jwk: dict[str, Any] = dict(key.as_dict(private=True))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": [jwk]}


_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


@dataclass
class RunningIdP:
    """A dev IdP process started by :func:`start_dev_idp`; a context manager, or call ``stop()``."""

    issuer: str
    private_jwks: dict[str, Any]
    process: subprocess.Popen[bytes]
    config_path: Path
    port: int = 0
    users_path: Path = DEFAULT_USERS_PATH
    log_path: Path | None = None
    clients: list[dict[str, Any]] = field(default_factory=list)
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def public_jwks(self) -> dict[str, Any]:
        """The JWKS without private members (what the IdP publishes at its jwks_uri)."""
        keys = [
            {k: v for k, v in key.items() if k not in _PRIVATE_JWK_MEMBERS}
            for key in self.private_jwks["keys"]
        ]
        return {"keys": keys}

    def logs(self) -> str:
        """Everything the IdP wrote to stdout/stderr so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Terminate the IdP; kill it if it has not exited after 5 s. Idempotent."""
        proc = self.process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._pump is not None:
            self._pump.join(timeout=5)
        if proc.stdout is not None and (self._pump is None or not self._pump.is_alive()):
            proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _pump_stdout(
    proc: subprocess.Popen[bytes], log_path: Path, ready: threading.Event, lines: list[str]
) -> None:
    assert proc.stdout is not None
    with log_path.open("a", encoding="utf-8") as log:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            log.write(line)
            log.flush()
            if not ready.is_set():
                lines.append(line)
                if line.startswith(_READY_PREFIX):
                    ready.set()


def start_dev_idp(
    workdir: Path,
    clients: list[dict[str, Any]],
    users_path: Path | None = None,
    port: int | None = None,
) -> RunningIdP:
    """Start ``node deploy/dev-idp/server.js`` on 127.0.0.1 and wait until it accepts connections.

    ``clients`` use the server's config format (client_id, optional client_secret,
    redirect_uris, post_logout_redirect_uris). Writes ``private-jwks.json``, ``config.json`` and
    ``dev-idp.log`` into ``workdir``. Raises RuntimeError if node or the npm dependencies are
    missing, if the process exits before it is ready (message includes its output), or if it is
    not ready within 20 s.
    """
    node = _node()
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port() if port is None else port
    issuer = f"http://127.0.0.1:{port}"
    users = (users_path or DEFAULT_USERS_PATH).resolve()
    jwks = generate_rsa_jwks()
    config_path = _write_config(workdir, issuer, port, jwks, users, clients)
    log_path = workdir / "dev-idp.log"
    log_path.write_text("", encoding="utf-8")

    with log_path.open("a", encoding="utf-8") as stderr_log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv: node + our script
            [node, str(IDP_DIR / "server.js"), str(config_path)],
            cwd=IDP_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_log,
        )
    running = RunningIdP(
        issuer=issuer,
        private_jwks=jwks,
        process=proc,
        config_path=config_path,
        port=port,
        users_path=users,
        log_path=log_path,
        clients=clients,
    )
    ready = threading.Event()
    early: list[str] = []
    pump = threading.Thread(
        target=_pump_stdout, args=(proc, log_path, ready, early), name="dev-idp-stdout", daemon=True
    )
    pump.start()
    running._pump = pump
    _wait_ready(running, ready, early)
    return running


def _node() -> str:
    """The node binary, once the dev IdP's npm dependencies are known to be installed."""
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(
            f"{IDP_DIR / 'node_modules'} is missing: run `make deps` "
            "(or `npm ci` in deploy/dev-idp) first"
        )
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH: the dev IdP needs Node.js 20+")
    return node


def _write_config(
    workdir: Path,
    issuer: str,
    port: int,
    jwks: dict[str, Any],
    users: Path,
    clients: list[dict[str, Any]],
) -> Path:
    """Write ``private-jwks.json`` (0600) and ``config.json`` into ``workdir``."""
    jwks_path = workdir / "private-jwks.json"
    jwks_path.write_text(json.dumps(jwks), encoding="utf-8")
    jwks_path.chmod(0o600)
    config = {
        "issuer": issuer,
        "port": port,
        "host": "127.0.0.1",
        "jwks_path": str(jwks_path),
        "users_path": str(users),
        "clients": clients,
        "cookie_keys": [secrets.token_urlsafe(32)],
    }
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return config_path


def _wait_ready(running: RunningIdP, ready: threading.Event, early: list[str]) -> None:
    """Wait for the ready line announcing ``running.issuer``; stop the IdP and raise if it
    exits first, takes longer than the start timeout or announces another issuer."""
    proc = running.process
    deadline = _now_s() + _START_TIMEOUT_S
    while not ready.wait(0.05):
        if proc.poll() is not None:
            running.stop()
            raise RuntimeError(
                f"dev IdP exited with code {proc.returncode} before it was ready:\n{running.logs()}"
            )
        if _now_s() > deadline:
            running.stop()
            raise RuntimeError(
                f"dev IdP not ready after {_START_TIMEOUT_S:.0f} s:\n{running.logs()}"
            )
    ready_line = next(line for line in early if line.startswith(_READY_PREFIX))
    if ready_line.strip() != f"{_READY_PREFIX}{running.issuer}":
        running.stop()
        raise RuntimeError(f"dev IdP announced an unexpected issuer: {ready_line.strip()!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
