"""Headless Debian Chromium driven by Playwright, for browser tests.

Never run ``playwright install``: the system Chromium is used through
``executable_path``.  Set ``CONDUIT_CHROMIUM`` to point at another binary.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright
from playwright.sync_api import Browser as SyncBrowser
from playwright.sync_api import Page as SyncPage
from playwright.sync_api import sync_playwright

DEFAULT_CHROMIUM = "/usr/bin/chromium"
LAUNCH_TIMEOUT_MS = 20_000

CHROMIUM_ARGS: list[str] = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


class BrowserUnavailable(RuntimeError):
    """No Chromium binary to launch."""


def chromium_path() -> str | None:
    """The Chromium binary to use: $CONDUIT_CHROMIUM, else /usr/bin/chromium, else None."""
    candidate = os.environ.get("CONDUIT_CHROMIUM") or DEFAULT_CHROMIUM
    return candidate if os.access(candidate, os.X_OK) else None


def browser_available() -> str | None:
    """Return why Chromium cannot be launched here, or None when it can."""
    if chromium_path() is None:
        return f"no Chromium at $CONDUIT_CHROMIUM or {DEFAULT_CHROMIUM} (Debian package chromium)"
    return None


def browser_env() -> dict[str, str]:
    """Chromium's environment: ours without libfaketime (``make test-future``).

    The browser stands for the vendor's own machine, whose clock is not the server's; and
    Chromium's crash handler and timers hang under libfaketime.
    """
    preload = [
        lib
        for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
        if "faketime" not in lib
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME")}
    env["LD_PRELOAD"] = " ".join(preload)
    return env


def _executable() -> str:
    path = chromium_path()
    if path is None:
        raise BrowserUnavailable(f"launch browser: {browser_available()}")
    return path


@asynccontextmanager
async def launch_browser() -> AsyncIterator[Browser]:
    """Launch headless Chromium; close it and the Playwright driver on exit."""
    executable = _executable()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            chromium_sandbox=False,
            timeout=LAUNCH_TIMEOUT_MS,
            env=browser_env(),
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextmanager
def launch_browser_sync() -> Iterator[SyncBrowser]:
    """Synchronous twin of ``launch_browser`` (not usable inside a running event loop)."""
    executable = _executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            chromium_sandbox=False,
            timeout=LAUNCH_TIMEOUT_MS,
            env=browser_env(),
        )
        try:
            yield browser
        finally:
            browser.close()


ARTIFACTS_ENV = "CONDUIT_TEST_ARTIFACTS"


def screenshot(page: SyncPage, directory: Path, name: str) -> Path:
    """Save a full-page PNG of ``page`` as ``NAME.png`` in ``$CONDUIT_TEST_ARTIFACTS`` if set
    (kept after the run, e.g. by CI), else in ``directory`` (the test's tmp dir)."""
    target = Path(os.environ.get(ARTIFACTS_ENV) or directory)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
