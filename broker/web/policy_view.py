"""The policy bundle as the Policy page shows it: files highlighted, version, test results.

:func:`bundle_view` reads the bundle directory the embedded engine loads (``.rego`` files,
``data.json`` files and the ``.manifest``), highlights each server-side with Pygments
(``RegoLexer``, ``JsonLexer``) into ``<span class="…">`` tokens (CSS classes only: the CSP
forbids inline styles; the colours are in ``conduit.css``) and runs the bundle's Rego tests
with :func:`policies.bundle.run_tests`, the logic of ``conduit policy test``. Test reports are
cached per bundle version (the content digest), so a page view runs them at most once per
change. A bundle that cannot be loaded is shown as its problems, never as a traceback.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import JsonLexer, RegoLexer, TextLexer

from policies.bundle import Bundle, TestReport, load_bundle, run_tests
from policies.errors import BundleError

MAX_SHOWN_BYTES = 256 * 1024  # a file larger than this is listed, not shown
_FORMATTER = HtmlFormatter(nowrap=True)  # classes, never style attributes


@dataclass(frozen=True)
class BundleFile:
    path: str
    kind: str  # "policy", "test", "data" or "manifest"
    html: Markup
    lines: int


@dataclass
class BundleView:
    files: list[BundleFile] = field(default_factory=list)
    version: str | None = None
    revision: str | None = None
    tests: TestReport | None = None
    problems: list[str] = field(default_factory=list)


def highlighted(text: str, language: str) -> Markup:
    """``text`` as escaped HTML with Pygments token classes (``rego``, ``json`` or plain)."""
    lexer = {"rego": RegoLexer, "json": JsonLexer}.get(language, TextLexer)()
    return Markup(highlight(text, lexer, _FORMATTER))  # noqa: S704 (Pygments escapes the text)


class TestCache:
    """Test reports per bundle version; thread-safe, and each version runs once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: dict[str, TestReport] = {}

    def report(self, bundle: Bundle) -> TestReport:
        with self._lock:
            found = self._reports.get(bundle.version)
            if found is None:
                found = self._reports[bundle.version] = run_tests(bundle)
            return found


def _revision(root: Path) -> str | None:
    try:
        manifest = json.loads((root / ".manifest").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    revision = manifest.get("revision") if isinstance(manifest, dict) else None
    return str(revision) if revision else None


def _file(root: Path, path: Path) -> BundleFile | None:
    rel = path.relative_to(root).as_posix()
    if path.suffix == ".rego":
        kind, language = ("test" if rel.endswith("_test.rego") else "policy"), "rego"
    elif path.name == "data.json":
        kind, language = "data", "json"
    elif path.name == ".manifest":
        kind, language = "manifest", "json"
    else:
        return None
    if path.stat().st_size > MAX_SHOWN_BYTES:
        return BundleFile(rel, kind, Markup("(too large to show)"), 0)
    text = path.read_text(encoding="utf-8", errors="replace")
    return BundleFile(rel, kind, highlighted(text, language), text.count("\n") + 1)


def bundle_view(root: Path, cache: TestCache) -> BundleView:
    """Everything the page shows about the bundle in ``root`` (runs the tests if not cached)."""
    view = BundleView(revision=_revision(root))
    try:
        bundle = load_bundle(root)
    except BundleError as exc:
        view.problems = exc.problems or [exc.message]
        return view
    view.version = bundle.version
    order = {"manifest": 0, "policy": 1, "data": 2, "test": 3}
    try:
        found = [f for p in sorted(root.rglob("*")) if p.is_file() and (f := _file(root, p))]
    except OSError as exc:
        view.problems = [f"reading the bundle: {exc.strerror or exc}"]
        return view
    view.files = sorted(found, key=lambda f: (order[f.kind], f.path))
    view.tests = cache.report(bundle)
    return view


def data_view(data: Any) -> Markup | None:
    """The data document the engine holds (``data.plant``…), highlighted; None if too large."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return highlighted(text, "json") if len(text) <= MAX_SHOWN_BYTES else None


def test_rows(report: TestReport) -> list[dict[str, Any]]:
    """One row per test: name, file, passed, error (for the template)."""
    return [
        {"name": r.name, "file": r.file, "passed": r.passed, "error": r.error}
        for r in report.results
    ]
