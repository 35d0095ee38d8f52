"""Headless Chromium through Selenium, for the tests of the page at GET /.

The browser is whatever Chromium (or Chrome) and chromedriver are on PATH; Debian's ``chromium``
and ``chromium-driver`` packages give /usr/bin/chromium and /usr/bin/chromedriver (.ci/run
installs them). Tests skip, saying so, when there is none, and fail under CI=true (tests/inputs.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER = "chromedriver"
WINDOW = (1280, 1100)  # wide enough for the controls beside the image, tall enough for the timings
NO_BROWSER = (
    f"no browser for the page tests: none of {', '.join(BROWSERS)} together with {DRIVER} is on PATH "
    "(on Debian: apt-get install chromium chromium-driver, as .ci/run does)"
)

# The machines that run the tests have no internet: without these, Chromium waits on lookups for
# its component updates, sync and "first run" pages. --no-sandbox: CI runs as root, in containers.
_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--force-device-scale-factor=1",  # screenshot pixels == CSS pixels
)


def find_browser() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when either is missing."""
    driver = shutil.which(DRIVER)
    browser = next((path for path in map(shutil.which, BROWSERS) if path is not None), None)
    return (browser, driver) if browser is not None and driver is not None else None


def start_chrome(browser: str, driver: str, profile_dir: Path) -> webdriver.Chrome:
    """A headless Chromium with a fresh profile in ``profile_dir``, keeping the console log."""
    options = webdriver.ChromeOptions()
    options.binary_location = browser  # given, so Selenium Manager never goes looking (or online)
    for flag in _FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)
