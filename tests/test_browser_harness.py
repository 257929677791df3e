"""The browser harness itself (tests/browser.py): headless Chromium loads a page from a local HTTP server, takes
typing and a click, runs the page's script and writes a PNG screenshot, without any network beyond 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

PAGE = b"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>harness</title></head>
<body>
  <form id="form" onsubmit="return false">
    <label for="name">Name</label>
    <input id="name" name="name" autocomplete="off">
    <button id="greet" type="button">Greet</button>
  </form>
  <p id="out">waiting</p>
  <script>
    document.getElementById("greet").addEventListener("click", () => {
      document.getElementById("out").textContent = "Hello, " + document.getElementById("name").value + "!";
    });
  </script>
</body>
</html>
"""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    """The page, served on 127.0.0.1 at a free port from a thread for the test's duration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_form_click_and_screenshot(browser: WebDriver, page_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_url)
    assert browser.title == "harness"
    assert browser.find_element(By.CSS_SELECTOR, "label[for=name]").text == "Name"
    out = browser.find_element(By.ID, "out")
    assert out.text == "waiting"

    browser.find_element(By.ID, "name").send_keys("Ada")
    browser.find_element(By.ID, "greet").click()
    WebDriverWait(browser, 10).until(lambda _: out.text != "waiting")
    assert out.text == "Hello, Ada!"

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
    assert width > 0 and height > 0
