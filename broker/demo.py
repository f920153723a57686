"""The demo plant and the ``conduit demo`` runner (see :mod:`broker.cli.demo_cmd`)."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
from datetime import timedelta
from pathlib import Path

import uvicorn
from sqlalchemy import Engine
from sqlmodel import select

from broker.app import create_app
from broker.devidp import DEFAULT_USERS_PATH, start_dev_idp
from broker.settings import load_settings
from sessions.clock import Clock, SystemClock
from sessions.db import create_db_engine, migrate, session_scope
from sessions.models import Asset, Site, VendorContract, VendorOrg, Zone

DEMO_ZONES = (  # (name, Purdue level)
    ("enterprise-dmz", 3),
    ("supervisory", 2),
    ("press-line-control", 1),
    ("field-devices", 0),
)
DEMO_ASSETS = (  # (name, zone, criticality, owner group, protocols, port)
    ("hist-01", "enterprise-dmz", "medium", "ot-approvers", ["ssh"], 22),
    ("scada-01", "supervisory", "high", "ot-approvers", ["ssh", "opcua"], 22),
    ("hmi-press-3", "supervisory", "high", "ot-press-line", ["vnc"], 5900),
    ("plc-press-3", "press-line-control", "critical", "ot-press-line", ["modbus"], 502),
    ("drive-press-3", "field-devices", "critical", "ot-press-line", ["modbus"], 502),
)


def seed(database_url: str) -> None:
    """Create the demo plant once (idempotent) in the database at ``database_url``."""
    engine = create_db_engine(database_url)
    migrate(engine)
    seed_plant(engine, SystemClock())
    engine.dispose()


def seed_plant(engine: Engine, clock: Clock) -> None:
    """Insert the demo site, zones, assets and vendor contract unless already there."""
    now = clock.now()
    with session_scope(engine) as db:
        if db.exec(select(Site).where(Site.name == "Riverside Plant")).first() is not None:
            return
        site = Site(name="Riverside Plant", timezone="Europe/Berlin", description="Demo plant")
        db.add(site)
        db.flush()
        zones = {}
        for name, level in DEMO_ZONES:
            zone = Zone(site_id=site.id, name=name, purdue_level=level)
            db.add(zone)
            db.flush()
            zones[name] = zone.id
        for name, zone_name, crit, owner, protocols, port in DEMO_ASSETS:
            db.add(
                Asset(
                    name=name,
                    site_id=site.id,
                    zone_id=zones[zone_name],
                    criticality=crit,
                    owner_group=owner,
                    protocols=protocols,
                    endpoint_host="127.0.0.1",
                    endpoint_port=port,
                    labels={
                        "line": "press",
                        **({"tune_write_ranges": "0-99"} if "modbus" in protocols else {}),
                    },
                    created_at=now,
                )
            )
        org = VendorOrg(slug="acme-automation", name="ACME Automation", created_at=now)
        db.add(org)
        db.flush()
        db.add(
            VendorContract(
                vendor_org_id=org.id,
                site_id=site.id,
                reference="SVC-2026-001",
                valid_from=now - timedelta(days=30),
                valid_until=now + timedelta(days=365),
                created_at=now,
            )
        )


def run(args: argparse.Namespace) -> int:
    workdir: Path = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    public_url = f"http://127.0.0.1:{args.port}"
    secret_file = workdir / "client-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    client_secret = secret_file.read_text().strip()
    clients = [
        {
            "client_id": "conduit",
            "client_secret": client_secret,
            "redirect_uris": [f"{public_url}/auth/callback"],
            "post_logout_redirect_uris": [f"{public_url}/"],
        }
    ]
    idp = start_dev_idp(workdir / "idp", clients, port=args.idp_port)
    try:
        settings = load_settings(
            None,
            mode="dev",
            public_url=public_url,
            listen_port=args.port,
            database_url=f"sqlite:///{workdir / 'conduit.db'}",
            data_dir=workdir / "var",
            oidc={"issuer": idp.issuer, "client_id": "conduit", "client_secret": client_secret},
        )
        seed(settings.database_url)
        users = json.loads(DEFAULT_USERS_PATH.read_text())
        print("\nConduit demo is running.\n")
        print(f"  Broker:  {public_url}/")
        print(f"  IdP:     {idp.issuer} (development IdP, demo users only)\n")
        print("  Demo logins (username / password):")
        for u in users:
            extra = f"  one-time code {u['otp']}" if u.get("otp") else ""
            groups = ", ".join(u.get("groups", [])) or "no groups: signs in with no role"
            print(f"    {u['username']:<7} / {u['password']:<15} {u['name']} ({groups}){extra}")
        print("\n  Policy:  sign in as adam; Policy shows the active Rego bundle, What-if asks it")
        print(f"  CLI:     conduit login --broker {public_url} --no-browser")
        print("  Stop with Ctrl-C.\n", flush=True)
        logging.basicConfig(level=logging.WARNING)
        uvicorn.run(
            create_app(settings),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            server_header=False,
        )
    finally:
        idp.stop()
    return 0
