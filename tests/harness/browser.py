"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, `make browser`) driven by
Selenium, for the console's tests: open a page, sign in with a key, wait for an element, save
a screenshot, and read the page's console errors."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: seconds a page element gets to appear on a loaded 2-core machine
WAIT = 20.0


class Browser:
    """One headless Chromium; screenshots go to ``shots`` (the test's temporary directory)."""

    def __init__(self, driver: webdriver.Chrome, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    def open(self, url: str) -> None:
        self.driver.get(url)

    def sign_in(self, base: str, key: str) -> None:
        """Opens the console at ``base`` and enters ``key`` in its key form."""
        self.open(base + "/ui/")
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.refresh()
        field = self.wait_css("#api-key")
        field.send_keys(key)
        self.wait_css("#sign-in").click()
        self.wait_css("#nav-registry")

    def go(self, base: str, fragment: str) -> None:
        """A console page (``#/registry``, ``#/view/NAME`` ...) in the signed-in tab."""
        self.driver.get(f"{base}/ui/{fragment}")

    def wait_css(self, selector: str, timeout: float = WAIT) -> WebElement:
        try:
            return WebDriverWait(self.driver, timeout).until(
                lambda d: d.find_element(By.CSS_SELECTOR, selector)
            )
        except TimeoutException:
            raise AssertionError(
                f"no element {selector!r} within {timeout} s; page text:\n{self.text()}"
            ) from None

    def wait_for(self, pred: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        def check(_d: Any) -> Any:
            try:
                return pred()
            except StaleElementReferenceException:
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(check)
        except TimeoutException:
            raise AssertionError(f"{what}: not within {timeout} s; page:\n{self.text()}") from None

    def css(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[dict[str, Any]]:
        """The page's console messages of level SEVERE since the last call."""
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    def assert_no_console_errors(self) -> None:
        errors = self.console_errors()
        assert not errors, f"console errors: {errors}"


def browser_missing() -> str | None:
    """Why no browser test can run here (None: it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return (
                f"{path} is missing: `make browser` installs Debian's chromium and chromium-driver"
            )
    return None


@contextmanager
def chromium(shots: Path, width: int = 1280, height: int = 900) -> Iterator[Browser]:
    """A headless Chromium (Debian's), closed on exit."""
    missing = browser_missing()
    if missing is not None:
        raise AssertionError(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver is Debian's: Selenium Manager would try to download one
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()
