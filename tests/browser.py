"""Headless Chromium for browser tests, driven through Selenium, offline.

Debian's ``chromium`` and ``chromium-driver`` (scripts/install.sh installs them when run as root) and the
``selenium`` package (the ``dev`` extra). Where any is missing the browser tests skip, saying why, unless
``CRYPTOFACE_REQUIRE_BROWSER=1`` (CI) turns the skip into a failure.

Selenium Manager, which would try to download a driver and a browser, never runs: the driver's path is passed
explicitly, Selenium Manager's offline switch is set, and it is patched to raise should anything still call it.

Use ``with chromium() as driver:`` or the ``browser`` fixture (registered in conftest.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, NoReturn
from unittest import mock

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

PACKAGES = "apt-get install chromium chromium-driver"
ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900")


def browser_paths() -> tuple[str | None, str | None]:
    """The Chromium binary and chromedriver on PATH (None where absent)."""
    return shutil.which("chromium"), shutil.which("chromedriver")


def browser_unavailable() -> str | None:
    """Why headless Chromium cannot run here, or None."""
    chromium_path, driver_path = browser_paths()
    missing = [name for name, path in (("chromium", chromium_path), ("chromedriver", driver_path)) if path is None]
    if missing:
        return f"no {' or '.join(missing)} on PATH ({PACKAGES}, Debian's packages)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def require_browser() -> None:
    """Skip the calling test when no browser can run; fail instead under ``CRYPTOFACE_REQUIRE_BROWSER=1``."""
    reason = browser_unavailable()
    if reason is None:
        return
    if os.environ.get("CRYPTOFACE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CRYPTOFACE_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _no_selenium_manager(self: object, args: list[str]) -> NoReturn:
    raise AssertionError(f"Selenium Manager was asked for {args}: it would download; pass the driver's path")


@contextmanager
def chromium(*extra: str) -> Iterator[WebDriver]:
    """A headless Chromium WebDriver (1280 x 900) with ``extra`` command-line switches, quit on exit; skips (or
    fails) the test where there is none."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    chromium_path, driver_path = browser_paths()
    assert chromium_path is not None and driver_path is not None
    options = Options()
    options.binary_location = chromium_path
    for argument in (*ARGUMENTS, *extra):
        options.add_argument(argument)
    with ExitStack() as stack:
        # SE_CHROMEDRIVER would replace the driver's path; SE_OFFLINE / SE_AVOID_STATS are Selenium Manager's.
        stack.enter_context(mock.patch.dict(os.environ, {"SE_OFFLINE": "true", "SE_AVOID_STATS": "true"}))
        os.environ.pop("SE_CHROMEDRIVER", None)
        stack.enter_context(mock.patch.object(SeleniumManager, "binary_paths", _no_selenium_manager))
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        stack.callback(driver.quit)
        yield driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A fresh headless Chromium per test (see ``chromium``)."""
    with chromium() as driver:
        yield driver
