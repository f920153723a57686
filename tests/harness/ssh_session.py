"""A complete SSH-session rig: broker + real agent + real sshd (trusting the asset CA) + vendor.

``SshRig.build`` seeds the demo plant, starts an sshd that trusts the broker's asset CA, enrols
and runs a real ``conduit-agent`` declaring it, adds asset ``lab-ssh`` (Purdue level 3) routed
through that agent, signs ``alice`` (a vendor) in through the real IdP, and gets her an SSH
certificate through ``POST /api/ssh/cert``. ``grant`` inserts an active grant; ``ssh`` runs the
stock OpenSSH client against the front door.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
from sqlmodel import select

from broker.demo import seed
from broker.ssh_keys import SshKeys
from sessions.db import session_scope
from sessions.models import (
    AccessRequest,
    AccessRequestState,
    Asset,
    Grant,
    GrantState,
    Site,
    User,
    Zone,
)
from tests.harness.agent import AgentProcess, join, make_token, wait_connected, write_config
from tests.harness.broker import RunningBroker, web_login
from tests.harness.sshd import RunningSshd, start_sshd
from tests.harness.wait import TIMEOUT_S

ASSET = "lab-ssh"


@dataclass
class SshRig:
    broker: RunningBroker
    sshd: RunningSshd
    agent: AgentProcess
    agent_id: str
    workdir: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> user id
    keys: dict[str, Path] = field(default_factory=dict)  # name -> private key path

    @classmethod
    def build(
        cls,
        broker: RunningBroker,
        workdir: Path,
        *,
        extra_sshd: str = "",
        extra_endpoints: list[tuple[str, int, str]] | None = None,
    ) -> SshRig:
        seed(broker.services.settings.database_url)
        ca = SshKeys.public(broker.services.ssh_keys.asset_ca)
        sshd = start_sshd(workdir / "sshd", trusted_user_ca_keys=[ca], extra_config=extra_sshd)
        endpoints = [("127.0.0.1", sshd.port, "ssh"), *(extra_endpoints or [])]
        config = write_config(workdir / "agent", endpoints)
        agent_id = join(broker, make_token(broker, zone="enterprise-dmz"), config)
        agent = AgentProcess.start(config)
        wait_connected(broker, agent_id)
        with session_scope(broker.services.engine, write=True) as db:
            site = db.exec(select(Site).where(Site.name == "Riverside Plant")).one()
            zone = db.exec(select(Zone).where(Zone.name == "enterprise-dmz")).one()
            db.add(
                Asset(
                    name=ASSET,
                    site_id=site.id,
                    zone_id=zone.id,
                    criticality="medium",
                    owner_group="ot-approvers",
                    protocols=["ssh"],
                    endpoint_host="127.0.0.1",
                    endpoint_port=sshd.port,
                    agent_id=agent_id,
                )
            )
        broker.refresh_policy_data()
        return cls(broker, sshd, agent, agent_id, workdir)

    def close(self) -> None:
        self.agent.stop()
        self.sshd.stop()

    def vendor(self, name: str = "alice") -> Path:
        """Sign ``name`` in for real, get an SSH certificate; returns the private key path."""
        with httpx2.Client(timeout=TIMEOUT_S) as client:
            web_login(client, self.broker.url, name, f"{name}-demo-pw")
        with session_scope(self.broker.services.engine) as db:
            user = db.exec(select(User).where(User.sub.endswith(name))).one()  # type: ignore[attr-defined]
            self.users[name] = user.id
        token, _ = self.broker.services.tokens.issue(self.users[name])
        key = self.workdir / f"{name}_ed25519"
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                check=True,
                capture_output=True,
            )
        resp = httpx2.post(
            f"{self.broker.url}/api/ssh/cert",
            timeout=TIMEOUT_S,
            json={"public_key": key.with_suffix(".pub").read_text()},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code == 201, resp.text
        Path(f"{key}-cert.pub").write_text(resp.json()["certificate"] + "\n")
        self.keys[name] = key
        return key

    def add_asset(
        self,
        name: str,
        port: int,
        protocols: list[str],
        *,
        zone: str = "enterprise-dmz",
        labels: dict[str, str] | None = None,
    ) -> None:
        """Another asset on 127.0.0.1:``port`` behind the rig's agent (declare it at build)."""
        with session_scope(self.broker.services.engine, write=True) as db:
            site = db.exec(select(Site).where(Site.name == "Riverside Plant")).one()
            zone_row = db.exec(select(Zone).where(Zone.name == zone)).one()
            db.add(
                Asset(
                    name=name,
                    site_id=site.id,
                    zone_id=zone_row.id,
                    criticality="medium",
                    owner_group="ot-approvers",
                    protocols=protocols,
                    endpoint_host="127.0.0.1",
                    endpoint_port=port,
                    labels=labels or {},
                    agent_id=self.agent_id,
                )
            )
        self.broker.refresh_policy_data()

    def grant(
        self,
        name: str = "alice",
        *,
        minutes: float = 60,
        ports: list[int] | None = None,
        asset: str = ASSET,
        operation_class: str = "read_only",
    ) -> str:
        """An active grant for ``name`` on ``asset``, starting a minute ago."""
        clock = self.broker.services.clock
        now = clock.now()
        with session_scope(self.broker.services.engine, write=True) as db:
            asset_row = db.exec(select(Asset).where(Asset.name == asset)).one()
            request = AccessRequest(
                requester_id=self.users[name],
                asset_id=asset_row.id,
                operation_class=operation_class,
                ports=ports or [],
                starts_at=now - timedelta(minutes=1),
                ends_at=now + timedelta(minutes=minutes),
                reason="test",
                state=AccessRequestState.APPROVED,
                created_at=now,
            )
            db.add(request)
            db.flush()
            grant = Grant(
                request_id=request.id,
                user_id=self.users[name],
                asset_id=asset_row.id,
                operation_class=operation_class,
                starts_at=request.starts_at,
                ends_at=request.ends_at,
                state=GrantState.ACTIVE,
                created_at=now,
            )
            db.add(grant)
            db.flush()
            return grant.id

    def known_hosts(self) -> Path:
        path = self.workdir / "front_known_hosts"
        port = self.front_port
        host_key = SshKeys.public(self.broker.services.ssh_keys.host)
        path.write_text(f"[127.0.0.1]:{port} {host_key}\n")
        return path

    @property
    def front_port(self) -> int:
        front = self.broker.services.front
        assert front is not None
        return front.port

    def ssh_argv(
        self, name: str = "alice", *args: str, login: str | None = None, asset: str = ASSET
    ) -> list[str]:
        key = self.keys[name]
        return [
            "ssh", "-F", "/dev/null", "-i", str(key),
            "-o", f"CertificateFile={key}-cert.pub",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts()}",
            "-o", "StrictHostKeyChecking=yes",
            "-p", str(self.front_port),
            *args,
            f"{login or self.sshd.user}@{asset}@127.0.0.1",
        ]  # fmt: skip

    def ssh(
        self, command: str, name: str = "alice", *args: str, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_argv(name, *args, **kw), command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def sessions_json(broker: RunningBroker) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(s.as_dict())) for s in broker.services.live.list()]
