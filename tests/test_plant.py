"""The plant as code: sessions.plant (export, diff, apply), its schema, the API and the CLI."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from sqlmodel import select

from broker.dev.demo import DEMO_PLANT_PATH
from sessions.agents.service import AgentService
from sessions.audit import AuditLog
from sessions.db import session_scope
from sessions.endpoints import endpoints_of
from sessions.errors import ConflictError, ValidationError
from sessions.identity import Identity, upsert_user
from sessions.models import (
    AccessRequest,
    Agent,
    AgentEndpoint,
    Asset,
    Site,
    User,
    VendorOrg,
    route_agent,
)
from sessions.plant import Change, PlantError, apply, diff, export, line_of, load_yaml, parse
from sessions.plant.document import DOCUMENT_CLASSES
from sessions.policy_data import build_plant_data
from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events, same_origin_api, web_login
from tests.harness.cli import cli_env, run_conduit

NOW = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)
DEMO_TEXT = DEMO_PLANT_PATH.read_text(encoding="utf-8")
PLC_RANGE = "- {table: holding_registers, first: 0, last: 99}"


def demo_data() -> Any:
    return load_yaml(DEMO_TEXT)[0]


def apply_data(engine: sa.Engine, data: Any, *, archive: bool = False) -> dict[str, int]:
    doc = parse(data, NOW)
    with session_scope(engine, write=True) as db:
        plan = diff(db, doc, archive=archive)
        apply(db, plan, NOW)
    return plan.summary()


def exported(engine: sa.Engine) -> dict[str, Any]:
    with session_scope(engine) as db:
        return export(db).to_data()


def test_the_demo_file_creates_the_demo_plant_and_a_second_apply_changes_nothing(
    engine: sa.Engine,
) -> None:
    assert apply_data(engine, demo_data()) == {
        "created": 12,  # 1 site, 4 zones, 5 assets, 1 vendor org, 1 contract
        "changed": 0,
        "removed": 0,
        "archived": 0,
    }
    with session_scope(engine) as db:
        plant = build_plant_data(db)["plant"]
    [plc] = plant["assets"]["plc-press-3"]["endpoints"]
    assert plc["settings"]["write_ranges"]["tune"][1] == {
        "table": "holding_registers",
        "first": 0,
        "last": 99,
    }
    [contract] = plant["vendor_orgs"]["acme-automation"]["contracts"]
    assert (contract["valid_from"], contract["valid_until"]) == (
        "2026-11-06T00:00:00Z",  # -30d from today 00:00 UTC
        "2027-12-06T00:00:00Z",
    )
    assert apply_data(engine, demo_data())["created"] == 0
    with session_scope(engine) as db:
        assert diff(db, parse(demo_data(), NOW + timedelta(hours=5))).changes == ()


def test_export_then_apply_is_a_no_op(engine: sa.Engine) -> None:
    apply_data(engine, demo_data())
    before = exported(engine)
    text = json.dumps(before)  # as it travels to the broker
    with session_scope(engine) as db:
        assert diff(db, parse(json.loads(text), NOW + timedelta(days=3))).changes == ()
    assert exported(engine) == before


def test_dry_run_shows_a_changed_write_range_and_changes_nothing(engine: sa.Engine) -> None:
    apply_data(engine, demo_data())
    before = exported(engine)
    data, _ = load_yaml(DEMO_TEXT.replace(PLC_RANGE, PLC_RANGE.replace("99", "49")))
    with session_scope(engine) as db:
        plan = diff(db, parse(data, NOW))
    [change] = plan.changes
    assert (change.kind, change.key, change.action) == ("asset", "plc-press-3", "changed")
    assert change.before and change.after
    ranges = [
        c["endpoints"][0]["settings"]["write_ranges"]["tune"][1]["last"]
        for c in (change.before, change.after)
    ]
    assert ranges == [99, 49]
    assert exported(engine) == before


def _history(engine: sa.Engine, asset: str, org: str | None = None) -> None:
    with session_scope(engine) as db:
        org_id = db.exec(select(VendorOrg.id).where(VendorOrg.slug == org)).first()
        user = User(issuer="https://idp", sub="v1", vendor_org_id=org_id)
        db.add(user)
        db.flush()
        asset_id = db.exec(select(Asset.id).where(Asset.name == asset)).one()
        db.add(
            AccessRequest(
                requester_id=user.id,
                asset_id=asset_id,
                operation_class="read_only",
                starts_at=NOW,
                ends_at=NOW + timedelta(hours=1),
                reason="diagnostics",
            )
        )


def test_removing_an_asset_with_history_needs_archive(engine: sa.Engine) -> None:
    apply_data(engine, demo_data())
    _history(engine, "hmi-press-3")
    data = demo_data()
    data["assets"] = [a for a in data["assets"] if a["name"] != "hmi-press-3"]
    before = exported(engine)
    with pytest.raises(ConflictError) as refused:
        apply_data(engine, data)
    assert refused.value.message == (
        "plant apply refused: asset hmi-press-3: has history (1 requests); use --archive"
    )
    assert exported(engine) == before
    assert apply_data(engine, data, archive=True)["archived"] == 1
    with session_scope(engine) as db:
        hmi = db.exec(select(Asset).where(Asset.name == "hmi-press-3")).one()
        assert hmi.archived_at is not None
        assert "hmi-press-3" not in build_plant_data(db)["plant"]["assets"]
        assert diff(db, parse(data, NOW)).changes == ()  # archived: gone from the plant
        plan = diff(db, parse(demo_data(), NOW))  # naming it again brings it back
    assert [(c.key, c.action) for c in plan.changes] == [("hmi-press-3", "changed")]
    # An asset without history is simply removed.
    data["assets"] = [a for a in data["assets"] if a["name"] != "drive-press-3"]
    assert apply_data(engine, data)["removed"] == 1


def test_a_contract_with_history_is_kept_and_ending_it_keeps_it(engine: sa.Engine) -> None:
    apply_data(engine, demo_data())
    data = demo_data()
    data["vendor_orgs"][0]["contracts"] = []
    assert diff_of(engine, data)[0].blocked == ""  # no requests yet: it could go
    _history(engine, "hmi-press-3", org="acme-automation")  # under the site contract
    before = exported(engine)
    with pytest.raises(ConflictError) as refused:
        apply_data(engine, data)
    assert refused.value.message == (
        "plant apply refused: contract acme-automation/SVC-2026-001: has history (1 requests "
        "under it); end it by moving valid_until instead"
    )
    assert exported(engine) == before
    ended = demo_data()
    ended["vendor_orgs"][0]["contracts"][0]["valid_until"] = "+1d"
    assert apply_data(engine, ended)["changed"] == 1
    assert diff_of(engine, data)[0].blocked.startswith("has history (1 requests")


def diff_of(engine: sa.Engine, data: Any) -> tuple[Change, ...]:
    with session_scope(engine) as db:
        return diff(db, parse(data, NOW)).changes


def test_idp_values_map_org_claims_to_the_vendor_org(engine: sa.Engine) -> None:
    data = demo_data()
    data["vendor_orgs"][0] |= {"idp_values": ["ACME GmbH"], "contacts": ["svc@acme.example"]}
    apply_data(engine, data)
    with session_scope(engine) as db:
        identity = Identity("https://idp", "u-1", None, None, vendor_org="ACME GmbH")
        user = upsert_user(db, identity, ["vendor"], ManualClock(NOW))
        org = db.get(VendorOrg, user.vendor_org_id)
        assert org is not None and org.slug == "acme-automation"
        assert org.contacts == ["svc@acme.example"]
        assert len(db.exec(select(VendorOrg)).all()) == 1


def _swap(old: str, new: str) -> str:
    assert old in DEMO_TEXT, old
    return DEMO_TEXT.replace(old, new, 1)


BAD_INPUTS = {
    "unknown zone": (
        _swap("zone: field-devices", "zone: press-floor"),
        "assets[4].zone: unknown zone 'press-floor' in site 'Riverside Plant'",
        77,
    ),
    "Purdue level 7": (
        _swap("purdue_level: 0}", "purdue_level: 7}"),
        "sites[0].zones[3].purdue_level: must be a Purdue level 0-5, got 7",
        12,
    ),
    "port 0": (
        _swap("port: 5900", "port: 0"),
        "assets[2].endpoints[0].port: must be a port 1-65535, got 0",
        55,
    ),
    "port 70000": (
        _swap("port: 4840", "port: 70000"),
        "assets[1].endpoints[0].port: must be a port 1-65535, got 70000",
        39,
    ),
    "overlapping ranges": (
        _swap(
            PLC_RANGE,
            PLC_RANGE + "\n              - {table: holding_registers, first: 50, last: 60}",
        ),
        "assets[3].endpoints[0].settings.write_ranges.tune: holding_registers ranges 0-99 and "
        "50-60 overlap",
        71,
    ),
    "inverted range": (
        _swap(PLC_RANGE, PLC_RANGE.replace("first: 0, last: 99", "first: 99, last: 0")),
        "assets[3].endpoints[0].settings.write_ranges.tune[1]: range 99-0 is inverted "
        "(last before first)",
        73,
    ),
    "time zone": (
        _swap("timezone: Europe/Berlin", "timezone: Europe/Springfield"),
        "sites[0].timezone: 'Europe/Springfield' is not an IANA time zone name",
        6,
    ),
    "duplicate asset": (
        _swap("name: drive-press-3", "name: plc-press-3"),
        "assets[4]: duplicate asset name 'plc-press-3'",
        75,
    ),
    "duplicate zone": (
        _swap("name: supervisory, purdue", "name: enterprise-dmz, purdue"),
        "sites[0].zones[1]: duplicate zone name 'enterprise-dmz'",
        10,
    ),
    "contract ends first": (
        _swap("valid_until: +365d", "valid_until: -31d"),
        "vendor_orgs[0].contracts[0].valid_until: the contract ends (2026-11-05T00:00:00Z) "
        "before it starts (2026-11-06T00:00:00Z)",
        92,
    ),
}


def _no_signer(public_key: str, agent_id: str) -> tuple[str, int]:
    raise AssertionError("no agent joins here")


def test_an_endpoint_names_the_agent_that_reaches_it(engine: sa.Engine) -> None:
    """``agent`` (by name) routes one endpoint; others fall back to the asset's agent; an
    unknown name is refused naming the path, with nothing changed; export/apply round-trips."""
    apply_data(engine, demo_data())
    with session_scope(engine, write=True) as db:
        site = db.exec(select(Site)).one()
        edge, other = (Agent(name=n, site_id=site.id, state="active") for n in ("edge-1", "edge-2"))
        db.add_all([edge, other])
        db.flush()
        scada = db.exec(select(Asset).where(Asset.name == "scada-01")).one()
        scada.agent_id = other.id  # the fallback for scada-01's other endpoint
        db.add(scada)
        db.add(AgentEndpoint(agent_id=edge.id, host="127.0.0.1", port=4840, protocol="opcua"))
        edge_id, other_id = edge.id, other.id
    data = demo_data()
    place = [a["name"] for a in data["assets"]].index("scada-01")
    opcua = next(e for e in data["assets"][place]["endpoints"] if e["name"] == "opcua")
    opcua["agent"] = "edge-9"
    with pytest.raises(PlantError) as refused:
        apply_data(engine, data)
    assert refused.value.path == f"assets[{place}].endpoints[0].agent"
    assert "unknown agent 'edge-9'" in str(refused.value)
    opcua["agent"] = "edge-1"
    assert apply_data(engine, data)["changed"] == 1
    with session_scope(engine) as db:
        asset = db.exec(select(Asset).where(Asset.name == "scada-01")).one()
        routes = {e.name: route_agent(asset, e) for e in endpoints_of(db, asset.id)}
    assert routes == {"opcua": edge_id, "ssh": other_id}
    again = exported(engine)
    scada = next(a for a in again["assets"] if a["name"] == "scada-01")
    assert [e.get("agent") for e in scada["endpoints"]] == ["edge-1", None]
    assert apply_data(engine, again)["changed"] == 0
    clock = ManualClock(NOW)
    agents = AgentService(engine, AuditLog(engine, clock), clock, _no_signer, broker_pin="p" * 43)
    views = {v.agent.name: v for v in agents.list()}
    assert list(views["edge-1"].assets.values()) == [["scada-01"]]  # its 4840 is adopted
    assert views["edge-1"].undeclared_assets == []
    assert views["edge-2"].undeclared_assets == ["scada-01"]  # the ssh endpoint: undeclared


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_a_clear_message_and_nothing_changes(
    engine: sa.Engine, case: str
) -> None:
    text, message, line = BAD_INPUTS[case]
    apply_data(engine, demo_data())
    before = exported(engine)
    data, lines = load_yaml(text)
    with pytest.raises(PlantError) as bad:
        apply_data(engine, data)
    assert bad.value.message == message
    assert line_of(lines, bad.value.path) == line
    assert exported(engine) == before


def test_a_yaml_syntax_error_names_its_line() -> None:
    with pytest.raises(ValidationError) as bad:
        load_yaml(_swap("labels: {line: press}", "labels: {line: press"))
    assert bad.value.message.startswith("line 21: YAML syntax error: ")
    with pytest.raises(ValidationError) as dup:
        load_yaml("version: 1\nsites: []\nsites: []\n")
    assert dup.value.message == "line 3: document: duplicate key 'sites'"


def _schema_objects(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    defs = schema["$defs"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return defs[ref.rsplit("/", 1)[1]] if ref else node

    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        found[path] = node
        for key, sub in node["properties"].items():
            if sub.get("type") == "array" and "$ref" in sub.get("items", {}):
                walk(resolve(sub["items"]), f"{path}.{key}[]".lstrip("."))

    walk(schema, "")
    return found


def test_the_json_schema_agrees_with_the_document_model() -> None:
    schema = json.loads((Path(__file__).parents[1] / "docs" / "plant.schema.json").read_text())
    objects = _schema_objects(schema)
    assert set(objects) == set(DOCUMENT_CLASSES)
    for path, cls in DOCUMENT_CLASSES.items():
        fields = cls.__dataclass_fields__
        required = {
            n
            for n, f in fields.items()
            if f.default is f.default_factory  # both MISSING
        }
        assert set(objects[path]["properties"]) == set(fields), path
        assert set(objects[path].get("required", [])) == required, path


# --------------------------------------------------------------------------- broker and CLI

WITH_MFA = {
    "sub": "u-vendor-alice",
    "email": "alice@acme-automation.example",
    "groups": ["conduit-vendors"],
    "amr": ["pwd", "otp", "mfa"],
    "vendor_org": "acme-automation",
}


def _tune_ranges(http: httpx2.Client, broker: RunningBroker) -> list[dict[str, Any]]:
    body = {
        "claims": WITH_MFA,
        "with_grant": True,
        "asset": "plc-press-3",
        "action": {"kind": "tcp", "port": 502, "operation_class": "tune"},
    }
    resp = http.post(f"{broker.url}/api/policy/whatif", json=body)
    assert resp.status_code == 200, resp.text
    decision = resp.json()["decision"]
    assert decision["allow"], decision["reasons"]
    ranges: list[dict[str, Any]] = decision["obligations"]["modbus"]["write_ranges"]
    return [r for r in ranges if r["table"] == "holding_registers"]


def test_cli_apply_dry_run_then_apply_changes_the_next_modbus_decision(
    broker: RunningBroker, tmp_path: Path, http: httpx2.Client
) -> None:
    env = cli_env(broker, tmp_path, "adam")
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(DEMO_TEXT)
    first = run_conduit("plant", "apply", str(plant_file), env=env)
    assert first.returncode == 0, first.stderr
    assert "Applied: 12 created, 0 changed, 0 removed, 0 archived." in first.stdout
    web_login(http, broker.url, "adam", "adam-demo-pw")
    same_origin_api(http, broker.url)
    assert [(r["first"], r["last"]) for r in _tune_ranges(http, broker)] == [(0, 99)]

    plant_file.write_text(DEMO_TEXT.replace(PLC_RANGE, PLC_RANGE.replace("99", "49")))
    dry = run_conduit("plant", "apply", str(plant_file), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "~ asset plc-press-3 (changed)" in dry.stdout
    assert "Dry run, nothing changed: 0 created, 1 changed" in dry.stdout
    assert [(r["first"], r["last"]) for r in _tune_ranges(http, broker)] == [(0, 99)]

    done = run_conduit("plant", "apply", str(plant_file), env=env)
    assert done.returncode == 0 and "Applied: 0 created, 1 changed" in done.stdout
    assert [(r["first"], r["last"]) for r in _tune_ranges(http, broker)] == [(0, 49)]
    [event] = audit_events(broker, "plant.asset.changed")
    assert event["subject"] == "plc-press-3"
    tune = event["details"]["after"]["endpoints"][0]["settings"]["write_ranges"]["tune"]
    assert tune[1]["last"] == 49
    assert len(audit_events(broker, "plant.zone.created")) == 4

    again = run_conduit("plant", "apply", str(plant_file), env=env)
    assert "No changes: the plant already matches the file." in again.stdout
    exported_yaml = run_conduit("plant", "export", env=env)
    assert exported_yaml.returncode == 0
    (tmp_path / "exported.yaml").write_text(exported_yaml.stdout)
    round_trip = run_conduit("plant", "apply", str(tmp_path / "exported.yaml"), env=env)
    assert "No changes" in round_trip.stdout, round_trip.stdout

    plant_file.write_text(_swap("purdue_level: 0}", "purdue_level: 7}"))
    bad = run_conduit("plant", "apply", str(plant_file), env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        f"conduit: {plant_file}:12: sites[0].zones[3].purdue_level: must be a Purdue level 0-5, "
        "got 7"
    )


def test_only_admins_apply_and_the_broker_validates_again(
    broker: RunningBroker, tmp_path: Path
) -> None:
    approver = cli_env(broker, tmp_path, "olga")
    refused = run_conduit("plant", "export", env=approver).stderr
    assert refused == "conduit: this command needs the admin role; you have: approver\n"
    with httpx2.Client() as http:
        web_login(http, broker.url, "adam", "adam-demo-pw")
        same_origin_api(http, broker.url)
        bad = copy.deepcopy(demo_data())
        bad["assets"][0]["endpoints"][0]["port"] = 70000
        resp = http.post(f"{broker.url}/api/plant/apply", json={"document": bad})
        assert resp.status_code == 400
        assert resp.json()["message"] == (
            "assets[0].endpoints[0].port: must be a port 1-65535, got 70000"
        )
        assert http.get(f"{broker.url}/api/plant").json()["assets"] == []


def test_archiving_through_the_api_hides_the_asset_from_vendors(broker: RunningBroker) -> None:
    with httpx2.Client() as adam, httpx2.Client() as alice:
        web_login(adam, broker.url, "adam", "adam-demo-pw")
        same_origin_api(adam, broker.url)
        assert adam.post(f"{broker.url}/api/plant/apply", json={"document": demo_data()}).is_success
        web_login(alice, broker.url, "alice", "alice-demo-pw")
        same_origin_api(alice, broker.url)
        ask = {"asset": "hmi-press-3", "duration": "1h", "reason": "diagnostics"}
        assert alice.post(f"{broker.url}/api/requests", json=ask).status_code < 500
        assert '<option value="hmi-press-3"' in alice.get(f"{broker.url}/vendor").text
        data = demo_data()
        data["assets"] = [a for a in data["assets"] if a["name"] != "hmi-press-3"]
        refused = adam.post(f"{broker.url}/api/plant/apply", json={"document": data})
        assert refused.status_code == 409, refused.text
        assert "has history (1 requests); use --archive" in refused.json()["message"]
        done = adam.post(
            f"{broker.url}/api/plant/apply", json={"document": data, "archive": True}
        ).json()
        assert done["summary"]["archived"] == 1
        [event] = audit_events(broker, "plant.asset.archived")
        assert event["details"]["after"] is None
        assert event["details"]["before"]["name"] == "hmi-press-3"
        assert '<option value="hmi-press-3"' not in alice.get(f"{broker.url}/vendor").text
        again = alice.post(f"{broker.url}/api/requests", json=ask)
        assert again.status_code == 400
        assert again.json()["message"] == (
            "asset 'hmi-press-3' is archived: it takes no new access requests"
        )
