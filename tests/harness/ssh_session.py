"""A complete SSH-session rig: broker + real agent + real sshd (trusting the asset CA) + vendor.

``SshRig.build`` seeds the demo plant, starts an sshd that trusts the broker's asset CA, enrols
and runs a real ``conduit-agent`` declaring it, adds asset ``lab-ssh`` (Purdue level 3) routed
through that agent, signs ``alice`` (a vendor) in through the real IdP, and gets her an SSH
certificate through ``POST /api/ssh/cert``. ``grant`` gets her a grant the way a vendor does:
``POST /api/requests``, approval by real approvers through ``/api/requests/{id}/approve``,
activation by the broker's own tick; ``ssh`` runs the stock OpenSSH client against the front
door.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
from sqlmodel import col, select

from broker.dev.demo import seed
from broker.keys.ssh import SshKeys
from sessions.db import session_scope
from sessions.endpoints import validate_settings
from sessions.models import (
    Asset,
    AssetEndpoint,
    Grant,
    GrantState,
    Site,
    User,
    Zone,
)
from tests.harness.agent import AgentProcess, join, make_token, wait_connected, write_config
from tests.harness.broker import RunningBroker, web_login
from tests.harness.sshd import RunningSshd, start_sshd
from tests.harness.wait import TIMEOUT_S, wait_until

ASSET = "lab-ssh"
# A test PLC's endpoint settings: tune may write holding registers 0-99 (and no coils).
PLC_SETTINGS: dict[str, Any] = {
    "write_ranges": {"tune": [{"table": "holding_registers", "first": 0, "last": 99}]}
}


@dataclass
class SshRig:
    broker: RunningBroker
    sshd: RunningSshd
    agent: AgentProcess
    agent_id: str
    workdir: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> user id
    keys: dict[str, Path] = field(default_factory=dict)  # name -> private key path
    tokens: dict[str, str] = field(default_factory=dict)  # name -> API bearer token

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
        rig = cls(broker, sshd, agent, agent_id, workdir)
        rig.add_asset(ASSET, sshd.port, "ssh", settings={"logins": [sshd.user]})
        return rig

    def close(self) -> None:
        self.agent.stop()
        self.sshd.stop()

    def sign_in(self, name: str) -> str:
        """Sign ``name`` in through the real IdP once; returns an API bearer token."""
        if name in self.tokens:
            return self.tokens[name]
        with httpx2.Client(timeout=TIMEOUT_S) as client:
            web_login(client, self.broker.url, name, f"{name}-demo-pw")
        with session_scope(self.broker.services.engine) as db:
            user = db.exec(select(User).where(User.sub.endswith(name))).one()  # type: ignore[attr-defined]
            self.users[name] = user.id
        self.tokens[name], _ = self.broker.services.tokens.issue(self.users[name])
        return self.tokens[name]

    def vendor(self, name: str = "alice") -> Path:
        """Sign ``name`` in for real, get an SSH certificate; returns the private key path."""
        token = self.sign_in(name)
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
        protocol: str,
        *,
        zone: str = "enterprise-dmz",
        settings: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """An asset with one declared endpoint on ``host``:``port`` behind the rig's agent
        (the agent must declare it at build)."""
        with session_scope(self.broker.services.engine, write=True) as db:
            site = db.exec(select(Site).where(Site.name == "Riverside Plant")).one()
            zone_row = db.exec(select(Zone).where(Zone.name == zone)).one()
            asset = Asset(
                name=name,
                site_id=site.id,
                zone_id=zone_row.id,
                criticality="medium",
                owner_group="ot-approvers",
                labels=labels or {},
                agent_id=self.agent_id,
            )
            db.add(asset)
            db.flush()
            db.add(
                AssetEndpoint(
                    asset_id=asset.id,
                    name=protocol,
                    host=host,
                    port=port,
                    protocol=protocol,
                    settings=validate_settings(protocol, settings or {}),
                )
            )
        self.broker.refresh_policy_data()

    def declare(self, asset: str, settings: dict[str, Any]) -> None:
        """An admin changes the settings of ``asset``'s one endpoint (plant model)."""
        with session_scope(self.broker.services.engine, write=True) as db:
            ep = db.exec(
                select(AssetEndpoint)
                .join(Asset, col(Asset.id) == col(AssetEndpoint.asset_id))
                .where(Asset.name == asset)
            ).one()
            ep.settings = validate_settings(ep.protocol, settings)
            db.add(ep)
        self.broker.refresh_policy_data()

    def request(
        self,
        name: str = "alice",
        *,
        asset: str = ASSET,
        operation_class: str = "read_only",
        ports: list[int] | None = None,
        login: str | None = None,
        seconds: float = 3600,
    ) -> httpx2.Response:
        """``POST /api/requests`` as ``name`` (the vendor's own call); returns the response."""
        now = self.broker.services.clock.now()
        body: dict[str, Any] = {
            "asset": asset,
            "operation_class": operation_class,
            "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(seconds=seconds)).isoformat(),
            "reason": "test maintenance",
            "ticket": "CHG-TEST",
        }
        if ports is not None:
            body["ports"] = ports
        if login is not None:
            body["login"] = login
        return httpx2.post(
            f"{self.broker.url}/api/requests",
            json=body,
            headers={"Authorization": f"Bearer {self.sign_in(name)}"},
            timeout=30,
        )

    def approve(self, request_id: str, *approvers: str) -> str:
        """Approve as each of ``approvers`` (real sign-ins); returns the grant id once the
        broker's tick has activated it."""
        grant_id = ""
        for approver in approvers:
            resp = httpx2.post(
                f"{self.broker.url}/api/requests/{request_id}/approve",
                headers={"Authorization": f"Bearer {self.sign_in(approver)}"},
                timeout=30,
            )
            assert resp.status_code in (200, 201), resp.text
            grant_id = resp.json().get("grant_id") or grant_id
        assert grant_id, f"request {request_id} got no grant from {approvers}"
        # The broker's own tick activates it (a very short grant may already have expired).
        moved_on = (GrantState.ACTIVE, GrantState.EXPIRED)
        wait_until(lambda: self.grant_state(grant_id) in moved_on, "grant activation")
        return grant_id

    def grant_state(self, grant_id: str) -> str:
        with session_scope(self.broker.services.engine) as db:
            grant = db.get(Grant, grant_id)
            assert grant is not None
            return grant.state

    def grant(
        self,
        name: str = "alice",
        *,
        minutes: float = 60,
        ports: list[int] | None = None,
        asset: str = ASSET,
        operation_class: str = "read_only",
        login: str | None = None,
    ) -> str:
        """An active grant for ``name`` on ``asset`` through request → policy → approval.

        Approved by olga (and paul where the class needs two approvals); returns its id.
        """
        made = self.request(
            name,
            asset=asset,
            operation_class=operation_class,
            ports=ports,
            login=login,
            seconds=minutes * 60,
        )
        assert made.status_code == 201, made.text
        approvers = ("olga", "paul") if operation_class in ("program", "firmware") else ("olga",)
        return self.approve(made.json()["id"], *approvers)

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
