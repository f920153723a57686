"""The agent's config is validated once, and its channel table enforces its own boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.config import AgentConfig, ConfigError, load_config, parse_config
from agents.relay import ChannelTable, Refused
from agents.wire import Endpoint, OpenRequest

# --------------------------------------------------------------------------- config


def config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "state_dir": "/var/lib/conduit-agent",
        "endpoint": [{"name": "plc", "host": "10.0.0.5", "port": 502, "protocol": "modbus"}],
    }
    data.update(overrides)
    return data


def test_minimal_config_gets_the_defaults() -> None:
    cfg = parse_config({"state_dir": "/s"})
    assert cfg == AgentConfig(state_dir=Path("/s"))
    assert (cfg.heartbeat_s, cfg.backoff_initial_s, cfg.backoff_max_s) == (15.0, 0.25, 4.0)
    assert cfg.max_channels == 256 and cfg.endpoints == () and cfg.brokers == ()


def test_full_config_is_parsed() -> None:
    cfg = parse_config(
        config(
            brokers=["broker-a.plant:7022", "[::1]:7022"],
            heartbeat_s=2,
            backoff_initial_s=0.5,
            backoff_max_s=0.5,
            max_channel_s=60,
            max_channels=3,
        )
    )
    assert cfg.endpoints == (Endpoint("10.0.0.5", 502, "modbus", "plc"),)
    assert cfg.brokers == ("broker-a.plant:7022", "[::1]:7022")
    assert isinstance(cfg.heartbeat_s, float) and cfg.heartbeat_s == 2.0
    assert (cfg.max_channel_s, cfg.max_channels) == (60.0, 3)


def test_declares_is_an_exact_host_and_port_match() -> None:
    cfg = parse_config(config(endpoint=[{"host": "PLC.plant", "port": 502}]))
    assert cfg.declares("plc.plant", 502)  # hosts are normalised to lower case
    assert not cfg.declares("plc.plant", 503)
    assert not cfg.declares("plc", 502)
    assert not cfg.declares("10.0.0.5", 502)


def test_relative_state_dir_is_resolved_against_the_config_file(tmp_path: Path) -> None:
    assert parse_config({"state_dir": "state"}, base=tmp_path).state_dir == tmp_path / "state"
    assert parse_config({"state_dir": "/abs"}, base=tmp_path).state_dir == Path("/abs")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (config(listen_port=22), "unknown keys: listen_port"),
        (config(endpoints=[]), "unknown keys: endpoints"),
        ({}, "state_dir is required"),
        (config(state_dir=""), "state_dir is required"),
        (config(state_dir=5), "state_dir is required"),
        (config(endpoint={"host": "plc", "port": 1}), "array of tables"),
        (
            config(endpoint=[{"host": "plc", "port": 1, "via": "x"}]),
            r"endpoint\[0\]: unknown keys via",
        ),
        (config(endpoint=["plc:502"]), r"endpoint\[0\]: endpoint must be an object"),
        (config(endpoint=[{"host": "plc", "port": 0}]), r"endpoint\[0\]: port 0"),
        (config(endpoint=[{"host": "plc", "port": 65536}]), r"endpoint\[0\]: port"),
        (config(endpoint=[{"host": "plc", "port": "502"}]), r"endpoint\[0\]: port"),
        (config(endpoint=[{"host": "plc", "port": True}]), r"endpoint\[0\]: port"),
        (
            config(endpoint=[{"host": "a", "port": 1}, {"host": "b b", "port": 1}]),
            r"endpoint\[1\]: host",
        ),
        (
            config(endpoint=[{"host": "plc", "port": 1}, {"host": "PLC", "port": 1}]),
            "declared twice",
        ),
        (
            config(endpoint=[{"host": "::1", "port": 1}, {"host": "0:0::1", "port": 1}]),
            "declared twice",
        ),
        (config(brokers="a:1"), "brokers must be a list"),
        (config(brokers=["a:1", 7022]), "brokers must be a list"),
        (config(brokers=["broker"]), "not host:port"),
        (config(brokers=[":7022"]), "not host:port"),
        (config(brokers=["broker:"]), "not host:port"),
        (config(brokers=["broker:0"]), "not host:port"),
        (config(brokers=["broker:65536"]), "not host:port"),
        (config(brokers=["broker:-1"]), "not host:port"),
        (config(brokers=["broker:70x"]), "not host:port"),
        (config(heartbeat_s=0), r"heartbeat_s must be a number in \(0, 3600\]"),
        (config(heartbeat_s=-1), "heartbeat_s"),
        (config(heartbeat_s=3601), "heartbeat_s"),
        (config(heartbeat_s="15"), "heartbeat_s"),
        (config(heartbeat_s=True), "heartbeat_s"),
        (config(keepalive_s=float("nan")), "keepalive_s"),
        (config(connect_timeout_s=121), "connect_timeout_s"),
        (config(target_timeout_s=0), "target_timeout_s"),
        (config(max_channel_s=7 * 86400 + 1), "max_channel_s"),
        (config(backoff_max_s=601), "backoff_max_s"),
        (config(backoff_initial_s=61), "backoff_initial_s"),
        (config(backoff_initial_s=5, backoff_max_s=4), "must not exceed backoff_max_s"),
        (config(max_channels=0), "max_channels"),
        (config(max_channels=100_001), "max_channels"),
        (config(max_channels=2.0), "max_channels"),
    ],
)
def test_invalid_config_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_max_channels_refuses_a_bool() -> None:
    with pytest.raises(ConfigError, match="max_channels"):
        parse_config(config(max_channels=True))


def test_broker_port_with_a_unicode_digit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not host:port"):
        parse_config(config(brokers=["broker:²"]))


def test_load_config_reads_toml_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'state_dir = "state"\nbrokers = ["b:7022"]\n\n'
        '[[endpoint]]\nhost = "10.0.0.5"\nport = 502\nprotocol = "modbus"\n',
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.state_dir == tmp_path / "state" and cfg.declares("10.0.0.5", 502)
    path.write_text('state_dir = "s"\nbogus = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown keys: bogus$"):
        load_config(path)


@pytest.mark.parametrize(
    "content", [b"state_dir = ", b'state_dir = "s"\nstate_dir = "t"\n', b"\xff"]
)
def test_load_config_refuses_invalid_toml(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- channel table

NOW = 1_700_000_000.0


class FakeWall:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(wall: FakeWall | None = None, **options: Any) -> ChannelTable:
    cfg = parse_config(
        config(
            endpoint=[{"host": "10.0.0.5", "port": 502}, {"host": "plc.plant", "port": 44818}],
            max_channel_s=options.pop("max_channel_s", 3600),
            **options,
        )
    )
    return ChannelTable(cfg, wall or FakeWall())


def request(host: str = "10.0.0.5", port: int = 502, ttl: float = 60, ref: str = "") -> OpenRequest:
    return OpenRequest(host, port, NOW + ttl, *([ref] if ref else []))


def refusal(t: ChannelTable, req: OpenRequest, broker: str = "b1") -> str:
    with pytest.raises(Refused) as info:
        t.admit(req, broker)
    return str(info.value)


def test_admit_registers_a_declared_channel() -> None:
    t = table()
    ch = t.admit(request(ref="ch-1"), "b1")
    assert len(t) == 1 and ch.broker == "b1"
    (info,) = t.infos()
    assert (info.ref, info.host, info.port, info.expires_at) == ("ch-1", "10.0.0.5", 502, NOW + 60)
    t.release(ch)
    assert len(t) == 0
    t.release(ch)  # releasing twice is harmless


def test_undeclared_host_is_refused() -> None:
    assert "is not declared" in refusal(table(), request(host="10.0.0.6"))


def test_undeclared_port_on_a_declared_host_is_refused() -> None:
    t = table()
    assert "10.0.0.5:22 is not declared" in refusal(t, request(port=22))
    assert "is not declared" in refusal(t, request(host="plc.plant", port=502))
    assert len(t) == 0


def test_expired_grant_is_refused_by_the_agents_own_clock() -> None:
    wall = FakeWall()
    t = table(wall)
    req = request(ttl=60)
    wall.now = NOW + 60  # expires_at == now
    assert refusal(t, req) == "grant already expired"
    wall.now = NOW + 59
    t.admit(req, "b1")


def test_expiry_beyond_max_channel_s_is_refused() -> None:
    t = table(max_channel_s=600)
    assert refusal(t, request(ttl=601)) == "expiry is beyond this agent's max_channel_s"
    t.admit(request(ttl=600), "b1")  # exactly at the limit is fine


def test_seconds_left_follows_the_clock() -> None:
    wall = FakeWall()
    t = table(wall)
    ch = t.admit(request(ttl=60), "b1")
    assert t.seconds_left(ch) == 60
    wall.now += 45
    assert t.seconds_left(ch) == 15
    wall.now += 100
    assert t.seconds_left(ch) == 0


def test_kill_switch_closes_everything_and_refuses_until_released() -> None:
    t = table()
    a, b = t.admit(request(ref="a"), "b1"), t.admit(request(ref="b"), "b2")
    assert t.engage_kill_switch() == 2
    assert a.close_reason == b.close_reason == "local kill switch engaged"
    assert refusal(t, request(ref="c")) == "local kill switch engaged"
    t.release_kill_switch()
    t.admit(request(ref="c"), "b1")


def test_kill_switch_wins_over_every_other_check() -> None:
    t = table()
    t.engage_kill_switch()
    assert refusal(t, request(host="10.9.9.9", ttl=-5)) == "local kill switch engaged"


def test_too_many_channels_are_refused() -> None:
    t = table(max_channels=2)
    first = t.admit(request(ref="a"), "b1")
    t.admit(request(ref="b"), "b2")
    assert refusal(t, request(ref="c")) == "too many open channels"
    t.release(first)
    t.admit(request(ref="c"), "b1")


def test_duplicate_ref_is_refused_without_touching_the_original() -> None:
    t = table()
    original = t.admit(request(ref="ch-1"), "b1")
    assert refusal(t, request(host="plc.plant", port=44818, ref="ch-1"), "b2") == (
        "duplicate channel ref"
    )
    assert len(t) == 1 and t.infos()[0].host == "10.0.0.5"
    assert not original.close_reason


def test_close_all_per_broker() -> None:
    t = table()
    a1 = t.admit(request(ref="a1"), "b1")
    a2 = t.admit(request(ref="a2"), "b1")
    b1 = t.admit(request(ref="b1"), "b2")
    assert t.close_all("broker connection lost", broker="b1") == 2
    assert a1.close_reason == a2.close_reason == "broker connection lost"
    assert b1.close_reason == "" and not b1._closed.is_set()
    assert a1._closed.is_set()
    assert t.close_all("other", broker="b3") == 0
    assert t.close_all("agent stopping") == 3
    assert a1.close_reason == "broker connection lost"  # the first reason sticks
    assert b1.close_reason == "agent stopping"


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / "agent.toml.example"
    cfg = load_config(example)
    assert cfg.declares("10.20.0.5", 502) and not cfg.declares("10.20.0.5", 503)
