"""One canonical JSON: ``policies.canonical`` is the only encoder of hashed or signed JSON.

The audit chain, recordings, checkpoints, policy input hashes, OPA bodies and the webhook body
all go through it (docs/architecture.md, *Canonical JSON*). The AST check below fails on any
other module in broker/, sessions/, policies/ that builds its own canonical form: a
``json.dumps``/``json.dump``/``json.JSONEncoder`` call with ``sort_keys=True`` and compact
``separators``. Display output (``indent=...``) is not canonical JSON and is not flagged.
"""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from policies.canonical import canonical_bytes, canonical_json, format_timestamp

ROOT = Path(__file__).resolve().parents[1]
THE_ONE = "policies/canonical.py"
ENCODERS = {"dumps", "dump", "JSONEncoder"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_canonical_encoder(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ENCODERS:
        return False
    sort_keys = _keyword(call, "sort_keys")
    sorted_ = isinstance(sort_keys, ast.Constant) and sort_keys.value is True
    return sorted_ and _keyword(call, "separators") is not None


def _own_canonical_encoders() -> list[str]:
    found = []
    for package in ("broker", "sessions", "policies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name == THE_ONE or "node_modules" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _is_canonical_encoder(node):
                    found.append(f"{name}:{node.lineno}")
    return found


def test_no_module_has_its_own_canonical_json() -> None:
    found = _own_canonical_encoders()
    assert not found, f"encode hashed/signed JSON with policies.canonical instead: {found}"


def test_the_check_sees_a_second_encoder(tmp_path: Path) -> None:
    source = 'import json\nbody = json.dumps(x, sort_keys=True, separators=(",", ":"))\n'
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)]
    assert [_is_canonical_encoder(c) for c in calls] == [True]
    pretty = "import json\ntext = json.dumps(x, indent=2, sort_keys=True)\n"
    calls = [n for n in ast.walk(ast.parse(pretty)) if isinstance(n, ast.Call)]
    assert [_is_canonical_encoder(c) for c in calls] == [False]


def test_the_canonical_form() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    at = now.astimezone(timezone(timedelta(hours=2)))  # any offset: written as UTC
    value = {"b": [1, 2.5, None, True], "a": "é\u2028", "t": at}
    text = canonical_json(value)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S") + ".000000Z"
    assert text == '{"a":"é\u2028","b":[1,2.5,null,true],"t":"' + stamp + '"}'
    assert canonical_bytes(value) == text.encode("utf-8")
    assert json.loads(text)["t"] == format_timestamp(at.astimezone(UTC))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (datetime.now(UTC).replace(tzinfo=None), ValueError),  # naive: its instant is unknown
        ({1, 2}, TypeError),
        (b"bytes", TypeError),
    ],
)
def test_what_json_cannot_hold_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        canonical_json({"v": value})
    with pytest.raises(UnicodeEncodeError):
        canonical_bytes("\ud800")  # a lone surrogate cannot be UTF-8
