"""Validate a bundle before it goes live: load, check, run its tests — in a subprocess.

The subprocess has a deadline, so a bundle whose rules loop or are pathologically slow is
rejected instead of stalling the broker. ``python -m policies.validate DIR`` prints one JSON
report; :func:`validate_bundle` runs it and returns a :class:`Validation`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.bundle import check_bundle, load_bundle, run_tests
from policies.errors import BundleError

DEFAULT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Validation:
    ok: bool
    version: str | None
    summary: str
    problems: list[str] = field(default_factory=list)
    tests: dict[str, Any] = field(default_factory=dict)


def _report(root: Path) -> dict[str, Any]:
    try:
        bundle = load_bundle(root)
    except BundleError as exc:
        return {"ok": False, "version": None, "summary": exc.message, "problems": exc.problems}
    problems = check_bundle(bundle)
    if problems:
        return {
            "ok": False,
            "version": bundle.version,
            "summary": "bundle does not compile",
            "problems": problems,
        }
    report = run_tests(bundle)
    failures = [f"{r.file}: {r.name} failed: {r.error}" for r in report.results if not r.passed]
    return {
        "ok": report.ok,
        "version": bundle.version,
        "summary": report.summary(),
        "problems": report.problems + failures,
        "tests": report.as_dict(),
    }


def validate_bundle(root: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Validation:
    """Run the full validation in a child process; a timeout or crash is a failed validation."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv: this interpreter + this module
            [sys.executable, "-m", "policies.validate", str(root)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Validation(
            False,
            None,
            f"bundle tests did not finish within {timeout_s:.0f} s",
            [f"{root}: evaluation did not finish in time (a rule loops or is too slow)"],
        )
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return Validation(
            False,
            None,
            f"bundle validation crashed (exit {done.returncode})",
            [f"{root}: {tail[0][:300]}"],
        )
    return Validation(
        bool(data["ok"]),
        data.get("version"),
        str(data["summary"]),
        list(data.get("problems", [])),
        dict(data.get("tests", {})),
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(json.dumps({"ok": False, "summary": "usage: python -m policies.validate DIR"}))
        return 2
    report = _report(Path(args[0]))
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
