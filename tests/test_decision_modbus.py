"""The Modbus obligations of a decision: write ranges per table and unit id, parsed strictly.

``policies.decision.decision_from`` raises :class:`MalformedDecision` naming what is wrong;
``parse_decision`` turns the same answers into a deny with that message as its reason.
"""

from __future__ import annotations

from typing import Any

import pytest

from policies.decision import (
    COILS,
    HOLDING_REGISTERS,
    MalformedDecision,
    ModbusObligations,
    Obligations,
    WriteRange,
    decision_from,
    parse_decision,
)


def answer(modbus: Any) -> dict[str, Any]:
    return {"allow": True, "reasons": ["tune"], "obligations": {"modbus": modbus}}


def modbus_of(modbus: Any) -> ModbusObligations:
    return decision_from(answer(modbus)).obligations.modbus


def test_the_new_shape_parses_into_typed_ranges() -> None:
    parsed = modbus_of(
        {
            "allow_function_codes": [16, 3, 5, 3],
            "write_ranges": [
                {"table": "holding_registers", "first": 10, "last": 30, "unit_ids": None},
                {"table": "coils", "first": 0, "last": 0},
                {"table": "coils", "first": 65535, "last": 65535, "unit_ids": [2, 1, 2]},
            ],
            "unit_ids": [255, 0, 1],
        }
    )
    assert parsed == ModbusObligations(
        allow_function_codes=(3, 5, 16),
        write_ranges=(
            WriteRange(HOLDING_REGISTERS, 10, 30, None),
            WriteRange(COILS, 0, 0, None),
            WriteRange(COILS, 65535, 65535, (1, 2)),
        ),
        unit_ids=(0, 1, 255),
    )
    assert (COILS, HOLDING_REGISTERS) == ("coils", "holding_registers")


@pytest.mark.parametrize(
    "modbus",
    [
        {},
        {"allow_function_codes": [3]},
        {"allow_function_codes": [3], "write_ranges": None, "unit_ids": None},
        {"allow_function_codes": [3], "write_ranges": []},
    ],
)
def test_absent_ranges_mean_no_writes_and_absent_unit_ids_any_unit(modbus: Any) -> None:
    parsed = modbus_of(modbus)
    assert parsed.write_ranges == () and parsed.unit_ids is None


def test_an_empty_unit_id_list_is_kept_and_addresses_no_unit() -> None:
    assert modbus_of({"unit_ids": []}).unit_ids == ()


def test_obligations_as_dict_round_trips_the_new_shape() -> None:
    raw = {
        "allow_function_codes": [3, 5, 6],
        "write_ranges": [
            {"table": "coils", "first": 15, "last": 15, "unit_ids": None},
            {"table": "holding_registers", "first": 10, "last": 30, "unit_ids": [1, 7]},
        ],
        "unit_ids": [1, 7],
    }
    obligations = decision_from(answer(raw)).obligations
    assert obligations.as_dict()["modbus"] == raw
    assert decision_from(answer(obligations.as_dict()["modbus"])).obligations == obligations
    assert Obligations().as_dict()["modbus"] == {
        "allow_function_codes": [],
        "write_ranges": [],
        "unit_ids": None,
    }


def test_write_range_applies_by_table_and_unit() -> None:
    everywhere = WriteRange(COILS, 1, 2)
    assert everywhere.applies_to(COILS, 0) and everywhere.applies_to(COILS, 255)
    assert not everywhere.applies_to(HOLDING_REGISTERS, 0)
    unit_1 = WriteRange(HOLDING_REGISTERS, 1, 2, (1,))
    assert unit_1.applies_to(HOLDING_REGISTERS, 1)
    assert not unit_1.applies_to(HOLDING_REGISTERS, 2)


@pytest.mark.parametrize(
    ("table", "first", "last"),
    [("input_registers", 0, 1), (COILS, 5, 4), (COILS, -1, 4), (HOLDING_REGISTERS, 0, 65536)],
)
def test_write_range_refuses_invalid_values_when_built_in_code(
    table: str, first: int, last: int
) -> None:
    with pytest.raises(ValueError, match="invalid write range"):
        WriteRange(table, first, last)


RANGE = {"table": "holding_registers", "first": 10, "last": 30}


@pytest.mark.parametrize(
    ("modbus", "message"),
    [
        # the old pair form names no table
        (
            {"write_ranges": [[10, 30]]},
            "obligations.modbus.write_ranges[0] is a [first, last] pair [10, 30]: pairs are no "
            "longer accepted because they do not name a table",
        ),
        ({"write_ranges": [RANGE, [0, 65535]]}, "write_ranges[1] is a [first, last] pair"),
        ({"write_ranges": [[10, 5]]}, "pairs are no longer accepted"),
        ({"write_ranges": {"table": "coils"}}, "write_ranges must be a list of range objects"),
        ({"write_ranges": "0-99"}, "write_ranges must be a list"),
        ({"write_ranges": [7]}, "write_ranges[0] must be an object, got int"),
        ({"write_ranges": [None]}, "write_ranges[0] must be an object, got NoneType"),
        # tables
        (
            {"write_ranges": [{**RANGE, "table": "input_registers"}]},
            "write_ranges[0].table must be one of ('coils', 'holding_registers'), "
            "got 'input_registers'",
        ),
        ({"write_ranges": [{**RANGE, "table": "coil"}]}, "got 'coil'"),
        ({"write_ranges": [{**RANGE, "table": None}]}, "table must be one of"),
        ({"write_ranges": [{"first": 1, "last": 2}]}, "table must be one of"),
        # bounds
        (
            {"write_ranges": [{**RANGE, "first": 31}]},
            "obligations.modbus.write_ranges[0] is inverted: first 31 > last 30",
        ),
        ({"write_ranges": [{**RANGE, "first": -1}]}, "first must be an integer 0-65535, got -1"),
        ({"write_ranges": [{**RANGE, "last": 65536}]}, "last must be an integer 0-65535"),
        (
            {"write_ranges": [{**RANGE, "first": True}]},
            "first must be an integer 0-65535, got True",
        ),
        ({"write_ranges": [{**RANGE, "last": False}]}, "last must be an integer 0-65535"),
        ({"write_ranges": [{**RANGE, "first": 1.0}]}, "first must be an integer"),
        ({"write_ranges": [{**RANGE, "first": "10"}]}, "first must be an integer"),
        ({"write_ranges": [{"table": "coils", "first": 1}]}, "last must be an integer"),
        # unit ids of a range
        ({"write_ranges": [{**RANGE, "unit_ids": [256]}]}, "write_ranges[0].unit_ids must be"),
        ({"write_ranges": [{**RANGE, "unit_ids": [-1]}]}, "integers 0-255, got [-1]"),
        ({"write_ranges": [{**RANGE, "unit_ids": [True]}]}, "integers 0-255, got [True]"),
        ({"write_ranges": [{**RANGE, "unit_ids": 1}]}, "null or a list of integers 0-255"),
        ({"write_ranges": [{**RANGE, "unit_ids": ["1"]}]}, "unit_ids must be"),
        ({"write_ranges": [{**RANGE, "unit_ids": [[1]]}]}, "unit_ids must be"),
        # a misspelt key would widen the range: refused
        ({"write_ranges": [{**RANGE, "unit_id": [1]}]}, "write_ranges[0] has unknown keys"),
        # top-level unit ids
        ({"unit_ids": [1, 300]}, "obligations.modbus.unit_ids must be null or a list"),
        ({"unit_ids": [False]}, "obligations.modbus.unit_ids must be"),
        ({"unit_ids": 1}, "obligations.modbus.unit_ids must be"),
        ({"unit_ids": {"1": True}}, "obligations.modbus.unit_ids must be"),
        ({"unit_id": [1]}, "obligations.modbus has unknown keys ['unit_id']"),
        # function codes and the block itself
        ({"allow_function_codes": [0]}, "allow_function_codes must be integers 1-255"),
        ({"allow_function_codes": [True]}, "allow_function_codes must be integers 1-255"),
        ({"allow_function_codes": 3}, "allow_function_codes must be integers 1-255"),
        ([], "obligations.modbus must be an object"),
        ("coils", "obligations.modbus must be an object"),
    ],
)
def test_malformed_modbus_obligations_fail_closed_naming_the_problem(
    modbus: Any, message: str
) -> None:
    with pytest.raises(MalformedDecision) as info:
        decision_from(answer(modbus))
    assert message in str(info.value)
    denied = parse_decision(answer(modbus))
    assert not denied.allow
    assert denied.reasons == (f"policy returned a malformed decision: {info.value}",)
    assert denied.obligations.modbus == ModbusObligations()
