"""Broker settings: parsed and validated once at start-up, then passed explicitly.

Sources, lowest precedence first: built-in defaults, a TOML file (``--config`` or
``CONDUIT_CONFIG``), environment variables ``CONDUIT_*`` (nested with ``__``, e.g.
``CONDUIT_OIDC__ISSUER``). Anything invalid or insecure raises :class:`SettingsError`
with one line per problem; the broker refuses to start rather than run half-configured.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from broker.runtime.errors import SettingsError
from broker.runtime.ssh_startups import StartupLimits
from sessions.identity import ROLES

DEV_SESSION_SECRET = "dev-only-session-secret-not-for-production-use"  # noqa: S105


def _is_loopback_host(host: str | None) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"} or (host or "").startswith("127.")


class OidcSettings(BaseModel):
    """The OpenID provider Conduit trusts for sign-in."""

    issuer: str = ""
    client_id: str = "conduit"
    client_secret: SecretStr | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email", "groups"])
    groups_claim: str = "groups"
    vendor_org_claim: str = "vendor_org"
    fetch_userinfo: bool = True
    http_timeout_s: float = Field(default=5.0, gt=0, le=60)
    clock_skew_s: int = Field(default=60, ge=0, le=300)
    allowed_algs: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"])

    @model_validator(mode="after")
    def _check(self) -> OidcSettings:
        if "openid" not in self.scopes:
            raise ValueError("oidc.scopes must include 'openid'")
        if any(a.lower() == "none" or a.startswith("HS") for a in self.allowed_algs):
            raise ValueError("oidc.allowed_algs may only name asymmetric algorithms")
        return self


def default_bundle_dir() -> Path:
    """The default policy bundle shipped inside the ``policies`` package."""
    import policies

    return Path(policies.__file__).parent / "bundle"


class PolicySettings(BaseModel):
    """Where decisions come from: the embedded Rego engine (default) or an OPA server."""

    engine: Literal["embedded", "opa"] = "embedded"
    bundle_dir: Path = Field(default_factory=default_bundle_dir)
    watch_interval_s: float = Field(default=1.0, gt=0, le=60)
    data_refresh_s: float = Field(default=5.0, gt=0, le=3600)
    budget_ms: float = Field(default=50.0, gt=0, le=10_000)
    # "rvm": regorus's compiled VM decides once it agreed with the interpreter on the
    # verification corpus (~1.7x faster; docs/policy.md). Opt-in: the VM is young.
    evaluator: Literal["interpreter", "rvm"] = "interpreter"
    validate_timeout_s: float = Field(default=20.0, gt=0, le=600)
    opa_url: str = ""
    opa_token: SecretStr | None = None
    opa_ca_file: Path | None = None
    opa_timeout_ms: int = Field(default=500, ge=10, le=30_000)
    opa_retries: int = Field(default=1, ge=0, le=5)

    @model_validator(mode="after")
    def _check(self) -> PolicySettings:
        if self.engine == "opa":
            parts = urlsplit(self.opa_url)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError("policy.opa_url must be an http(s) URL when policy.engine = 'opa'")
        if self.opa_ca_file is not None and not self.opa_ca_file.is_file():
            raise ValueError(f"policy.opa_ca_file {self.opa_ca_file} does not exist")
        return self


class AgentSettings(BaseModel):
    """The agent gateway: where agents dial in, and how the broker treats them."""

    enabled: bool = True
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=7022, ge=0, le=65535)
    # Gateway addresses handed to agents at join (host:port); default: the listen address.
    advertise: list[str] = Field(default_factory=list)
    key_dir: Path | None = None  # default: data_dir / "keys"
    node_name: str = ""  # this broker's name in health views; default: host:port
    cert_validity_days: int = Field(default=365, ge=1, le=3650)
    # Agents send heartbeats and keep-alives themselves; the broker's own probe can be rare.
    keepalive_s: float = Field(default=60.0, gt=0, le=600)
    handshake_timeout_s: float = Field(default=10.0, gt=0, le=120)
    open_timeout_s: float = Field(default=10.0, gt=0, le=120)
    heartbeat_flush_s: float = Field(default=30.0, gt=0, le=3600)
    # Control frames an agent sends on its own (hello, heartbeats, anything unexpected) per
    # second; a well-behaved agent sends at most one heartbeat a second. Reports of channels
    # the broker asked for are exempt (once per channel), so a mass close never counts here.
    max_frames_per_s: int = Field(default=50, ge=1, le=10_000)
    max_channels_per_agent: int = Field(default=256, ge=1, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> AgentSettings:
        for address in self.advertise:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"agents.advertise entry {address!r} is not host:port")
        return self

    def gateways(self, bound_port: int) -> list[str]:
        return self.advertise or [f"{self.listen_host}:{bound_port}"]


class SshSettings(BaseModel):
    """The SSH front door vendors reach with stock ``ssh``/``scp``/``sftp``."""

    enabled: bool = True
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=2222, ge=0, le=65535)
    public_host: str = ""  # what ``conduit ssh-config`` writes; default: listen_host
    cert_max_s: int = Field(default=8 * 3600, ge=60, le=7 * 86400)
    # From TCP accept to signed in; a clientless sign-in showing its code gets until the code
    # expires (clientless_code_ttl_s) instead. OpenSSH's LoginGraceTime is 120 s.
    login_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # Unauthenticated connections, as OpenSSH's MaxStartups "start:rate:full" (or "N"): from
    # `start` on, new ones are refused with `rate` % probability, rising to 100 % at `full`.
    max_startups: str = "10:30:100"
    # ... and per source address (OpenSSH's PerSourceMaxStartups). Below `start`, so one host
    # alone never makes the door refuse anybody else; a site whose vendors share one NAT
    # address and sign in clientless (minutes each) may need more.
    max_startups_per_source: int = Field(default=8, ge=1, le=100_000)
    # Clientless sign-in (keyboard-interactive, a code typed into /ssh/approve): the global
    # switch, the Purdue level from which assets accept it without a ``clientless`` label
    # (sessions/clientless.py), how long a code lives (at most 2 minutes), pending caps.
    clientless_enabled: bool = True
    clientless_min_purdue_level: int = Field(default=3, ge=0, le=5)
    clientless_code_ttl_s: int = Field(default=120, ge=30, le=120)
    clientless_max_pending_per_ip: int = Field(default=3, ge=1, le=100)
    clientless_max_pending: int = Field(default=100, ge=1, le=10_000)
    keepalive_s: float = Field(default=30.0, gt=0, le=600)
    default_idle_timeout_s: int = Field(default=900, ge=10, le=86400)
    record_input: bool = False
    watchdog_interval_s: float = Field(default=0.25, gt=0, le=5)

    @model_validator(mode="after")
    def _check(self) -> SshSettings:
        if self.clientless_max_pending_per_ip > self.clientless_max_pending:
            raise ValueError(
                "ssh.clientless_max_pending_per_ip must not exceed ssh.clientless_max_pending"
            )
        self.startup_limits()  # raises ValueError naming the problem
        return self

    def startup_limits(self) -> StartupLimits:
        return StartupLimits.parse(self.max_startups, self.max_startups_per_source)


class RecordingSettings(BaseModel):
    """Recording storage (``<data_dir>/recordings``): when strict sessions are refused."""

    # A strict-mode session starts only with this much free space left (and a probe write
    # succeeding); below it the broker refuses strict sessions and reports storage failing.
    min_free_mb: float = Field(default=64.0, ge=0, le=1_000_000)
    probe_interval_s: float = Field(default=5.0, gt=0, le=3600)


class AuditSettings(BaseModel):
    """Signed checkpoints of the audit chain head, shipped off the database."""

    checkpoint_events: int = Field(default=100, ge=1, le=1_000_000)
    checkpoint_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    # JSON lines, appended and fsynced; default <data_dir>/audit/checkpoints.jsonl.
    checkpoint_file: Path | None = None
    # Also to syslog: "udp://host:port", "tcp://host:port" or "unix:/dev/log" ("" = off).
    checkpoint_syslog: str = ""
    # Also POST each checkpoint to webhook_url (event "audit.checkpoint") when one is set.
    checkpoint_webhook: bool = True

    @model_validator(mode="after")
    def _check(self) -> AuditSettings:
        target = self.checkpoint_syslog
        if target and not target.startswith("unix:/"):
            parts = urlsplit(target)
            if parts.scheme not in {"udp", "tcp"} or not parts.hostname or not parts.port:
                raise ValueError(
                    "audit.checkpoint_syslog must be udp://host:port, tcp://host:port or unix:/path"
                )
        return self


class RoleSettings(BaseModel):
    """IdP group names (or IDs) that grant each Conduit role."""

    vendor: list[str] = Field(default_factory=lambda: ["conduit-vendors"])
    approver: list[str] = Field(default_factory=lambda: ["ot-approvers"])
    admin: list[str] = Field(default_factory=lambda: ["conduit-admins"])
    security: list[str] = Field(default_factory=lambda: ["security-reviewers"])

    def as_mapping(self) -> dict[str, list[str]]:
        return {role: list(getattr(self, role)) for role in ROLES}


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    """Every knob of the broker. Construct with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="CONDUIT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    mode: Literal["dev", "prod"] = "dev"
    public_url: str = "http://127.0.0.1:8080"
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=0, le=65535)
    database_url: str = "sqlite:///./var/conduit.db"
    data_dir: Path = Path("./var")
    session_secret: SecretStr | None = None
    session_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 86400)
    login_flow_ttl_s: int = Field(default=600, ge=30, le=3600)
    cli_token_ttl_s: int = Field(default=3600, ge=60, le=86400)
    # CLI sign-in codes live briefly; one address may hold only so many pending device codes
    # (anonymous starts), and those starts are audited in one event per address and interval.
    device_code_ttl_s: int = Field(default=300, ge=60, le=900)
    device_pending_per_ip: int = Field(default=10, ge=1, le=1000)
    device_audit_interval_s: float = Field(default=10.0, gt=0, le=300)
    # Reverse proxies (addresses or networks) whose X-Forwarded-For is believed, read from the
    # right: the first hop that is not one of these is the client (broker/auth/forwarded.py).
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    grant_tick_s: float = Field(default=1.0, gt=0, le=60)
    webhook_url: str = ""
    webhook_secret: SecretStr | None = None
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    roles: RoleSettings = Field(default_factory=RoleSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    ssh: SshSettings = Field(default_factory=SshSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @model_validator(mode="after")
    def _secure(self) -> Settings:
        problems: list[str] = []
        pub = urlsplit(self.public_url)
        if pub.scheme not in {"http", "https"} or not pub.netloc:
            problems.append(f"public_url {self.public_url!r} is not an http(s) URL")
        if not self.oidc.issuer:
            problems.append("oidc.issuer is required (CONDUIT_OIDC__ISSUER)")
        iss = urlsplit(self.oidc.issuer)
        if self.oidc.issuer and iss.scheme not in {"http", "https"}:
            problems.append(f"oidc.issuer {self.oidc.issuer!r} is not an http(s) URL")
        if self.mode == "prod":
            secret = self.session_secret.get_secret_value() if self.session_secret else ""
            if len(secret) < 32:
                problems.append(
                    "session_secret must be set to at least 32 characters in prod mode "
                    "(CONDUIT_SESSION_SECRET)"
                )
            if secret == DEV_SESSION_SECRET:
                problems.append("session_secret is the published development secret")
            if iss.scheme != "https":
                problems.append("oidc.issuer must use https in prod mode")
            if pub.scheme != "https":
                problems.append("public_url must use https in prod mode")
            if not self.oidc.client_secret:
                problems.append("oidc.client_secret is required in prod mode (confidential client)")
            if self.webhook_url and urlsplit(self.webhook_url).scheme != "https":
                problems.append("webhook_url must use https in prod mode")
            opa = urlsplit(self.policy.opa_url)
            if (
                self.policy.engine == "opa"
                and opa.scheme != "https"
                and not _is_loopback_host(opa.hostname)
            ):
                problems.append(
                    "policy.opa_url must use https in prod mode unless it is on loopback"
                )
        elif iss.scheme == "http" and not _is_loopback_host(iss.hostname):
            problems.append("an http oidc.issuer is only accepted on a loopback address")
        if self.webhook_url:
            hook = urlsplit(self.webhook_url)
            if hook.scheme not in {"http", "https"} or not hook.netloc:
                problems.append(f"webhook_url {self.webhook_url!r} is not an http(s) URL")
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if len(secret) < 16:
                problems.append(
                    "webhook_secret of at least 16 characters is required with webhook_url"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def agent_key_dir(self) -> Path:
        return self.agents.key_dir or self.data_dir / "keys"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"

    @property
    def checkpoint_file(self) -> Path:
        return self.audit.checkpoint_file or self.data_dir / "audit" / "checkpoints.jsonl"

    @property
    def secure_cookies(self) -> bool:
        return urlsplit(self.public_url).scheme == "https"

    def session_secret_bytes(self) -> bytes:
        """The session secret; in dev mode without one, a published constant (never in prod)."""
        if self.session_secret is not None:
            return self.session_secret.get_secret_value().encode()
        return DEV_SESSION_SECRET.encode()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment, validate, and return settings.

    ``config_file`` defaults to ``$CONDUIT_CONFIG``. Environment variables override the file;
    keyword overrides (used by tests and the demo) override both.
    Raises :class:`SettingsError` whose message lists every problem, one per line.
    """
    env_path = os.environ.get("CONDUIT_CONFIG")
    path = config_file or (Path(env_path) if env_path else None)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SettingsError(f"config file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _TomlSource(settings_cls, data))

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
