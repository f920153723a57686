"""A missing component skips locally and fails in CI (tests/harness/components.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import components
from tests.harness.components import component_missing, needs

REPO = Path(__file__).resolve().parents[1]

# A throwaway test package that uses the suite's conftest hooks, so the real wiring is run.
_CONFTEST = "from tests.conftest import *  # noqa: F403\n"
_TESTS = """
import pytest
from tests.harness import components
from tests.harness.components import component_missing, needs

components.PROBES["gone"] = lambda: "not here (Debian package gone)"


def test_helper() -> None:
    component_missing("gone", "not here")


@needs("gone")
def test_mark() -> None:
    pass


def test_stray_skip() -> None:
    pytest.skip("some other reason")


def test_passes() -> None:
    pass
"""


def _run(tmp_path: Path, **env: str) -> str:
    pkg = tmp_path / "probe_pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "conftest.py").write_text(_CONFTEST)
    (pkg / "test_probe.py").write_text(_TESTS)
    clean = {
        k: v for k, v in os.environ.items() if k not in ("CI", components.SWITCH, "PYTEST_ADDOPTS")
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(pkg)],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def test_missing_components_skip_with_their_reason_locally(tmp_path: Path) -> None:
    out = _run(tmp_path)
    assert "1 passed, 3 skipped" in out, out
    assert out.count("component missing: gone: not here") == 2, out


@pytest.mark.parametrize("switch", [{components.SWITCH: "1"}, {"CI": "true"}])
def test_under_the_switch_every_skip_fails(tmp_path: Path, switch: dict[str, str]) -> None:
    out = _run(tmp_path, **switch)
    assert "1 passed" in out and "skipped" not in out.splitlines()[-1], out
    assert "FAILED probe_pkg/test_probe.py::test_helper" in out, out
    assert "ERROR probe_pkg/test_probe.py::test_mark" in out, out  # refused at set-up
    assert "FAILED probe_pkg/test_probe.py::test_stray_skip" in out, out
    assert "skip without tests.harness.components.component_missing" in out, out


def test_helper_raises_skip_or_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(components.SWITCH, raising=False)
    with pytest.raises(pytest.skip.Exception, match="component missing: x: why"):
        component_missing("x", "why")
    monkeypatch.setenv(components.SWITCH, "1")
    with pytest.raises(pytest.fail.Exception, match="component missing: x: why"):
        component_missing("x", "why")


def test_needs_knows_its_components() -> None:
    with pytest.raises(ValueError, match="unknown components"):
        needs("sshd", "flux-capacitor")
    assert needs("sshd", "tshark").args == ("sshd", "tshark")
