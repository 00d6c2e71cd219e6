"""A dashboard in a process of its own, and a headless Chromium on it.

The browser is driven with Selenium's blocking calls; with the dashboard in another
process, a test drives the browser and its own SDK devices without either stalling
the other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests._browser import ensure_chromium

#: Where the test run writes the docs' screenshots, when asked to
#: (``DATAROOMS_DASHBOARD_SCREENSHOTS=1``, what ``scripts/dashboard-screenshots`` sets).
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "dashboard"


class DashboardProcess:
    """The dashboard in a process of its own, as the platform runs it (nio's stores are
    not safe to share between threads of one process, so not a thread here)."""

    def __init__(self, homeserver_url: str, server_name: str, data_dir: Path) -> None:
        self._args = [homeserver_url, server_name, str(data_dir)]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> DashboardProcess:
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "datarooms.services.dashboard", *self._args, "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http"):
            self._proc.kill()
            raise RuntimeError(f"the dashboard did not start: {line!r}")
        self.url = line
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def chromium(width: int = 1280, height: int = 800) -> webdriver.Chrome:
    browser, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


class Page:
    """The browser on the dashboard, with the few moves the tests make."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver, self.url = driver, url

    def wait(self, until: Callable[[Any], Any], timeout: float = 15.0) -> Any:
        try:
            # A live page redraws rows while it is read: a stale or not-yet-drawn
            # element means "not yet".
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.02,
                ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
            ).until(until)
        except TimeoutException:
            shown = self.all("#error")
            error = shown[0].text if shown and shown[0].is_displayed() else ""
            raise AssertionError(
                f"the page did not get there in {timeout} s; error: {error!r}"
            ) from None

    def css(self, selector: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def text(self, selector: str) -> str:
        return str(self.css(selector).text)

    def sign_in(self, user_id: str, password: str) -> None:
        self.driver.delete_all_cookies()
        self.driver.get(self.url + "/login")
        # With the keyboard only: type, Tab to the password, Enter submits.
        self.css("#user").send_keys(user_id + Keys.TAB)
        focused = self.driver.switch_to.active_element
        assert focused.get_attribute("id") == "password"
        focused.send_keys(password + Keys.ENTER)
        self.wait(lambda d: d.current_url.rstrip("/") == self.url and self.all("nav#rooms h2"))

    def open(self, fragment: str) -> None:
        self.driver.get(self.url + "/#" + fragment)

    def fetch(self, method: str, path: str, body: Any = None, csrf: bool = True) -> dict[str, Any]:
        """``fetch()`` from the page: ``{"status", "body"}``."""
        script = """
        const [method, path, body, csrf, done] = arguments;
        const headers = {"content-type": "application/json"};
        if (csrf) headers["x-csrf-token"] = document.querySelector('meta[name="csrf"]').content;
        fetch(path, {method, headers, body: body === null ? undefined : JSON.stringify(body)})
          .then(async (r) => done({status: r.status, body: await r.json().catch(() => null)}))
          .catch((e) => done({status: 0, body: String(e)}));
        """
        result: dict[str, Any] = self.driver.execute_async_script(script, method, path, body, csrf)
        return result

    def console_errors(self, *, expected: tuple[str, ...] = ()) -> list[str]:
        """Console errors since the last call (those containing an ``expected`` text aside)."""
        out = []
        for entry in self.driver.get_log("browser"):
            if entry.get("level") != "SEVERE":
                continue
            message = str(entry.get("message", ""))
            if not any(text in message for text in expected):
                out.append(message)
        return out

    def screenshot(self, name: str) -> None:
        if os.environ.get("DATAROOMS_DASHBOARD_SCREENSHOTS") != "1":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)  # let the flash animation of live rows end
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
