"""Storage: engines, migrations, models and constraints on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel, select

from sessions.db import (
    alembic_config,
    create_db_engine,
    current_revision,
    head_revision,
    migrate,
    session_scope,
    write_connection,
)
from sessions.errors import ConflictError, StorageError, ValidationError
from sessions.models import (
    AccessRequest,
    Agent,
    ApiToken,
    Approval,
    ApprovalVerdict,
    Asset,
    AssetEndpoint,
    CliAuthorization,
    CliAuthorizationKind,
    Criticality,
    EndpointProtocol,
    Grant,
    GrantState,
    LoginFlow,
    MaintenanceSession,
    OperationClass,
    Recording,
    RecordingFormat,
    SessionKind,
    Site,
    SshCertificate,
    User,
    VendorContract,
    VendorOrg,
    WebSession,
    Zone,
    metadata,
)
from sessions.testing import ManualClock
from sessions.types import UTCDateTime
from tests.harness.postgres import RunningPostgres

CEST = timezone(timedelta(hours=2))
T0 = datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def populated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[sa.Engine, dict[str, Any]]]:
    """A migrated database holding :func:`build_world`, shared by tests that never commit."""
    if request.param == "sqlite":
        eng = create_db_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'conduit.db'}")
    else:
        server: RunningPostgres = request.getfixturevalue("pg_server")
        eng = create_db_engine(server.create_database(f"t_{uuid4().hex[:16]}"))
    migrate(eng)
    world = build_world()
    save(eng, *world.values())
    yield eng, world
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = create_db_engine(f"sqlite:///{tmp_path / 'conduit.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


def build_world(t: datetime = T0) -> dict[str, Any]:
    """One row of every table (except the audit chain), consistently linked."""
    org = VendorOrg(slug="acme", name="ACME Automation", created_at=t)
    vendor = User(
        issuer="https://idp.example",
        sub="v-1",
        email="vera@acme.example",
        name="Vera Vendor",
        groups=["vendors", "acme"],
        roles=["vendor"],
        vendor_org_id=org.id,
        amr=["pwd", "otp"],
        created_at=t,
        last_login_at=t.astimezone(CEST),
    )
    approver = User(issuer="https://idp.example", sub="a-1", roles=["approver"], created_at=t)
    site = Site(name="plant-1", timezone="Europe/Berlin", description="Main plant")
    zone = Zone(site_id=site.id, name="cell-3", purdue_level=1)
    agent = Agent(name="agent-cell-3", site_id=site.id, zone_id=zone.id, created_at=t)
    asset = Asset(
        name="press-3-plc",
        site_id=site.id,
        zone_id=zone.id,
        criticality=Criticality.HIGH,
        owner_group="ot-press",
        labels={"line": "3", "vendor": "acme"},
        agent_id=agent.id,
        created_at=t,
    )
    endpoint = AssetEndpoint(
        asset_id=asset.id,
        name="plc",
        host="10.3.0.10",
        port=502,
        protocol=EndpointProtocol.MODBUS,
        settings={"write_ranges": {"tune": [{"table": "coils", "first": 0, "last": 9}]}},
        created_at=t,
    )
    contract = VendorContract(
        vendor_org_id=org.id,
        site_id=site.id,
        reference="C-2025-17",
        valid_from=t,
        valid_until=t + timedelta(days=365),
        created_at=t,
    )
    request = AccessRequest(
        requester_id=vendor.id,
        asset_id=asset.id,
        operation_class=OperationClass.READ_ONLY,
        protocols=["modbus"],
        ports=[502],
        starts_at=t,
        ends_at=t + timedelta(hours=2),
        reason="diagnostics",
        ticket="CHG-1042",
        decision_reasons=["policy: read_only allowed"],
        created_at=t,
    )
    approval = Approval(
        request_id=request.id,
        approver_id=approver.id,
        verdict=ApprovalVerdict.APPROVE,
        created_at=t,
    )
    grant = Grant(
        request_id=request.id,
        user_id=vendor.id,
        asset_id=asset.id,
        operation_class=OperationClass.READ_ONLY,
        starts_at=t,
        ends_at=t + timedelta(hours=2),
        state=GrantState.APPROVED,
        obligations={"record": "strict", "max_duration_s": 7200, "modbus": {"fc": [3, 4]}},
        created_at=t,
    )
    session = MaintenanceSession(
        grant_id=grant.id,
        user_id=vendor.id,
        asset_id=asset.id,
        kind=SessionKind.TCP,
        source_ip="192.0.2.7",
        started_at=t,
        bytes_up=2**40,
    )
    recording = Recording(
        session_id=session.id, format=RecordingFormat.PCAP, path="rec/1.pcap", created_at=t
    )
    flow = LoginFlow(
        state_hash="a" * 64,
        nonce="n",
        code_verifier="v",
        browser_binding_hash="b" * 64,
        return_to="/",
        created_at=t,
        expires_at=t + timedelta(minutes=10),
    )
    web = WebSession(
        id_hash="c" * 64,
        user_id=vendor.id,
        csrf_token="csrf",
        created_at=t,
        expires_at=t + timedelta(hours=8),
        last_seen_at=t,
    )
    token = ApiToken(
        token_hash="d" * 64,
        user_id=vendor.id,
        created_at=t,
        expires_at=t + timedelta(days=1),
        amr=["pwd", "otp"],
        roles=["vendor"],
        parent_session="c" * 64,
    )
    cert = SshCertificate(
        serial=2**63 - 1,
        user_id=vendor.id,
        token_id=token.id,
        key_id="alice@example",
        key_sha256="SHA256:x",
        amr=["pwd", "otp"],
        roles=["vendor"],
        issued_at=t,
        expires_at=t + timedelta(hours=1),
    )
    cli = CliAuthorization(
        kind=CliAuthorizationKind.DEVICE,
        device_code_hash="e" * 64,
        user_code="WDJB-MJHT",
        client_name="conduit-cli",
        created_at=t,
        expires_at=t + timedelta(minutes=15),
    )
    return {
        "org": org,
        "vendor": vendor,
        "approver": approver,
        "site": site,
        "zone": zone,
        "agent": agent,
        "asset": asset,
        "endpoint": endpoint,
        "contract": contract,
        "request": request,
        "approval": approval,
        "grant": grant,
        "session": session,
        "recording": recording,
        "flow": flow,
        "web": web,
        "token": token,
        "cert": cert,
        "cli": cli,
    }


def save(engine: sa.Engine, *rows: SQLModel) -> None:
    with session_scope(engine) as db:
        for row in rows:
            db.add(row)
            db.flush()  # insert in argument order: parents before children


def save_world(engine: sa.Engine) -> dict[str, Any]:
    world = build_world()
    save(engine, *world.values())
    return world


# --------------------------------------------------------------------------- schema


def test_migrate_creates_every_table_and_is_idempotent(engine: sa.Engine) -> None:
    assert set(sa.inspect(engine).get_table_names()) >= set(metadata.tables)
    assert current_revision(engine) == head_revision() == "0011_session_protocols"
    migrate(engine)  # already at head: no-op
    assert current_revision(engine) == head_revision()


def test_migrated_schema_matches_models(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_unmigrated_database_has_no_revision(tmp_path: Path) -> None:
    eng = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert current_revision(eng) is None
    finally:
        eng.dispose()


def test_sqlite_connection_settings(sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_sqlite_write_scopes_take_the_write_lock_first(sqlite_engine: sa.Engine) -> None:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sqlite_engine, "before_cursor_execute", record)
    with session_scope(sqlite_engine, write=True) as db:
        db.exec(select(Site)).all()
    with write_connection(sqlite_engine) as conn:
        conn.execute(sa.text("SELECT 1"))
    with session_scope(sqlite_engine) as db:
        db.exec(select(Site)).all()
    begins = [s for s in seen if s.startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE", "BEGIN IMMEDIATE", "BEGIN DEFERRED"]


def test_in_memory_sqlite_for_unit_tests() -> None:
    eng = create_db_engine("sqlite://")
    try:
        migrate(eng)
        save_world(eng)
        with session_scope(eng) as db:
            assert db.exec(select(Asset)).one().name == "press-3-plc"
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u:pw@127.0.0.1:5432/db", "postgresql+psycopg"),
        ("postgresql://u@127.0.0.1/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@127.0.0.1/db", "postgresql+psycopg"),
        ("sqlite:///relative.db", "sqlite"),
    ],
)
def test_accepted_urls(url: str, driver: str) -> None:
    eng = create_db_engine(url)  # no connection is made
    assert eng.url.drivername == driver
    eng.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@127.0.0.1/db",
        "postgresql+psycopg2://u@127.0.0.1/db",
        "sqlite:///:memory:",
        "sqlite:///file:x?mode=memory&uri=true",
        "not a url",
    ],
)
def test_rejected_urls(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        create_db_engine(url)
    assert info.value.code == "invalid"


def test_rejected_url_message_hides_password() -> None:
    with pytest.raises(ValidationError, match=r"\*\*\*") as info:
        create_db_engine("mysql://u:hunter2@127.0.0.1/db")
    assert "hunter2" not in str(info.value)


def test_unreachable_database_is_a_storage_error() -> None:
    from tests.harness.ports import free_port

    eng = create_db_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(StorageError):
            migrate(eng)
    finally:
        eng.dispose()


# --------------------------------------------------------------------------- round trips


def test_every_model_round_trips(engine: sa.Engine) -> None:
    world = save_world(engine)
    with session_scope(engine) as db:
        for name, original in world.items():
            model = type(original)
            key = sa.inspect(model).primary_key[0].name
            loaded = db.get(model, getattr(original, key))
            assert loaded is not None, name
            assert loaded.model_dump() == original.model_dump(), name


def test_datetimes_come_back_aware_utc_with_microseconds(engine: sa.Engine) -> None:
    world = save_world(engine)
    vendor = world["vendor"]
    assert isinstance(vendor, User)
    with session_scope(engine) as db:
        loaded = db.get(User, vendor.id)
    assert loaded is not None
    assert loaded.last_login_at is not None
    assert loaded.last_login_at.tzinfo is UTC
    assert loaded.last_login_at == T0  # stored from a +02:00 value: same instant
    assert loaded.created_at.microsecond == 123456


def test_json_columns_keep_types(engine: sa.Engine) -> None:
    world = save_world(engine)
    with session_scope(engine) as db:
        asset = db.exec(select(Asset)).one()
        grant = db.exec(select(Grant)).one()
        request = db.exec(select(AccessRequest)).one()
        endpoint = db.exec(select(AssetEndpoint)).one()
    assert asset.labels == {"line": "3", "vendor": "acme"}
    assert endpoint.settings == world["endpoint"].settings
    assert request.ports == [502]
    assert grant.obligations == world["grant"].model_dump()["obligations"]
    assert grant.obligations["modbus"] == {"fc": [3, 4]}


def test_naive_datetime_is_rejected(engine: sa.Engine) -> None:
    org = VendorOrg(slug="naive", name="Naive", created_at=datetime(2025, 1, 1))
    with pytest.raises(ValidationError, match="naive"):
        save(engine, org)


def test_utc_datetime_type_contract() -> None:
    column_type = UTCDateTime()
    dialect = sa.create_engine("sqlite://").dialect
    stored = column_type.process_bind_param(T0.astimezone(CEST), dialect)
    assert stored == T0.replace(tzinfo=None)
    assert column_type.process_result_value(stored, dialect) == T0
    with pytest.raises(ValueError, match="naive"):
        column_type.process_bind_param(datetime(2025, 1, 1), dialect)


def test_site_timezone_is_validated() -> None:
    with pytest.raises(ValidationError) as info:
        Site(name="x", timezone="Mars/Olympus_Mons")
    assert info.value.code == "invalid_timezone"
    site = Site(name="x", timezone="UTC")
    with pytest.raises(ValidationError):
        site.timezone = "../../etc/passwd"


def test_session_scope_rolls_back_on_error(engine: sa.Engine) -> None:
    def add_then_fail() -> None:
        with session_scope(engine) as db:
            db.add(VendorOrg(slug="ghost", name="Ghost", created_at=T0))
            db.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        add_then_fail()
    with session_scope(engine) as db:
        assert db.exec(select(VendorOrg)).all() == []


# --------------------------------------------------------------------------- constraints


def clone(row: SQLModel, **update: Any) -> SQLModel:
    """A new, unsaved row like ``row`` with a fresh id (if it has one) and ``update`` applied."""
    values = row.model_dump()
    if "id" in values:
        values["id"] = str(uuid4())
    return type(row)(**{**values, **update})


def _duplicate_asset_name(world: dict[str, Any]) -> list[SQLModel]:
    asset = world["asset"]
    return [clone(asset, agent_id=None)]


def _purdue_level_7(world: dict[str, Any]) -> list[SQLModel]:
    return [Zone(site_id=world["site"].id, name="sky", purdue_level=7)]


def _endpoint_port_0(world: dict[str, Any]) -> list[SQLModel]:
    return [clone(world["endpoint"], name="p0", port=0)]


def _endpoint_protocol_unknown(world: dict[str, Any]) -> list[SQLModel]:
    return [clone(world["endpoint"], name="px", port=503, protocol="telnet")]


def _endpoint_duplicate_host_port(world: dict[str, Any]) -> list[SQLModel]:
    return [clone(world["endpoint"], name="again")]


def _window(delta: timedelta) -> Callable[[dict[str, Any]], list[SQLModel]]:
    def build(world: dict[str, Any]) -> list[SQLModel]:
        request = world["request"]
        return [clone(request, ends_at=request.starts_at + delta)]

    build.__name__ = f"_window_{int(delta.total_seconds())}s"
    return build


def _blank_reason(world: dict[str, Any]) -> list[SQLModel]:
    return [clone(world["request"], reason="   ")]


def _second_approval(world: dict[str, Any]) -> list[SQLModel]:
    approval = world["approval"]
    return [clone(approval, verdict=ApprovalVerdict.DENY)]


def _second_grant_for_request(world: dict[str, Any]) -> list[SQLModel]:
    return [clone(world["grant"])]


def _unknown_state(world: dict[str, Any]) -> list[SQLModel]:
    return [clone(world["grant"], state="bogus")]


def _contract_without_scope(world: dict[str, Any]) -> list[SQLModel]:
    contract = world["contract"]
    return [clone(contract, site_id=None)]


def _dangling_reference(world: dict[str, Any]) -> list[SQLModel]:
    return [Zone(site_id=str(uuid4()), name="orphan", purdue_level=2)]


def _duplicate_user_identity(world: dict[str, Any]) -> list[SQLModel]:
    return [User(issuer="https://idp.example", sub="v-1", created_at=T0)]


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (_duplicate_asset_name, ConflictError),
        (_purdue_level_7, ValidationError),
        (_endpoint_port_0, ValidationError),
        (_endpoint_protocol_unknown, ValidationError),
        (_endpoint_duplicate_host_port, ConflictError),
        (_window(timedelta(0)), ValidationError),
        (_window(timedelta(minutes=-5)), ValidationError),
        (_blank_reason, ValidationError),
        (_second_approval, ConflictError),
        (_second_grant_for_request, ConflictError),
        (_unknown_state, ValidationError),
        (_contract_without_scope, ValidationError),
        (_dangling_reference, ConflictError),
        (_duplicate_user_identity, ConflictError),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_constraints_are_enforced(
    populated: tuple[sa.Engine, dict[str, Any]],
    build: Callable[[dict[str, Any]], list[SQLModel]],
    error: type[Exception],
) -> None:
    engine, world = populated
    with pytest.raises(error):
        save(engine, *build(world))


def test_history_cannot_be_deleted_through_its_parents(
    populated: tuple[sa.Engine, dict[str, Any]],
) -> None:
    engine, world = populated

    def delete(model: type[SQLModel], key: str) -> None:
        with session_scope(engine) as db:
            db.delete(db.get(model, key))

    with pytest.raises(ConflictError):
        delete(User, world["vendor"].id)
    with pytest.raises(ConflictError):
        delete(Grant, world["grant"].id)
    with pytest.raises(ConflictError):
        delete(Asset, world["asset"].id)


def test_credentials_cascade_and_agent_deletion_unlinks_assets(engine: sa.Engine) -> None:
    approver = User(issuer="https://idp.example", sub="tmp", created_at=T0)
    save(engine, approver)
    token = ApiToken(
        token_hash="f" * 64, user_id=approver.id, created_at=T0, expires_at=T0 + timedelta(days=1)
    )
    cert = SshCertificate(
        serial=7,
        user_id=approver.id,
        token_id=token.id,
        key_id="k",
        key_sha256="SHA256:k",
        issued_at=T0,
        expires_at=T0 + timedelta(hours=1),
    )
    save(engine, token, cert)
    with engine.begin() as conn:  # raw SQL: exercise the database's ON DELETE, not the ORM's
        conn.execute(sa.text("DELETE FROM users WHERE id = :id"), {"id": approver.id})
    world = save_world(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM agents WHERE id = :id"), {"id": world["agent"].id})
    with session_scope(engine) as db:
        assert db.get(ApiToken, token.id) is None
        assert db.get(SshCertificate, 7) is None
        asset = db.get(Asset, world["asset"].id)
        assert asset is not None
        assert asset.agent_id is None


def test_secrets_are_not_in_reprs() -> None:
    world = build_world()
    assert "csrf" not in repr(world["web"])
    assert "code_verifier='v'" not in repr(world["flow"])
    assert "WDJB" not in repr(world["cli"])


def test_manual_clock() -> None:
    clock = ManualClock(T0.astimezone(CEST))
    assert clock.now() == T0
    assert clock.now().tzinfo is UTC
    assert clock.advance(1.5) == T0 + timedelta(seconds=1.5)
    clock.set(T0 - timedelta(days=1))
    assert clock.now() == T0 - timedelta(days=1)
    with pytest.raises(ValidationError):
        clock.advance(-1)
    with pytest.raises(ValidationError):
        clock.set(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migration_turns_each_assets_endpoint_into_its_first_declared_endpoint(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """0006: an asset's single host:port becomes its first endpoint; tune ranges land on the
    holding-register table; nothing else about the asset changes."""
    from alembic import command

    if backend == "sqlite":
        eng = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        server = request.getfixturevalue("pg_server")
        eng = create_db_engine(server.create_database(f"m_{uuid4().hex[:16]}"))
    cfg = alembic_config()
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005_audit_refused")
        conn.execute(
            sa.text(
                "INSERT INTO sites (id, name, timezone, description) "
                "VALUES ('s1', 'plant', 'Europe/Berlin', '')"
            )
        )
        conn.execute(
            sa.text("INSERT INTO zones (id, site_id, name, purdue_level, description) "
                    "VALUES ('z1', 's1', 'cell', 1, '')")
        )  # fmt: skip
        for asset_id, port, protocols, labels in (
            ("a1", 502, '["modbus"]', '{"tune_write_ranges": "10-30,40"}'),
            ("a2", 22, '["ssh"]', "{}"),
            ("a3", 5900, "[]", "{}"),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO assets (id, name, site_id, zone_id, criticality, owner_group, "
                    "protocols, endpoint_host, endpoint_port, labels, created_at) VALUES "
                    "(:id, :id, 's1', 'z1', 'high', 'ot', :p, '10.0.0.1', :port, :l, :t)"
                ),
                {
                    "id": asset_id,
                    "p": protocols,
                    "port": port,
                    "l": labels,
                    "t": T0.replace(tzinfo=None),
                },
            )
        conn.execute(
            sa.text(
                "INSERT INTO users (id, issuer, sub, email, name, groups, roles, amr, disabled, "
                "created_at) VALUES ('u1', 'i', 's', '', '', '[]', '[]', '[]', false, :t)"
            ),
            {"t": T0.replace(tzinfo=None)},
        )
        for request_id, asset_id, ports in (("r1", "a1", "[]"), ("r2", "a1", "[502]")):
            conn.execute(
                sa.text(
                    "INSERT INTO access_requests (id, requester_id, asset_id, operation_class, "
                    "protocols, ports, starts_at, ends_at, reason, state, decision_reasons, "
                    "created_at, maintenance_window_only) VALUES (:id, 'u1', :a, 'read_only', "
                    "'[]', :p, :t, :e, 'x', 'approved', '[]', :t, false)"
                ),
                {
                    "id": request_id,
                    "a": asset_id,
                    "p": ports,
                    "t": T0.replace(tzinfo=None),
                    "e": (T0 + timedelta(hours=1)).replace(tzinfo=None),
                },
            )
    migrate(eng)
    with session_scope(eng) as db:
        rows = {
            e.asset_id: (e.name, e.host, e.port, e.protocol, e.settings)
            for e in db.exec(select(AssetEndpoint))
        }
        assert db.get(Asset, "a1") is not None
        ported = {r.id: (r.ports, r.login) for r in db.exec(select(AccessRequest))}
    assert ported == {"r1": ([502], None), "r2": ([502], None)}
    eng.dispose()
    tune = [
        {"table": "holding_registers", "first": 10, "last": 30},
        {"table": "holding_registers", "first": 40, "last": 40},
    ]
    assert rows == {
        "a1": ("modbus", "10.0.0.1", 502, "modbus", {"write_ranges": {"tune": tune}}),
        "a2": ("ssh", "10.0.0.1", 22, "ssh", {}),
        "a3": ("tcp", "10.0.0.1", 5900, "tcp", {}),
    }


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migration_gives_existing_credentials_no_authentication_methods(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """0007: sessions and tokens from before it carry no amr (no MFA credit until the next
    sign-in), no roles snapshot and no parent; the down-migration restores the old schema."""
    from alembic import command

    if backend == "sqlite":
        eng = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        server = request.getfixturevalue("pg_server")
        eng = create_db_engine(server.create_database(f"m_{uuid4().hex[:16]}"))
    cfg = alembic_config()
    t = T0.replace(tzinfo=None)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006_asset_endpoints")
        conn.execute(
            sa.text(
                "INSERT INTO users (id, issuer, sub, email, name, groups, roles, amr, disabled, "
                "created_at) VALUES ('u1', 'i', 's', '', '', '[]', '[]', '[\"mfa\"]', false, :t)"
            ),
            {"t": t},
        )
        conn.execute(
            sa.text(
                "INSERT INTO web_sessions (id_hash, user_id, csrf_token, created_at, expires_at, "
                "last_seen_at) VALUES ('h', 'u1', 'c', :t, :t, :t)"
            ),
            {"t": t},
        )
        conn.execute(
            sa.text(
                "INSERT INTO api_tokens (id, token_hash, user_id, kind, created_at, expires_at) "
                "VALUES ('t1', 'th', 'u1', 'cli', :t, :t)"
            ),
            {"t": t},
        )
    migrate(eng)
    with session_scope(eng) as db:
        web, token = db.get(WebSession, "h"), db.get(ApiToken, "t1")
        assert web is not None and token is not None
        assert (web.amr, web.acr, web.auth_time) == ([], None, None)
        assert (token.amr, token.roles, token.parent_session) == ([], [], None)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006_asset_endpoints")
    assert "ssh_certificates" not in sa.inspect(eng).get_table_names()
    eng.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migration_gives_existing_endpoints_their_assets_agent(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """0009: every existing endpoint is reached through its asset's agent (none if the asset
    has none); assets and endpoints are otherwise kept; the down-migration drops the column."""
    from alembic import command

    if backend == "sqlite":
        eng = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        server = request.getfixturevalue("pg_server")
        eng = create_db_engine(server.create_database(f"m_{uuid4().hex[:16]}"))
    cfg = alembic_config()
    t = T0.replace(tzinfo=None)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008_plant_model")
        conn.execute(
            sa.text(
                "INSERT INTO sites (id, name, timezone, description) "
                "VALUES ('s1', 'plant', 'Europe/Berlin', '')"
            )
        )
        conn.execute(
            sa.text("INSERT INTO zones (id, site_id, name, purdue_level, description) "
                    "VALUES ('z1', 's1', 'cell', 1, '')")
        )  # fmt: skip
        conn.execute(
            sa.text(
                "INSERT INTO agents (id, name, site_id, state, created_at) "
                "VALUES ('g1', 'edge-1', 's1', 'active', :t)"
            ),
            {"t": t},
        )
        for asset_id, agent_id in (("a1", "g1"), ("a2", None)):
            conn.execute(
                sa.text(
                    "INSERT INTO assets (id, name, site_id, zone_id, criticality, owner_group, "
                    "labels, agent_id, created_at) VALUES "
                    "(:id, :id, 's1', 'z1', 'high', 'ot', '{}', :agent, :t)"
                ),
                {"id": asset_id, "agent": agent_id, "t": t},
            )
        for ep_id, asset_id, port in (("e1", "a1", 502), ("e2", "a1", 22), ("e3", "a2", 22)):
            conn.execute(
                sa.text(
                    "INSERT INTO asset_endpoints (id, asset_id, name, host, port, protocol, "
                    "settings, created_at) VALUES (:id, :a, :id, '10.0.0.1', :port, 'tcp', "
                    "'{}', :t)"
                ),
                {"id": ep_id, "a": asset_id, "port": port, "t": t},
            )
    migrate(eng)
    with session_scope(eng) as db:
        routes = {e.id: (e.asset_id, e.port, e.agent_id) for e in db.exec(select(AssetEndpoint))}
        kept = {a.id: a.agent_id for a in db.exec(select(Asset))}
    assert routes == {
        "e1": ("a1", 502, "g1"),
        "e2": ("a1", 22, "g1"),
        "e3": ("a2", 22, None),
    }
    assert kept == {"a1": "g1", "a2": None}
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008_plant_model")
    columns = {c["name"] for c in sa.inspect(eng).get_columns("asset_endpoints")}
    assert "agent_id" not in columns and {"host", "port"} <= columns
    eng.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migration_keeps_requests_with_their_obligations_not_recorded(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """0010: requests filed before it are kept, with no obligations and no policy version
    (shown as not recorded); new ones store both; the down-migration drops the columns."""
    from alembic import command

    if backend == "sqlite":
        eng = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        server = request.getfixturevalue("pg_server")
        eng = create_db_engine(server.create_database(f"m_{uuid4().hex[:16]}"))
    cfg = alembic_config()
    t = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0009_endpoint_agents")
        for statement in (
            "INSERT INTO sites (id, name, timezone, description) "
            "VALUES ('s1', 'plant', 'Europe/Berlin', '')",
            "INSERT INTO zones (id, site_id, name, purdue_level, description) "
            "VALUES ('z1', 's1', 'cell', 1, '')",
            "INSERT INTO assets (id, name, site_id, zone_id, criticality, owner_group, labels, "
            "created_at) VALUES ('a1', 'a1', 's1', 'z1', 'high', 'ot', '{}', :t)",
            "INSERT INTO users (id, issuer, sub, email, name, groups, roles, amr, disabled, "
            "created_at) VALUES ('u1', 'i', 's', '', '', '[]', '[]', '[]', false, :t)",
            "INSERT INTO access_requests (id, requester_id, asset_id, operation_class, "
            "protocols, ports, starts_at, ends_at, reason, state, decision_reasons, created_at, "
            "maintenance_window_only) VALUES ('r1', 'u1', 'a1', 'tune', '[\"modbus\"]', '[502]', "
            ":t, :e, 'tuning', 'pending', '[\"needs 1 approval(s)\"]', :t, false)",
        ):
            conn.execute(sa.text(statement), {"t": t, "e": t + timedelta(hours=1)})
    migrate(eng)
    with session_scope(eng) as db:
        old = db.get(AccessRequest, "r1")
        assert old is not None
        kept = (old.state, old.ports, old.reason, old.decision_reasons)
        assert (old.obligations, old.policy_version) == (None, None)
        new = AccessRequest(
            requester_id="u1", asset_id="a1", operation_class="tune", starts_at=old.starts_at,
            ends_at=old.ends_at, reason="again", created_at=old.created_at,
            obligations={"record": "strict", "require_mfa": True}, policy_version="b1",
        )  # fmt: skip
        db.add(new)
        db.commit()
        new_id = new.id
    assert kept == ("pending", [502], "tuning", ["needs 1 approval(s)"])
    with session_scope(eng) as db:
        stored = db.get(AccessRequest, new_id)
        assert stored is not None and stored.policy_version == "b1"
        assert stored.obligations == {"record": "strict", "require_mfa": True}
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009_endpoint_agents")
    columns = {c["name"] for c in sa.inspect(eng).get_columns("access_requests")}
    assert not {"obligations", "policy_version"} & columns and "auth_amr" in columns
    eng.dispose()
