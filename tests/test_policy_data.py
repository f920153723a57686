"""data.plant mirrors the database: sites, windows, assets, contracts, lockout."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from broker.demo import seed
from sessions.db import create_db_engine, session_scope
from sessions.models import MaintenanceWindow, PlantFlag, Site
from sessions.policy_data import LOCKOUT_FLAG, _ranges, build_plant_data


def test_plant_document_follows_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    seed(url)
    engine = create_db_engine(url)
    with session_scope(engine) as db:
        plant = build_plant_data(db)["plant"]
    assert plant["assets"]["plc-press-3"]["purdue_level"] == 1
    assert plant["assets"]["plc-press-3"]["tune_write_ranges"] == [[0, 99]]
    assert plant["assets"]["hist-01"]["tune_write_ranges"] == []
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


def test_write_range_labels_fail_closed() -> None:
    assert _ranges("40001-40100, 7") == [[40001, 40100], [7, 7]]
    assert _ranges("10-5,abc,-3,70000,1-2-3") == []
