"""The browser harness drives the real Debian Chromium against a local page."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness.browser import launch_browser, launch_browser_sync
from tests.harness.components import needs

pytestmark = [pytest.mark.browser, needs("chromium")]

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title></head>
<body>
  <p id="status">waiting</p>
  <button id="go" onclick="document.getElementById('status').textContent = 'clicked'">Go</button>
</body></html>
"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_click_changes_text_and_screenshot(page_url: str, tmp_path: Path) -> None:
    async with launch_browser() as browser:  # bounded by the launch timeout (20 s)
        page = await browser.new_page()
        await page.goto(page_url)
        assert await page.text_content("#status") == "waiting"
        await page.click("#go")
        assert await page.text_content("#status") == "clicked"
        shot = tmp_path / "page.png"
        await page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sync_variant(page_url: str) -> None:
    with launch_browser_sync() as browser:
        page = browser.new_page()
        page.goto(page_url)
        page.click("#go")
        assert page.text_content("#status") == "clicked"
