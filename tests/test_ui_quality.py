"""Every page, as each role sees it in headless Chromium: accessible, quiet, and usable on a phone.

For each demo role (vendor, approver, admin, security reviewer) a person signs in through the
real IdP and visits every page their navigation offers, plus the detail pages behind them (a
recording, the 404 page). On every page:

- axe-core (npm, from broker/frontend/node_modules) reports no ``serious`` or ``critical``
  violation;
- the browser logs no console error, no uncaught exception and no Content-Security-Policy
  violation (the app-wide CSP is strict: no inline style or script);
- at 390 px width the document does not scroll sideways (wide tables scroll in their box).

A screenshot of each page at desktop and phone width is kept in ``test-artifacts/ui-quality``
(ignored by git) for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from broker.demo import seed
from tests.harness.broker import RunningBroker, web_login
from tests.test_recordings_ui import make_recording

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "broker" / "frontend" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "test-artifacts" / "ui-quality"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
BLOCKING = ("serious", "critical")
# The CSP reports a blocked inline style or script this way, with or without the event.
CSP_RE = re.compile(r"Content Security Policy|Content-Security-Policy", re.IGNORECASE)

ROLES = {"alice": "vendor", "olga": "approver", "adam": "admin", "sam": "security"}


class PageWatch:
    """Console errors, uncaught exceptions and CSP violations of one page, since ``reset``."""

    def __init__(self, page: Page) -> None:
        assert AXE.is_file(), f"{AXE} is missing: run `make node-deps`"
        self.problems: list[str] = []
        self.error_document: str | None = None  # an error page: its own status is no problem
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        page.expose_function("conduitCspViolation", self._csp)
        # Registered before any page script runs, so no violation goes unseen.
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => "
            "window.conduitCspViolation(`${e.violatedDirective} blocked ${e.blockedURI}"
            " at ${e.sourceFile}:${e.lineNumber} (${e.sample})`));"
        )
        page.add_init_script(path=str(AXE))  # through the driver: not subject to the CSP

    def _console(self, message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        if where == self.error_document and message.text.startswith("Failed to load resource"):
            return  # Chromium logs an error page's own status as an error
        if message.type == "error" or CSP_RE.search(message.text):
            self.problems.append(f"console {message.type} at {where}: {message.text}")

    def _csp(self, text: str) -> None:
        self.problems.append(f"CSP violation: {text}")

    def reset(self, error_document: str | None = None) -> None:
        self.problems.clear()
        self.error_document = error_document


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


@pytest.fixture
def recording(plant: RunningBroker) -> str:
    """The id of a finished, signed SSH recording of alice's on hist-01, started yesterday."""
    with httpx2.Client(timeout=30.0, follow_redirects=False) as client:
        answer = web_login(client, plant.url, "alice", "alice-demo-pw")  # creates her user row
        assert answer.status_code == 303, answer.text
    started = plant.services.clock.now() - timedelta(days=1)
    return make_recording(plant, "alice", "hist-01", started=started).id


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    out = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    return out


def _signed_in(chromium: Browser, broker: RunningBroker, username: str) -> Iterator[Page]:
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(broker.url + "/")
    page.click("#signin-main")
    page.fill("#username", username)
    page.fill("#password", f"{username}-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(broker.url + "/")
    yield page
    context.close()


def _nav_paths(page: Page) -> list[str]:
    hrefs = page.eval_on_selector_all(
        "header nav a", "links => links.map(a => a.getAttribute('href'))"
    )
    return [h for h in hrefs if isinstance(h, str) and h.startswith("/")]


def _axe_problems(page: Page) -> list[str]:
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
    )
    return [
        f"axe {v['impact']} {v['id']}: {v['help']} at {v['nodes']}"
        for v in result
        if v["impact"] in BLOCKING
    ]


def _overflow(page: Page) -> str | None:
    sizes = page.evaluate(
        "() => [document.scrollingElement.scrollWidth, window.innerWidth,"
        " [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
        " > window.innerWidth + 1).slice(0, 3).map(e => e.tagName + '.' + e.className)]"
    )
    width, inner, wide = sizes
    return None if width <= inner else f"scrolls sideways at 390 px: {width} > {inner} ({wide})"


def _settled(page: Page) -> None:
    """Wait until the page has laid out and run its resize handlers (two animation frames)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def check_page(
    page: Page, watch: PageWatch, url: str, name: str, out: Path, status: int = 200
) -> list[str]:
    """Visit ``url`` (answered with ``status``) at desktop and phone width; the problems found,
    each prefixed by ``name``."""
    watch.reset(error_document=url if status >= 400 else None)
    page.set_viewport_size(DESKTOP)
    response = page.goto(url)
    page.wait_for_load_state("networkidle")
    _settled(page)
    problems = (
        [] if response and response.status == status else [f"status {response and response.status}"]
    )
    problems += _axe_problems(page)
    page.screenshot(path=str(out / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    _settled(page)
    problems += _axe_problems(page)  # the phone layout (a collapsed nav) must pass too
    overflow = _overflow(page)
    if overflow:
        problems.append(overflow)
    page.screenshot(path=str(out / f"{name}-phone.png"), full_page=True)
    problems += watch.problems
    return [f"{name} ({url}): {p}" for p in dict.fromkeys(problems)]


@pytest.mark.parametrize("username", list(ROLES))
def test_every_page_is_accessible_quiet_and_fits_a_phone(
    chromium: Browser, plant: RunningBroker, recording: str, artifacts: Path, username: str
) -> None:
    signed_in = _signed_in(chromium, plant, username)
    page = next(signed_in)
    watch = PageWatch(page)
    pages = {"home": "/", "whoami": "/whoami"}
    for path in _nav_paths(page):
        pages[path.strip("/").replace("/", "-")] = path
    assert len(pages) > 3, pages  # the nav offered the role's pages
    if "/recordings" in pages.values():
        pages["recording"] = f"/recordings/{recording}"

    problems: list[str] = []
    for name, path in pages.items():
        problems += check_page(page, watch, plant.url + path, name, artifacts)
    problems += check_page(page, watch, plant.url + "/no/such/page", "not-found", artifacts, 404)
    next(signed_in, None)
    assert not problems, "\n".join(problems)


def test_signed_out_pages_are_accessible(
    chromium: Browser, plant: RunningBroker, artifacts: Path
) -> None:
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    watch = PageWatch(page)
    problems: list[str] = []
    problems += check_page(page, watch, plant.url + "/", "start", artifacts)
    problems += check_page(page, watch, plant.url + "/no/such/page", "not-found", artifacts, 404)
    context.close()
    assert not problems, "\n".join(problems)
