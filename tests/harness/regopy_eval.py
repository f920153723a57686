"""Evaluate a bundle's decisions with regopy (Microsoft rego-cpp), a second Rego engine.

    python -m tests.harness.regopy_eval [--interpret] BUNDLE_DIR < corpus.jsonl > results.jsonl

Each input line is ``{"input": {...}, "data": {...}}``; each output line is
``{"allow": bool | null, "reasons": [str] | null, "error": str | null}`` for the query
``data.conduit.access.decision``. Every ``*.rego`` file below BUNDLE_DIR except ``*_test.rego``
is loaded. Lines sharing the same data document share one compiled rego-cpp bundle (its
bytecode VM, ~4 ms a decision); ``--interpret`` queries the tree-walking interpreter instead
(~40 ms a decision).

Runs as its own process on purpose: rego-cpp can crash the interpreter (it segfaults on
``with input as`` combined with builtins), so it is never imported into the test process.
Imports nothing from the project.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import regopy

QUERY = "data.conduit.access.decision"
BUNDLE_QUERY = f"x = {QUERY}"
MAX_ENGINES = 64
MAX_ERROR = 400


def load_modules(root: Path) -> list[tuple[str, str]]:
    return [
        (path.relative_to(root).as_posix(), path.read_text(encoding="utf-8"))
        for path in sorted(root.rglob("*.rego"))
        if not path.name.endswith("_test.rego")
    ]


class Engine:
    """One data document's rego-cpp interpreter, optionally with the decision compiled."""

    def __init__(self, modules: list[tuple[str, str]], data: Any, *, compiled: bool) -> None:
        self.interpreter = regopy.Interpreter()
        for name, text in modules:
            self.interpreter.add_module(name, text)
        if data:
            self.interpreter.add_data(data)
        self.bundle = self.interpreter.build(BUNDLE_QUERY) if compiled else None

    def decide(self, document: Any) -> dict[str, Any]:
        self.interpreter.set_input(document)
        try:
            if self.bundle is not None:
                output = self.interpreter.query_bundle(self.bundle)
            else:
                output = self.interpreter.query(QUERY)
        except ValueError as exc:  # regopy could not parse rego-cpp's rendering of the result
            return failure(f"unparseable result: {exc}")
        if not output.ok():
            return failure(str(output))
        if len(output) == 0:
            return failure("undefined")
        value = output[0]["x"] if self.bundle is not None else output[0][0]
        if not isinstance(value, dict):
            return failure(f"not an object: {value!r}")
        return {"allow": value.get("allow"), "reasons": value.get("reasons"), "error": None}


def failure(message: str) -> dict[str, Any]:
    # rego-cpp errors embed the whole input as an AST dump: keep the head only.
    return {"allow": None, "reasons": None, "error": message.strip()[:MAX_ERROR] or "error"}


def main(argv: list[str]) -> int:
    compiled = "--interpret" not in argv
    args = [a for a in argv if a != "--interpret"]
    if len(args) != 1:
        print(
            "usage: python -m tests.harness.regopy_eval [--interpret] BUNDLE_DIR", file=sys.stderr
        )
        return 2
    modules = load_modules(Path(args[0]))
    engines: dict[str, Engine] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        key = json.dumps(case.get("data"), sort_keys=True)
        try:
            engine = engines.get(key)
            if engine is None:
                if len(engines) >= MAX_ENGINES:
                    engines.clear()
                engine = engines[key] = Engine(modules, case.get("data"), compiled=compiled)
            result = engine.decide(case.get("input"))
        except regopy.RegoError as exc:
            result = failure(str(exc) or "RegoError")
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
