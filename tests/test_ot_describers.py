"""Each OT plug-in's words for people: its obligations block, endpoint settings and grant
allowance as one line each, and a malformed block as a clear sentence (never an exception)."""

from __future__ import annotations

from typing import Any

import pytest

from policies.decision import ModbusObligations, Obligations, WriteRange
from sessions.endpoints import validate_settings
from sessions.ot import enip, modbus_text, s7
from sessions.ot.registry import PLUGINS

REFUSED = "malformed, so every connection is refused"


def _modbus(block: Any, **top: Any) -> str | None:
    return modbus_text.describe_modbus_obligations({"protocols": {"modbus": block}, **top})


def test_modbus_obligations_read_as_functions_ranges_units_and_rate() -> None:
    legacy = Obligations(
        modbus=ModbusObligations((1, 3, 6), (WriteRange("coils", 0, 15, (1, 2)),), None),
        rate_limit_rps=2.5,
    ).as_dict()
    assert modbus_text.describe_modbus_obligations(legacy) == (
        "read functions 1, 3; write functions 6; writes to coils 0\u201315 (units 1, 2); "
        "any unit id; rate 2.5/s"
    )
    # protocols.modbus wins over the legacy block, as the inspector reads it.
    block = {"allow_function_codes": [3], "write_ranges": [], "unit_ids": [7]}
    assert modbus_text.describe_modbus_obligations({**legacy, "protocols": {"modbus": block}}) == (
        "read functions 3; no writes; unit ids 7; rate 2.5/s"
    )
    assert modbus_text.describe_modbus_obligations({"record": "strict"}) is None


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ([1, 2], "modbus must be an object"),
        ({"allow_function_codes": "all"}, "modbus.allow_function_codes must be integers 1-255"),
        ({"unit_ids": [1], "units": [2]}, "modbus has unknown keys ['units']"),
        ({"write_ranges": [{"table": "inputs", "first": 0, "last": 1}]}, "write_ranges[0]"),
    ],
)
def test_a_malformed_modbus_block_reads_as_refused(block: Any, problem: str) -> None:
    text = _modbus(block)
    assert text is not None and text.startswith(REFUSED) and problem in text


def test_modbus_settings_and_allowance() -> None:
    settings = validate_settings(
        "modbus",
        {
            "unit_ids": [1],
            "write_ranges": {
                "tune": [{"table": "holding_registers", "first": 0, "last": 99}],
                "program": [{"table": "coils", "first": 5, "last": 5}],
            },
        },
    )
    assert modbus_text.describe_modbus_settings(settings) == (
        "tune may write holding registers 0\u201399; program may write coils 5; unit ids 1"
    )
    assert modbus_text.describe_modbus_settings({}) == "no writes; unit ids any"
    garbage = {"write_ranges": "all", "unit_ids": "some"}
    assert modbus_text.describe_modbus_settings(garbage) == "no writes; unit ids any"

    # No ranges in the grant: the endpoint's for the class, with its unit ids.
    allowed = modbus_text.describe_modbus_allowance({}, settings, "tune")
    assert allowed == "read functions 1, 2, 3, 4; writes to holding registers 0\u201399 (unit 1)"
    grant = {"modbus": {"allow_function_codes": [1, 2, 3, 4, 6], "write_ranges": []}}
    assert modbus_text.describe_modbus_allowance(grant, settings, "tune") == (
        "function codes 1, 2, 3, 4, 6; no writes"
    )
    broken = modbus_text.describe_modbus_allowance({"modbus": [1]}, settings, "tune")
    assert broken.startswith(REFUSED) and "[1]" in broken


def test_s7_words() -> None:
    block = {
        "allow": ["read_var", "szl_read", "write_var"],
        "write_ranges": [
            {"area": "DB", "db": 1, "first": 0, "last": 15},
            {"area": "DB", "db": None, "first": 4, "last": 4},
            {"area": "M", "db": None, "first": 0, "last": 9},
        ],
    }
    assert s7.describe_s7_obligations({"protocols": {"s7": block}}) == (
        "operations read var, szl read, write var; "
        "writes to DB1 bytes 0\u201315; any DB bytes 4; M bytes 0\u20139"
    )
    assert s7.describe_s7_obligations({"protocols": {"s7": {"allow": []}}}) == (
        "no operations allowed"
    )
    assert s7.describe_s7_obligations({"protocols": {"enip": {}}}) is None
    for bad, problem in (
        ("read", 'obligations.protocols.s7 must be an object, not "read"'),
        ({"allow": ["fly"]}, "obligations.protocols.s7.allow: must be a list of read_var"),
        ({"allow": [], "write_ranges": [{"area": "XX"}]}, "write_ranges[0].area"),
        ({"allow": [], "stop": True}, "unknown key(s) stop"),
    ):
        text = s7.describe_s7_obligations({"protocols": {"s7": bad}})
        assert text is not None and text.startswith(REFUSED) and problem in text, text

    settings = validate_settings(
        "s7",
        {
            "write_ranges": {
                "tune": [{"area": "DB", "db": 1, "first": 0, "last": 15}],
                "program": [{"area": "M", "first": 0, "last": 9}],
            }
        },
    )
    assert s7.describe_s7_settings(settings) == (
        "tune may write DB1 bytes 0\u201315; program may write M bytes 0\u20139"
    )
    assert s7.describe_s7_settings({}) == "no writes"
    assert s7.describe_s7_settings({"write_ranges": {"tune": "DB1"}}) == "no writes"


def test_enip_words() -> None:
    block = {"allow": ["read_tag", "read_attribute"]}
    assert enip.describe_enip_obligations({"protocols": {"enip": block}}) == (
        "operations read tag, read attribute"
    )
    assert enip.describe_enip_obligations({}) is None
    for bad, problem in (
        ([], "obligations.protocols.enip must be an object, not []"),
        ({"allow": "read_tag"}, "obligations.protocols.enip.allow: must be a list of read_tag"),
        ({"allow": ["read_tag"], "tags": ["x"]}, "unknown key(s) tags"),
    ):
        text = enip.describe_enip_obligations({"protocols": {"enip": bad}})
        assert text is not None and text.startswith(REFUSED) and problem in text, text
    assert enip.describe_enip_settings(validate_settings("enip", {})) == (
        "no settings (the operation class decides)"
    )


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_every_plugin_has_a_title_and_never_raises_on_garbage(name: str) -> None:
    plugin = PLUGINS[name]
    assert plugin.title and plugin.title != name  # words for people, not the declared key
    for garbage in ("x", 7, [None], {"allow": {"a": 1}}, {"write_ranges": "all"}, {"?": []}):
        text = plugin.describe_obligations({"protocols": {name: garbage}})
        assert isinstance(text, str) and text.startswith(REFUSED), (garbage, text)
        assert isinstance(plugin.describe_settings({"write_ranges": garbage}), str)
        if plugin.describe_allowance is not None:
            words = plugin.describe_allowance({"protocols": {name: garbage}}, {}, "tune")
            assert isinstance(words, str)
