"""``/admin/windows`` (real broker, real IdP) and the next-opening arithmetic; the Policy page's
bundle view (files highlighted with CSS classes, version, Rego test results)."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, expect

from broker.web.policy_view import highlighted
from broker.web.windows_page import next_opening
from sessions.windows import DAYS
from tests.harness.broker import RunningBroker, audit_events, form_values
from tests.test_access_browser import _sign_in
from tests.test_views import plant, signed_in  # noqa: F401 (the plant fixture)

TZ = "Europe/Berlin"


def test_next_opening_in_the_site_time_zone() -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    local = now.astimezone(ZoneInfo(TZ))
    later = (local + timedelta(hours=2)).strftime("%H:%M")
    earlier = (local - timedelta(hours=1)).strftime("%H:%M")
    inside = next_opening(list(DAYS), earlier, later, TZ, now)
    assert inside is not None and inside.open_now and inside.at > local
    ahead = next_opening(list(DAYS), later, (local + timedelta(hours=3)).strftime("%H:%M"), TZ, now)
    assert ahead is not None and not ahead.open_now
    assert ahead.at.strftime("%H:%M") == later and ahead.at > local
    # a window only on tomorrow's weekday opens tomorrow (or later), never today
    tomorrow = DAYS[(local.weekday() + 1) % 7]
    next_day = next_opening([tomorrow], "00:00", "00:30", TZ, now)
    assert next_day is not None and next_day.at.date() == (local + timedelta(days=1)).date()
    assert next_opening([], "01:00", "02:00", TZ, now) is None


def test_windows_page_lists_adds_and_removes(plant: RunningBroker) -> None:  # noqa: F811
    local = plant.services.clock.now().astimezone(ZoneInfo(TZ))
    start = (local - timedelta(hours=1)).strftime("%H:%M")
    end = (local + timedelta(hours=1)).strftime("%H:%M")
    with signed_in(plant, "adam") as adam:
        page = adam.get(f"{plant.url}/admin/windows")
        assert page.status_code == 200 and 'href="/admin/windows"' in page.text
        assert "Riverside Plant" in page.text and f"({TZ}, now " in page.text
        before = len(re.findall(r'id="window-Riverside Plant-\d+"', page.text))
        csrf = form_values(page.text)["csrf"]
        body = {"csrf": csrf, "site": "Riverside Plant", "start": start, "end": end}
        added = adam.post(
            f"{plant.url}/admin/windows/add",
            data={**body, "days": list(DAYS), "description": "every day now"},
        )
        assert added.status_code == 303, added.text
        page = adam.get(f"{plant.url}/admin/windows").text
        row = page.split(f'id="window-Riverside Plant-{before}"')[1].split("</tr>")[0]
        assert "every day now" in row and "open now</span> until" in row
        key = html.unescape(re.search(r'name="key" value="([^"]+)"', row).group(1))  # type: ignore[union-attr]
        assert audit_events(plant, "plant.site.changed")  # applied like `conduit plant apply`

        bad = adam.post(
            f"{plant.url}/admin/windows/add", data={**body, "days": ["mon"], "start": "25:00"}
        )
        assert bad.status_code == 400 and 'id="windows-error"' in bad.text
        assert "25:00" in bad.text
        unchanged = adam.get(f"{plant.url}/admin/windows").text
        assert len(re.findall(r'id="window-Riverside Plant-\d+"', unchanged)) == before + 1

        removed = adam.post(
            f"{plant.url}/admin/windows/remove",
            data={"csrf": csrf, "site": "Riverside Plant", "key": key},
        )
        assert removed.status_code == 303, removed.text
        assert "every day now" not in adam.get(f"{plant.url}/admin/windows").text

    with signed_in(plant, "olga") as olga:  # approvers read, never edit
        page = olga.get(f"{plant.url}/admin/windows")
        assert page.status_code == 200 and 'href="/admin/windows"' in page.text
        assert 'id="form-window"' not in page.text and "/admin/windows/remove" not in page.text
        refused = olga.post(
            f"{plant.url}/admin/windows/add",
            data={"csrf": form_values(page.text)["csrf"], "site": "Riverside Plant"},
        )
        assert refused.status_code == 403
    with signed_in(plant, "alice") as alice:
        assert alice.get(f"{plant.url}/admin/windows").status_code == 403


def test_policy_page_shows_the_bundle_and_its_tests(plant: RunningBroker) -> None:  # noqa: F811
    with signed_in(plant, "adam") as adam:
        page = adam.get(f"{plant.url}/admin/policy")
    assert page.status_code == 200
    html = page.text
    version = plant.services.policy_version()
    assert version and f'<dd id="bundle-version">{version}</dd>' in html
    assert re.search(r'<p id="bundle-tests" class="notice ok">\d+ passed, 0 failed</p>', html)
    assert 'data-path="conduit/access/access.rego"' in html
    assert 'data-path="conduit/access/access_test.rego"' in html
    assert '<span class="k">package</span>' in html or '<span class="kn">package</span>' in html
    assert '<span class="c1"># ' in html  # comments are tokens too
    data = html.split('id="policy-data"')[1].split("</details>")[0]
    assert '<span class="nt">"plant"</span>' in data and "hist-01" in data
    assert "style=" not in html.split("<main")[-1]  # classes only: the CSP forbids inline styles
    assert "style-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.browser
def test_highlighting_is_styled_by_the_stylesheet_under_the_csp(
    chromium: Browser,
    plant: RunningBroker,  # noqa: F811
) -> None:
    """Token colours come from conduit.css classes (the CSP blocks inline styles): in Chromium
    a Rego keyword is coloured, and no element in the page content carries a style attribute."""
    page = _sign_in(chromium, plant, "adam", "adam-demo-pw")
    for path in ("/admin/policy", "/admin/windows"):
        page.goto(plant.url + path)
        assert page.locator("main [style]").count() == 0, path
    page.goto(plant.url + "/admin/policy")
    keyword = page.locator('pre.highlight[data-path="conduit/access/access.rego"] .k').first
    expect(keyword).to_have_css("color", "rgb(122, 31, 138)")
    page.context.close()


def test_highlighting_escapes_what_it_shows() -> None:
    html = str(highlighted('msg := "<script>alert(1)</script>" # <b>&', "rego"))
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "&amp;" in html and "style=" not in html
    assert str(highlighted("<x>", "no-such-language")) == "&lt;x&gt;\n"
