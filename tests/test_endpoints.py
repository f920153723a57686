"""Declared endpoint settings: validated once, normalized, every bad input named."""

from __future__ import annotations

from typing import Any

import pytest

from sessions.endpoints import describe, logins_for, validate_settings
from sessions.errors import ValidationError
from sessions.models import AssetEndpoint


def test_ssh_logins_as_a_list_apply_to_every_class() -> None:
    got = validate_settings("ssh", {"logins": ["maint", "eng", "maint"]})
    assert got == {
        "logins": {op: ["eng", "maint"] for op in ("read_only", "tune", "program", "firmware")}
    }


def test_ssh_logins_per_class() -> None:
    got = validate_settings("ssh", {"logins": {"read_only": ["viewer"], "program": ["eng"]}})
    ep = AssetEndpoint(asset_id="a", name="ssh", host="h", port=22, protocol="ssh", settings=got)
    assert logins_for([ep], "read_only") == ["viewer"]
    assert logins_for([ep], "tune") == []
    assert logins_for([ep], "program") == ["eng"]
    assert describe(ep) == "ssh h:22 (ssh)"


def test_modbus_ranges_normalized_per_class_and_table() -> None:
    got = validate_settings(
        "modbus",
        {
            "unit_ids": [2, 1],
            "write_ranges": {
                "tune": [
                    {"table": "holding_registers", "first": 10, "last": 30, "unit_ids": None},
                    {"table": "coils", "first": 0, "last": 7, "unit_ids": [1]},
                ]
            },
        },
    )
    assert got == {
        "unit_ids": [1, 2],
        "write_ranges": {
            "tune": [
                {"table": "coils", "first": 0, "last": 7, "unit_ids": [1]},
                {"table": "holding_registers", "first": 10, "last": 30},
            ]
        },
    }


def test_empty_and_missing_settings() -> None:
    assert validate_settings("modbus", None) == {}
    assert validate_settings("vnc", {}) == {}
    assert validate_settings("ssh", {"logins": {}}) == {}


R = {"table": "holding_registers", "first": 10, "last": 30}


@pytest.mark.parametrize(
    ("protocol", "settings", "message"),
    [
        ("telnet", {}, "protocol: must be one of"),
        ("vnc", {"logins": ["x"]}, "vnc endpoints take no settings"),
        ("ssh", [], "settings: must be an object"),
        ("ssh", {"users": []}, "unknown ssh setting(s) users"),
        ("ssh", {"logins": {"admin": ["x"]}}, "'admin' is not an operation class"),
        ("ssh", {"logins": ["root; rm"]}, "'root; rm' is not a valid login name"),
        ("ssh", {"logins": ["-oProxyCommand"]}, "is not a valid login name"),
        ("ssh", {"logins": {"tune": "maint"}}, "must be a list of login names"),
        ("modbus", {"write_ranges": [R]}, "must be an object of operation class"),
        ("modbus", {"write_ranges": {"tune": [[10, 30]]}}, "must be an object {table"),
        ("modbus", {"write_ranges": {"tune": [{**R, "table": "inputs"}]}}, "must be one of coils"),
        ("modbus", {"write_ranges": {"tune": [{**R, "first": 31}]}}, "range 31-30 is inverted"),
        ("modbus", {"write_ranges": {"tune": [{**R, "last": 65536}]}}, "integer 0-65535"),
        ("modbus", {"write_ranges": {"tune": [{**R, "first": True}]}}, "integer 0-65535"),
        ("modbus", {"write_ranges": {"tune": [R, {**R, "first": 30, "last": 40}]}}, "overlap"),
        ("modbus", {"write_ranges": {"tune": [{**R, "extra": 1}]}}, "unknown field(s) extra"),
        ("modbus", {"unit_ids": []}, "non-empty list of unit ids"),
        ("modbus", {"unit_ids": [256]}, "integer 0-255"),
        (
            "modbus",
            {"unit_ids": [1], "write_ranges": {"tune": [{**R, "unit_ids": [2]}]}},
            "unit id(s) [2] are not in unit_ids [1]",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(
    protocol: str, settings: Any, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        validate_settings(protocol, settings)
    assert message in info.value.message
    assert info.value.code == "invalid_endpoint"


def test_same_numbers_on_different_tables_or_units_do_not_overlap() -> None:
    coils = {**R, "table": "coils"}
    unit2 = {**R, "unit_ids": [2]}
    got = validate_settings(
        "modbus", {"write_ranges": {"tune": [{**R, "unit_ids": [1]}, coils, unit2]}}
    )
    assert len(got["write_ranges"]["tune"]) == 3
