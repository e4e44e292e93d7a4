"""Headless Chromium for the browser tests, and a backend served where the browser can reach it.

Why Selenium: it is pure Python and speaks W3C WebDriver to the ``chromedriver`` that Debian
packages beside its Chromium (``apt-get install chromium chromium-driver``, same version, the
same way CI gets PostgreSQL and Redis — see ``scripts/browser``). The driver and the browser are
given by path, so Selenium Manager never runs and nothing is downloaded while testing.
Playwright's Python package runs a bundled Node.js driver and expects the browser builds it
downloads itself (``playwright install``), which CI has no internet for.

Without ``/usr/bin/chromium`` the browser tests skip, saying why — unless
``COMFYGRAM_REQUIRE_BROWSER=1`` (``scripts/test`` sets it), where they fail instead, so CI can't
pass by skipping them. Screenshots go to ``artifacts/screenshots/`` at the repository root, and
when a test fails there, the page as it was (``failed-<test>.png`` and ``.html``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.bot_helpers import serve

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
WINDOW = (1280, 900)
WAIT_SECONDS = 15


def missing_browser() -> str | None:
    """Why the browser can't run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: run scripts/browser (apt-get install {package})"
    return None


class Browser:
    """A headless Chromium, with explicit waits and screenshots (never sleeps)."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    def wait(self, timeout: float = WAIT_SECONDS) -> WebDriverWait:
        return WebDriverWait(self.driver, timeout)

    def open(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return self.driver.current_url

    def find(self, css: str, timeout: float = WAIT_SECONDS) -> WebElement:
        """The first element matching ``css`` once it is visible."""
        return self.wait(timeout).until(
            ec.visibility_of_element_located(("css selector", css)),
            f"nothing visible matches {css!r} on {self.url}",
        )

    def click(self, css: str) -> None:
        self.wait().until(
            ec.element_to_be_clickable(("css selector", css)),
            f"nothing clickable matches {css!r} on {self.url}",
        ).click()

    def wait_for_url(self, check: Callable[[str], bool], what: str) -> str:
        self.wait().until(lambda d: check(d.current_url), f"{what}; the URL is {self.url}")
        return self.url

    def loaded_image_width(self, image: WebElement) -> int:
        """The image's natural width once the browser has decoded it (0 means it failed)."""
        self.wait().until(
            lambda d: d.execute_script("return arguments[0].complete", image),
            f"the image {image.get_attribute('src')} never finished loading",
        )
        return int(self.driver.execute_script("return arguments[0].naturalWidth", image))

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        if not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"the screenshot {path} was not saved")
        return path


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Start Debian's Chromium through its chromedriver; skip (or fail, when required) if absent."""
    missing = missing_browser()
    if missing:
        if os.environ.get("COMFYGRAM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"COMFYGRAM_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser = Browser(driver)
    try:
        driver.set_page_load_timeout(30)
        yield browser
    except Exception:
        # What the browser showed when the test failed, beside the other screenshots.
        test = os.environ.get("PYTEST_CURRENT_TEST", "test").split(" ")[0].split("::")[-1]
        with contextlib.suppress(Exception):
            shot = browser.screenshot(f"failed-{test}")
            shot.with_suffix(".html").write_text(driver.page_source, encoding="utf-8")
        raise
    finally:
        driver.quit()


@contextlib.contextmanager
def served_in_thread(make_app: Callable[[], Any], timeout: float = 30) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, from a thread with its own event
    loop, and yield its URL. Selenium's calls block, so the server can't share the test's loop."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    urls: list[str] = []
    errors: list[BaseException] = []

    async def main() -> None:
        async with serve(lambda _url: make_app()) as url:
            urls.append(url)
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as error:  # reported to the test below
            errors.append(error)
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=run, name="served-app", daemon=True)
    thread.start()
    if not ready.wait(timeout) or errors:
        raise AssertionError(f"the app did not start in {timeout} s") from (errors or [None])[0]
    try:
        yield urls[0]
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout)
        if errors:
            raise AssertionError("the app failed while serving") from errors[0]
