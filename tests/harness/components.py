"""The one place where a test meets a missing real component (sshd, PostgreSQL, Chromium...).

Locally a missing component skips the tests that need it, with a reason saying what to
install.  In CI it must fail instead, or a broken image would pass green with a pile of
skips: ``CONDUIT_REQUIRE_COMPONENTS=1`` (set by ``.ci/run``) or ``CI=true`` turns every such
skip into a failure.  Tests declare what they need with ``@needs("sshd")`` (checked at
set-up, probes run once, lazily) or call :func:`component_missing` where the need is found
at run time.  ``tests/conftest.py`` wires the mark in and, as a safety net, fails any other
skip under the switch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import NoReturn

import pytest

from tests.harness.browser import browser_available
from tests.harness.postgres import postgres_available
from tests.harness.sshd import sshd_available

SWITCH = "CONDUIT_REQUIRE_COMPONENTS"
MARK = "needs"
REASON_PREFIX = "component missing"

TSHARK = "/usr/bin/tshark"
ASCIINEMA = "/usr/bin/asciinema"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def components_required() -> bool:
    """True when a missing component must fail the test (CI), not skip it."""
    return os.environ.get(SWITCH, "") not in ("", "0") or os.environ.get("CI") == "true"


def component_missing(name: str, why: str) -> NoReturn:
    """End the current test because component ``name`` cannot be used here (``why``).

    Skips locally; fails (no traceback, the reason is the message) under the switch.
    """
    message = f"{REASON_PREFIX}: {name}: {why}"
    if components_required():
        pytest.fail(f"{message} ({SWITCH}=1 or CI=true: a missing component fails)", False)
    pytest.skip(message)


def _executable(path: str, package: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        if os.access(path, os.X_OK):
            return None
        return f"{path} is not installed (Debian package {package})"

    return probe


def _openssh_tools() -> str | None:
    for tool in ("sftp", "scp"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package openssh-client)"
    if not Path(SFTP_SERVER).exists():
        return f"{SFTP_SERVER} not installed (Debian package openssh-sftp-server)"
    return None


PROBES: dict[str, Callable[[], str | None]] = {
    "sshd": sshd_available,
    "postgres": postgres_available,
    "chromium": browser_available,
    "tshark": _executable(TSHARK, "tshark"),
    "asciinema": _executable(ASCIINEMA, "asciinema"),
    "openssh-tools": _openssh_tools,
}


@cache
def why_missing(name: str) -> str | None:
    """Why component ``name`` (a key of :data:`PROBES`) cannot be used here; None if it can."""
    return PROBES[name]()


def require(name: str) -> None:
    """Return if component ``name`` is usable, else :func:`component_missing`."""
    why = why_missing(name)
    if why is not None:
        component_missing(name, why)


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark a test (or ``pytestmark`` a module) as needing these components."""
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"needs: unknown components {unknown}; known: {sorted(PROBES)}")
    return getattr(pytest.mark, MARK)(*names)
