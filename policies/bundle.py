"""Policy bundles: a directory of ``*.rego`` files (tests in ``*_test.rego``) and ``data.json``.

A bundle is read whole, given a content version (SHA-256 over every file, 12 hex digits),
compiled with the embedded engine (regorus), and its tests run: every rule named ``test_*``
in a ``*_test.rego`` file must evaluate to ``true``. Package paths must mirror folders
(``conduit/access/x.rego`` declares ``package conduit.access`` or ``conduit.access_test``);
the folder may sit deeper below the root (``policies/`` holds the bundle in ``bundle/``).
Errors come back as ``file:line:col: message`` lines, never as engine stack traces.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Why: with RUST_BACKTRACE=1 in the environment, every regorus error captures a Rust stack
# backtrace (~250 ms); error messages are all we need. Must be set before the first error.
os.environ["RUST_LIB_BACKTRACE"] = "0"

import regorus

from policies.errors import BundleError

_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)\s*$", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)
_LOCATION = re.compile(r"-->\s*(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+)")
_MESSAGE = re.compile(r"^error:\s*(?P<msg>.+)$", re.MULTILINE)
MAX_FILE_BYTES = 1 << 20


def engine_error(exc: BaseException) -> str:
    """A one-line ``file:line:col: message`` from a regorus error (its backtrace dropped)."""
    text = str(exc).split("Stack backtrace:", 1)[0].strip()
    loc, msg = _LOCATION.search(text), _MESSAGE.search(text)
    if loc and msg:
        return f"{loc['file']}:{loc['line']}:{loc['col']}: {msg['msg'].strip()}"
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class RegoFile:
    path: str  # relative to the bundle root, with forward slashes
    text: str
    package: str

    @property
    def is_test(self) -> bool:
        return self.path.endswith("_test.rego")


@dataclass(frozen=True)
class Bundle:
    root: Path
    files: tuple[RegoFile, ...]
    data: dict[str, Any]
    version: str

    @property
    def policies(self) -> tuple[RegoFile, ...]:
        return tuple(f for f in self.files if not f.is_test)

    @property
    def tests(self) -> tuple[RegoFile, ...]:
        return tuple(f for f in self.files if f.is_test)

    def packages(self) -> list[str]:
        return sorted({f.package for f in self.policies})


def load_bundle(root: Path) -> Bundle:
    """Read every ``.rego`` and ``data.json`` below ``root``.

    Raises BundleError listing every problem found (not just the first).
    """
    if not root.is_dir():
        raise BundleError(f"policy bundle {root} is not a directory", code="bundle_missing")
    problems: list[str] = []
    files: list[RegoFile] = []
    data: dict[str, Any] = {}
    digest = hashlib.sha256()
    paths = sorted(
        p for p in root.rglob("*") if p.is_file() and (p.suffix == ".rego" or p.name == "data.json")
    )
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{rel}: larger than {MAX_FILE_BYTES} bytes")
            continue
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{rel}: unreadable ({exc})")
            continue
        digest.update(rel.encode() + b"\0" + raw + b"\0")
        if path.name == "data.json":
            try:
                value = json.loads(text)
            except ValueError as exc:
                problems.append(f"{rel}:{getattr(exc, 'lineno', 1)}: invalid JSON: {exc}")
                continue
            node = data
            for part in path.parent.relative_to(root).parts:
                node = node.setdefault(part, {})
            if not isinstance(value, dict):
                problems.append(f"{rel}: data.json must hold an object")
                continue
            node.update(value)
            continue
        match = _PACKAGE.search(text)
        if match is None:
            problems.append(f"{rel}:1:1: no package declaration")
            continue
        package = match.group(1)
        parts = path.parent.relative_to(root).parts
        pkg_parts = tuple(package.removesuffix("_test").split("."))
        folder = ".".join(parts)
        if parts and parts[-len(pkg_parts) :] != pkg_parts:
            problems.append(
                f"{rel}:{text[: match.start()].count(chr(10)) + 1}:1: package {package} does not "
                f"mirror its folder (expected {folder})"
            )
        files.append(RegoFile(rel, text, package))
    if not files and not problems:
        problems.append(f"{root}: no .rego files")
    if problems:
        raise BundleError(f"policy bundle {root} cannot be loaded", problems)
    return Bundle(root, tuple(files), data, digest.hexdigest()[:12])


def compile_bundle(bundle: Bundle, *, include_tests: bool = False) -> regorus.Engine:
    """A regorus engine with the bundle's policies (and tests) and data loaded.

    Raises BundleError with one ``file:line:col: message`` per failing file.
    """
    engine = regorus.Engine()
    problems: list[str] = []
    for f in bundle.files:
        if f.is_test and not include_tests:
            continue
        try:
            engine.add_policy(f.path, f.text)
        except RuntimeError as exc:
            problems.append(engine_error(exc))
    if problems:
        # The error's traceback keeps this frame: without the engine, so that whoever keeps
        # the error (in a reference cycle) cannot leave the engine to the garbage collector,
        # which may run on another thread (regorus objects must be dropped on their own).
        del engine
        raise BundleError(
            f"policy bundle {bundle.root} does not compile", problems, code="bundle_compile"
        )
    if bundle.data:
        engine.add_data(bundle.data)
    return engine


def check_bundle(bundle: Bundle) -> list[str]:
    """Parse and compile everything, then evaluate each package once with an empty input.

    Returns problems (empty when the bundle is fine); undefined functions and type errors
    only show at evaluation, hence the dry run.
    """
    try:
        engine = compile_bundle(bundle, include_tests=True)
    except BundleError as exc:
        return exc.problems
    problems = []
    engine.set_input({})
    for package in bundle.packages():
        try:
            engine.eval_query(f"data.{package}")
        except RuntimeError as exc:
            problems.append(engine_error(exc))
    return problems


@dataclass(frozen=True)
class TestResult:
    name: str  # data.<package>.<rule>
    file: str
    passed: bool
    error: str | None = None
    duration_ms: float = 0.0


@dataclass
class TestReport:
    results: list[TestResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # load/compile problems: nothing ran

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed + len(self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems and self.failed == 0 and bool(self.results)

    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed} failed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "problems": self.problems,
            "results": [r.__dict__ for r in self.results],
        }


def run_tests(bundle: Bundle) -> TestReport:
    """Run every ``test_*`` rule of the bundle's test files (in this process)."""
    report = TestReport()
    try:
        engine = compile_bundle(bundle, include_tests=True)
    except BundleError as exc:
        report.problems = exc.problems
        return report
    engine.set_input({})
    for f in bundle.tests:
        for rule in dict.fromkeys(_TEST_RULE.findall(f.text)):
            name = f"data.{f.package}.{rule}"
            start = time.perf_counter()
            try:
                result = engine.eval_query(name)["result"]
                value = result[0]["expressions"][0]["value"] if result else None
                passed, error = value is True, None if value is True else f"evaluated to {value!r}"
                if not result:
                    error = "undefined (a condition did not hold)"
            except RuntimeError as exc:
                passed, error = False, engine_error(exc)
            report.results.append(
                TestResult(name, f.path, passed, error, (time.perf_counter() - start) * 1000)
            )
    if not report.results:
        report.problems.append(f"{bundle.root}: no test_* rules in any *_test.rego file")
    return report
