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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response
from sqlmodel import select

from broker.dev.demo import seed
from sessions.db import session_scope
from sessions.models import AccessRequest
from tests.harness.broker import RunningBroker, form_values, web_login
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
        if message.type == "error" or CSP_RE.search(message.text):
            self.problems.append(f"console {message.type} at {where}: {message.text}")

    def _csp(self, text: str) -> None:
        self.problems.append(f"CSP violation: {text}")

    def own_status(self, problem: str) -> bool:
        """Chromium logs an error page's own HTTP status as a console error: no problem."""
        return problem.startswith(f"console error at {self.error_document}: Failed to load")

    def reset(self) -> None:
        self.problems = []
        self.error_document = None


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


def _file_request(client: httpx2.Client, broker: RunningBroker, reason: str) -> None:
    """Alice files a read-only request for hist-01 (the form's default asset) through the form."""
    page = client.get(f"{broker.url}/vendor")
    start = broker.services.clock.now() + timedelta(minutes=5)
    body = {
        "csrf": form_values(page.text)["csrf"],
        "asset": "hist-01",
        "operation_class": "read_only",
        "starts_at": start.strftime("%Y-%m-%dT%H:%M"),
        "duration": "60",
        "reason": reason,
    }
    answer = client.post(f"{broker.url}/vendor/requests", data=body)
    assert answer.status_code == 303, answer.text


@pytest.fixture
def recording(plant: RunningBroker) -> str:
    """Pages with content: alice's two requests (olga approved one, so a grant exists) and a
    finished, signed SSH recording of alice's on hist-01 started yesterday; its id."""
    with (
        httpx2.Client(timeout=30.0, follow_redirects=False) as alice,
        httpx2.Client(timeout=30.0, follow_redirects=False) as olga,
    ):
        for who, client in (("alice", alice), ("olga", olga)):  # creates their user rows
            answer = web_login(client, plant.url, who, f"{who}-demo-pw")
            assert answer.status_code == 303, answer.text
        _file_request(alice, plant, "historian health check")
        queue = olga.get(f"{plant.url}/approvals").text
        first = re.findall(r'id="pending-([0-9a-f-]+)"', queue)[0]
        done = olga.post(
            f"{plant.url}/approvals/{first}/approve", data={"csrf": form_values(queue)["csrf"]}
        )
        assert done.status_code == 303, done.text
        _file_request(alice, plant, "read the alarm history")  # stays pending
    started = plant.services.clock.now() - timedelta(days=1)
    return make_recording(plant, "alice", "hist-01", started=started).id


def _a_request(broker: RunningBroker) -> str:
    with session_scope(broker.services.engine) as db:
        return db.exec(select(AccessRequest)).first().id  # type: ignore[union-attr]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    out = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    return out


@contextmanager
def _signed_in(chromium: Browser, broker: RunningBroker, username: str) -> Iterator[Page]:
    """A fresh browser context signed in as ``username`` through the real IdP."""
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(broker.url + "/")
    page.click("#signin-main")
    page.fill("#username", username)
    page.fill("#password", f"{username}-demo-pw")
    page.click("#login-submit")
    page.wait_for_url(broker.url + "/")
    try:
        yield page
    finally:
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
    page: Page,
    watch: PageWatch,
    name: str,
    out: Path,
    visit: Callable[[], Response | None],
    status: int = 200,
) -> list[str]:
    """Load a page with ``visit`` (answered with ``status``), then check it at desktop and phone
    width; the problems found, each prefixed by ``name``."""
    watch.reset()
    page.set_viewport_size(DESKTOP)
    response = visit()
    if status >= 400:
        watch.error_document = page.url
    page.wait_for_load_state("networkidle")
    _settled(page)
    problems = (
        [] if response and response.status == status else [f"status {response and response.status}"]
    )
    problems += _axe_problems(page)
    page.screenshot(path=str(out / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    _settled(page)
    problems += _axe_problems(page)  # the phone layout (a wrapped nav) must pass too
    overflow = _overflow(page)
    if overflow:
        problems.append(overflow)
    page.screenshot(path=str(out / f"{name}-phone.png"), full_page=True)
    problems += [p for p in watch.problems if not watch.own_status(p)]
    return [f"{name} ({page.url}): {p}" for p in dict.fromkeys(problems)]


def _submit(page: Page, button: str = "#evaluate") -> Response | None:
    with page.expect_navigation() as navigation:
        page.click(button)
    return navigation.value


def check_url(
    page: Page, watch: PageWatch, url: str, name: str, out: Path, status: int = 200
) -> list[str]:
    return check_page(page, watch, name, out, lambda: page.goto(url), status)


def _reddish(page: Page, selector: str) -> bool:
    """The element's text and background are both red-toned (an error, not a success box)."""
    colours = page.eval_on_selector(
        selector,
        "e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]"
        ".map(c => c.match(/\\d+/g).slice(0, 3).map(Number))",
    )
    return all(r > g and r > b for r, g, b in colours)


@pytest.mark.parametrize("username", list(ROLES))
def test_every_page_is_accessible_quiet_and_fits_a_phone(
    chromium: Browser, plant: RunningBroker, recording: str, artifacts: Path, username: str
) -> None:
    with _signed_in(chromium, plant, username) as page:
        watch = PageWatch(page)
        nav = _nav_paths(page)
        assert len(nav) >= 2, nav  # the nav offered the role's pages
        # pages every signed-in user reaches (the CLI's sign-in approval too)
        pages = {"home": "/", "whoami": "/whoami", "cli-activate": "/cli/activate"}
        if ROLES[username] in ("vendor", "admin"):  # who may sign in an SSH client
            pages["ssh-approve"] = "/ssh/approve"
        pages.update({path.strip("/").replace("/", "-"): path for path in nav})
        if "/recordings" in nav:
            pages["recording"] = f"/recordings/{recording}"
        if ROLES[username] in ("vendor", "approver", "admin"):  # alice's, on olga's asset
            pages["request"] = f"/requests/{_a_request(plant)}"

        problems: list[str] = []
        for name, path in pages.items():
            problems += check_url(page, watch, plant.url + path, name, artifacts)
        if "/admin/whatif" in nav:  # the simulator's answer: decision, reasons, input document

            def simulate() -> Response | None:
                page.goto(plant.url + "/admin/whatif")
                page.select_option("#user_id", index=1)
                return _submit(page)

            problems += check_page(page, watch, "whatif-result", artifacts, simulate)
            assert page.locator("#whatif-result").count() == 1
        problems += check_url(page, watch, plant.url + "/no/such/page", "not-found", artifacts, 404)
        assert page.locator("#error-code").text_content() == "not_found"
        assert _nav_paths(page) == nav  # the error page keeps the layout and its navigation
    assert not problems, "\n".join(problems)


def test_refusals_and_method_errors_are_pages_in_the_layout(
    chromium: Browser, plant: RunningBroker, artifacts: Path
) -> None:
    """A form sent with a stale CSRF token, a GET of a POST-only address and a page of another
    role: each answered with the layout's error page (navigation kept), the refusal in red on
    red, accessible."""
    with _signed_in(chromium, plant, "alice") as page:
        watch = PageWatch(page)
        page.goto(plant.url + "/vendor")
        page.fill("#reason", "replace the HMI's disk")
        page.eval_on_selector("#request-form input[name=csrf]", "e => { e.value = 'stale'; }")

        problems = check_page(
            page, watch, "csrf-refused", artifacts, lambda: _submit(page, "#request-submit"), 400
        )
        assert page.locator("#error-code").text_content() == "bad_request"
        assert page.locator("header nav a[href='/vendor']").count() == 1  # still in the layout
        assert _reddish(page, "#error-message")
        problems += check_url(page, watch, plant.url + "/logout", "get-logout", artifacts, 405)
        assert page.locator("#error-code").text_content() == "method_not_allowed"
        problems += check_url(page, watch, plant.url + "/admin/plant", "forbidden", artifacts, 403)
        assert page.locator("#error-code").text_content() == "forbidden"
        assert _reddish(page, "#error-message")
    assert not problems, "\n".join(problems)


def test_signed_out_pages_are_accessible(
    chromium: Browser, plant: RunningBroker, artifacts: Path
) -> None:
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    watch = PageWatch(page)
    problems = check_url(page, watch, plant.url + "/", "start", artifacts)
    button = page.locator("#signin")  # the header's sign-in button: dark text on white
    assert button.evaluate("e => getComputedStyle(e).color") == "rgb(20, 32, 46)"
    problems += check_url(page, watch, plant.url + "/no/such/page", "not-found", artifacts, 404)
    context.close()
    assert not problems, "\n".join(problems)
