"""A real headless Chromium for the browser tests (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium).

:func:`ensure_chromium` installs the two Debian packages with apt-get when they are
missing and the test runs as root; otherwise it fails with a message saying what to
install. Browsers downloaded by pip or npm do not work on this kind of machine, so
the system's browser is the one used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

CHROMIUM_PACKAGES = ("chromium", "chromium-driver")
#: The emoji the SAS view shows (and the docs' screenshots) need a colour emoji font.
EMOJI_FONT_PACKAGE = "fonts-noto-color-emoji"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
_lock = threading.Lock()


def _found() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _ensure_emoji_font() -> None:
    """Install the emoji font when it is missing and we are root; without it the page
    still works (the emoji's names are shown beside them), so no failure otherwise."""
    if os.path.exists(EMOJI_FONT) or os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", EMOJI_FONT_PACKAGE]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)


def ensure_chromium() -> tuple[str, str]:
    """``(chromium, chromedriver)`` executables, installing them first if need be."""
    with _lock:
        _ensure_emoji_font()
        found = _found()
        if found:
            return found
        if os.geteuid() != 0:
            raise RuntimeError(
                "the browser tests need Debian's chromium and chromium-driver; install them "
                "with: sudo apt-get install -y " + " ".join(CHROMIUM_PACKAGES)
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", *CHROMIUM_PACKAGES]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
            subprocess.run(install, env=env, capture_output=True, check=True)
        found = _found()
        if not found:
            raise RuntimeError(
                "apt-get installed chromium, yet chromium/chromedriver are not on PATH"
            )
        return found
