"""The asset CA's public key is for admins setting up assets, never for anonymous callers."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.harness.broker import RunningBroker, audit_events, web_login
from tests.harness.cli import cli_env, run_conduit


def test_asset_ca_is_not_served_anonymously(broker: RunningBroker) -> None:
    info = httpx2.get(f"{broker.url}/api/ssh/info")
    assert info.status_code == 200 and "asset_ca" not in info.json()
    anonymous = httpx2.get(f"{broker.url}/api/ssh/asset-ca")
    assert anonymous.status_code == 401
    ca_line = broker.services.ssh_keys.asset_ca.export_public_key().decode().split()[1]
    assert ca_line not in info.text and ca_line not in anonymous.text


def test_only_admins_get_the_asset_ca_with_setup_instructions(
    broker: RunningBroker, tmp_path: Path
) -> None:
    with httpx2.Client() as alice:
        web_login(alice, broker.url, "alice", "alice-demo-pw")
        assert alice.get(f"{broker.url}/api/ssh/asset-ca").status_code == 403
        assert "asset-ca-key" not in alice.get(f"{broker.url}/admin/assets").text
    with httpx2.Client() as adam:
        web_login(adam, broker.url, "adam", "adam-demo-pw")
        answer = adam.get(f"{broker.url}/api/ssh/asset-ca").json()
        page = adam.get(f"{broker.url}/admin/assets").text
    ca_line = broker.services.ssh_keys.asset_ca.export_public_key().decode().strip()
    assert answer["public_key"] == ca_line
    assert "TrustedUserCAKeys" in answer["setup"] and "AuthorizedPrincipalsFile" in answer["setup"]
    assert ca_line.split()[1] in page and "AuthorizedPrincipalsFile" in page
    [read] = audit_events(broker, "ssh.asset_ca.read")
    assert read["outcome"] == "ok"

    out = run_conduit("asset-ca", env=cli_env(broker, tmp_path, "adam"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == ca_line and "TrustedUserCAKeys" in out.stdout
    refused = run_conduit("asset-ca", env=cli_env(broker, tmp_path, "alice"))
    assert refused.returncode != 0 and ca_line.split()[1] not in refused.stdout + refused.stderr
