"""``conduit policy test|check|eval``: work on Rego bundles offline (no broker needed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from broker.runtime.errors import BrokerError


def _bundle_dir(given: Path | None) -> Path:
    """``given`` (or the built-in bundle) if it is a directory; BrokerError otherwise."""
    from broker.runtime.settings import default_bundle_dir

    root = given or default_bundle_dir()
    if not root.is_dir():
        raise BrokerError(f"no policy bundle directory {root}", code="no_bundle")
    return root


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("policy", help="policy bundles")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    t = psub.add_parser("test", help="run the bundle's Rego tests; prints 'N passed, M failed'")
    t.add_argument("dir", nargs="?", type=Path, help="bundle directory (default: built-in)")
    t.add_argument("-v", "--verbose", action="store_true", help="list every test")
    t.set_defaults(func=test)
    c = psub.add_parser("check", help="parse and compile; errors as file:line:col")
    c.add_argument("dir", type=Path)
    c.set_defaults(func=check)
    e = psub.add_parser("eval", help="evaluate one input document; prints the decision JSON")
    e.add_argument(
        "--input", type=Path, required=True, help="input document (JSON file, - for stdin)"
    )
    e.add_argument("--bundle", type=Path, help="bundle directory (default: built-in)")
    e.add_argument("--data", type=Path, help="data document (JSON), e.g. {'plant': {...}}")
    e.add_argument("--explain", action="store_true", help="also print every rule of the package")
    e.set_defaults(func=evaluate)


def test(args: argparse.Namespace) -> int:
    from policies.bundle import load_bundle, run_tests
    from policies.errors import BundleError

    root = _bundle_dir(args.dir)
    try:
        report = run_tests(load_bundle(root))
    except BundleError as exc:
        print(f"{exc.message}:", *exc.problems, sep="\n  ")
        print("0 passed, 1 failed")
        return 1
    for problem in report.problems:
        print(f"ERROR {problem}")
    for r in report.results:
        if not r.passed:
            print(f"FAIL {r.name} ({r.file}): {r.error}")
        elif args.verbose:
            print(f"PASS {r.name} ({r.duration_ms:.2f} ms)")
    print(report.summary())
    return 0 if report.ok else 1


def check(args: argparse.Namespace) -> int:
    from policies.bundle import check_bundle, load_bundle
    from policies.errors import BundleError

    try:
        bundle = load_bundle(_bundle_dir(args.dir))
    except BundleError as exc:
        print(*exc.problems, sep="\n")
        return 1
    problems = check_bundle(bundle)
    if problems:
        print(*problems, sep="\n")
        return 1
    print(
        f"ok: {len(bundle.files)} files, packages {', '.join(bundle.packages())}, "
        f"version {bundle.version}"
    )
    return 0


def _read_json(path: Path, what: str) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        return json.loads(text)
    except OSError as exc:
        raise BrokerError(f"cannot read the {what} document {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BrokerError(f"the {what} document {path} is not JSON: {exc}") from None


def evaluate(args: argparse.Namespace) -> int:
    from policies.bundle import engine_error
    from policies.embedded import EmbeddedEngine

    document = _read_json(args.input, "input")
    if not isinstance(document, dict):
        raise BrokerError(f"the input document {args.input} must be a JSON object")
    # A bundle that does not load ends the command with its problems on one line (failures.py).
    engine = EmbeddedEngine.from_directory(_bundle_dir(args.bundle), budget_ms=10_000)
    if args.data:
        engine.set_data(_read_json(args.data, "data"))
    decision = engine.decide_sync(document)
    out: dict[str, Any] = decision.as_dict()
    if args.explain:
        explain: dict[str, Any] = {}
        probe = engine.clone_engine()
        probe.set_input(document)
        for package in engine.bundle.packages():
            try:
                explain[package] = probe.eval_query(f"data.{package}")["result"][0]["expressions"][
                    0
                ]["value"]
            except (RuntimeError, IndexError, KeyError) as exc:
                explain[package] = (
                    f"error: {engine_error(exc) if isinstance(exc, RuntimeError) else 'undefined'}"
                )
        out["explain"] = explain
    print(json.dumps(out, indent=2, default=str))
    return 0 if decision.allow else 3
