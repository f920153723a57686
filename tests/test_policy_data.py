"""data.plant mirrors the database: sites, windows, assets, contracts, lockout."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from broker.dev.demo import seed
from sessions.db import create_db_engine, session_scope
from sessions.models import MaintenanceWindow, PlantFlag, Site
from sessions.policy_data import LOCKOUT_FLAG, build_plant_data


def test_plant_document_follows_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    seed(url)
    engine = create_db_engine(url)
    with session_scope(engine) as db:
        plant = build_plant_data(db)["plant"]
    assert plant["assets"]["plc-press-3"]["purdue_level"] == 1
    [plc] = plant["assets"]["plc-press-3"]["endpoints"]
    assert (plc["protocol"], plc["inspected"], plc["settings"]["unit_ids"]) == ("modbus", True, [1])
    assert plc["settings"]["write_ranges"]["tune"] == [
        {"table": "coils", "first": 0, "last": 15},
        {"table": "holding_registers", "first": 0, "last": 99},
    ]
    assert plant["assets"]["scada-01"]["protocols"] == ["opcua", "ssh"]
    [ssh] = plant["assets"]["hist-01"]["endpoints"]
    assert ssh["settings"]["logins"]["read_only"] == ["maint"]
    contract = plant["vendor_orgs"]["acme-automation"]["contracts"][0]
    assert contract["site"] == "Riverside Plant" and contract["valid_until"].endswith("Z")
    assert plant["lockout"] == {"vendors": False, "reason": ""}
    assert plant["sites"]["Riverside Plant"] == {
        "timezone": "Europe/Berlin",
        "maintenance_windows": [],
    }

    with session_scope(engine) as db:
        site = db.exec(select(Site)).one()
        db.add(MaintenanceWindow(site_id=site.id, days=["tue"], start="22:00", end="02:00"))
        db.add(PlantFlag(key=LOCKOUT_FLAG, value={"vendors": True, "reason": "incident 7"}))
    with session_scope(engine) as db:
        plant = build_plant_data(db)["plant"]
    assert plant["sites"]["Riverside Plant"]["maintenance_windows"] == [
        {"days": ["tue"], "start": "22:00", "end": "02:00"}
    ]
    assert plant["lockout"] == {"vendors": True, "reason": "incident 7"}
