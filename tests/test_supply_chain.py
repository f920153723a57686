"""The policy engine package is pinned by version and hash, and installed as locked.

``gordon-to-regorus`` (import ``regorus``) is a packaged fork of microsoft/regorus: the decision
point's supply chain (docs/security.md). Its pin in pyproject.toml, its entry in uv.lock (the
PyPI registry, a SHA-256 for the sdist and every wheel) and the installed version must agree;
``make`` installs with ``uv sync --frozen``. The reference-engine check is
tests/test_policy_differential.py.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gordon-to-regorus"
REFERENCE = "regopy"


def _lock_entry(name: str) -> dict[str, Any]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    [entry] = [p for p in lock["package"] if p["name"] == name]
    return dict(entry)


def _pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*project["project"]["dependencies"], *project["dependency-groups"]["dev"]]


def test_policy_engine_is_pinned_by_version_and_hash() -> None:
    for name in (PACKAGE, REFERENCE):
        [pin] = [d for d in _pins() if re.match(rf"{re.escape(name)}\b", d)]
        version = pin.split("==", 1)[1] if "==" in pin else None
        assert version, f"{name} must be pinned to one version (==), not {pin!r}"
        entry = _lock_entry(name)
        assert entry["version"] == version
        assert entry["source"] == {"registry": "https://pypi.org/simple"}
        artifacts = [entry["sdist"], *entry["wheels"]]
        assert len(artifacts) >= 2
        for artifact in artifacts:
            assert isinstance(artifact, dict)
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", str(artifact["hash"])), artifact
        assert metadata.version(name) == version  # what runs is what is locked


def test_make_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"\$\(UV\) sync --frozen\b", makefile)
