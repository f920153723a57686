"""Clock reads only through the injected clock.

Code takes a :class:`sessions.clock.Clock` (``policies.clock``) and calls ``now()`` on it, so
tests can move time and every timestamp comes from one place; composition roots (the app, the
CLI commands) construct the :class:`SystemClock`. This AST check fails on a direct read of the
system time anywhere in broker/, sessions/, policies/ outside the clock module and the
allowlist below: ``time.time()``, ``time.monotonic()`` (and their ``_ns`` forms),
``datetime.now()``, ``datetime.utcnow()``, ``datetime.today()``, ``date.today()``, or importing
those functions by name. Stopwatches (``time.perf_counter``, ``time.thread_time``: a decision's
elapsed time and CPU budget) are durations, not clock reads, and are not flagged.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_MODULES = {"policies/clock.py"}  # SystemClock; sessions/clock.py re-exports it
ALLOWED = {
    # The experimental compiled-VM evaluator times its own verification run against a deadline
    # with time.monotonic (never a timestamp; policies/rvm.py documents it).
    "policies/rvm.py",
}
ALLOWED_TREES = (
    # Alembic revisions are frozen history: a data migration stamps the rows it creates.
    "sessions/migrations/",
)
READS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "monotonic_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}


def _direct_reads(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else None
            if isinstance(owner, ast.Name):
                owner_name = owner.id
            if (owner_name, node.func.attr) in READS:
                found.append(f"{name}:{node.lineno} {owner_name}.{node.func.attr}()")
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
            for alias in node.names:
                if (node.module, alias.name) in READS:
                    found.append(f"{name}:{node.lineno} from {node.module} import {alias.name}")
    return found


def _checked_modules() -> list[Path]:
    paths = []
    for package in ("broker", "sessions", "policies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if "node_modules" in path.parts or name in CLOCK_MODULES | ALLOWED:
                continue
            if not name.startswith(ALLOWED_TREES):
                paths.append(path)
    return paths


def test_time_is_read_only_through_the_injected_clock() -> None:
    found = []
    for path in _checked_modules():
        name = path.relative_to(ROOT).as_posix()
        found += _direct_reads(path.read_text(encoding="utf-8"), name)
    assert not found, f"read the time through the injected Clock instead: {found}"


def test_the_check_sees_each_form_of_read() -> None:
    source = "\n".join(
        [
            "import time, datetime as dt",
            "from datetime import datetime, date",
            "from time import monotonic",
            "a = time.time()",
            "b = time.monotonic_ns()",
            "c = datetime.now(UTC)",
            "d = dt.datetime.utcnow()",
            "e = date.today()",
            "f = time.perf_counter()",  # a stopwatch: allowed
            "g = clock.now()",  # the injected clock: allowed
        ]
    )
    found = _direct_reads(source, "x.py")
    assert [line.split(" ", 1)[1] for line in found] == [
        "from time import monotonic",
        "time.time()",
        "time.monotonic_ns()",
        "datetime.now()",
        "datetime.utcnow()",
        "date.today()",
    ]


def test_the_clock_module_is_the_read() -> None:
    source = (ROOT / "policies" / "clock.py").read_text(encoding="utf-8")
    assert _direct_reads(source, "policies/clock.py"), "the clock module should read the time"
