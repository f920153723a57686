"""The published JSON Schema (docs/plant.schema.json) and the broker's plant rules agree.

The schema's ``x-conduit-*`` keywords state the rules plain JSON Schema cannot (unique names,
ordered and non-overlapping ranges, a contract ending after it starts); generic validators
ignore them, so they are implemented here with the ``jsonschema`` package's extension API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, ValidationError, validators

from broker.dev.demo import DEMO_PLANT_PATH
from sessions.errors import ValidationError as BadTimezone
from sessions.models import check_timezone
from sessions.plant import PlantError, load_yaml, parse
from sessions.plant.document import resolve_time
from tests.test_plant import BAD_INPUTS

DOCS = Path(__file__).parents[1] / "docs"
SCHEMA = json.loads((DOCS / "plant.schema.json").read_text(encoding="utf-8"))
NOW = datetime.now(UTC)


def _unique(_v: Any, field: str, items: Any, _s: Any) -> Iterator[ValidationError]:
    seen: set[str] = set()
    for i, item in enumerate(items if isinstance(items, list) else []):
        value = item.get(field) if isinstance(item, dict) else None
        if isinstance(value, str) and value in seen:
            yield ValidationError(f"duplicate {field} {value!r}", path=[i])
        seen.add(str(value))


def _not_after(_v: Any, pair: list[str], obj: Any, _s: Any) -> Iterator[ValidationError]:
    first, last = (obj.get(k) if isinstance(obj, dict) else None for k in pair)
    if isinstance(first, int) and isinstance(last, int) and last < first:
        yield ValidationError(f"{pair[1]} {last} is before {pair[0]} {first}")


def _before(_v: Any, pair: list[str], obj: Any, _s: Any) -> Iterator[ValidationError]:
    start, end = (resolve_time(obj.get(k), NOW) if isinstance(obj, dict) else None for k in pair)
    if start is not None and end is not None and end <= start:
        yield ValidationError(f"{pair[1]} is not after {pair[0]}", path=[pair[1]])


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ranges of one table share an address for some unit id."""
    units = a.get("unit_ids"), b.get("unit_ids")
    meet = None in units or bool(set(units[0] or ()) & set(units[1] or ()))
    return meet and a.get("first", 0) <= b.get("last", 0) and b.get("first", 0) <= a.get("last", 0)


def _disjoint(_v: Any, field: str, ranges: Any, _s: Any) -> Iterator[ValidationError]:
    items = [r for r in ranges if isinstance(r, dict)] if isinstance(ranges, list) else []
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            if a.get(field) == b.get(field) and _overlap(a, b):
                yield ValidationError(f"{a.get(field)} ranges overlap")


PlantSchema = validators.extend(
    Draft202012Validator,
    {
        "x-conduit-unique": _unique,
        "x-conduit-not-after": _not_after,
        "x-conduit-before": _before,
        "x-conduit-disjoint": _disjoint,
    },
)


def _path(error: ValidationError) -> str:
    """``['assets', 3, 'endpoints', 0]`` as the broker names it: ``assets[3].endpoints[0]``."""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".")


def _errors(data: Any) -> set[str]:
    return {_path(e) or "document" for e in PlantSchema(SCHEMA).iter_errors(data)}


def test_the_schema_is_valid_and_accepts_the_demo_plant_and_the_documented_example() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    demo, _ = load_yaml(DEMO_PLANT_PATH.read_text(encoding="utf-8"))
    assert _errors(demo) == set()
    text = (DOCS / "plant.md").read_text(encoding="utf-8")
    example = re.search(r"## The file\n\n```yaml\n(.*?)```", text, re.S)
    assert example, "docs/plant.md shows an example file"
    data, _ = load_yaml(example[1])
    parse(data, NOW)  # the broker takes it too
    assert _errors(data) == set()


@pytest.mark.parametrize("case", sorted(set(BAD_INPUTS) - {"unknown zone"}))
def test_each_bad_input_is_refused_by_the_schema_where_the_broker_refuses_it(case: str) -> None:
    text, _message, _line = BAD_INPUTS[case]  # test_plant.py checks the messages and lines
    data, _ = load_yaml(text)
    with pytest.raises(PlantError) as broker:
        parse(data, NOW)
    assert _errors(data) == {broker.value.path}


def test_every_time_zone_the_schema_offers_is_one_the_broker_takes() -> None:
    names = SCHEMA["$defs"]["timezone"]["enum"]
    assert "Europe/Berlin" in names and "Europe/Springfield" not in names
    for name in names:
        assert check_timezone(name) == name
    with pytest.raises(BadTimezone):
        check_timezone("Europe/Springfield")
