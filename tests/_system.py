"""System packages the tests need, from Debian's archive (issue 16: Alertmanager).

:func:`require_program` finds a program; when it is missing and we are root (a CI
container, a fresh Debian machine) it runs ``apt-get install -y`` for its package.
Otherwise the test fails with the command to run: it never skips, so CI never passes
without having run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

_lock = threading.Lock()


def require_program(program: str, package: str) -> str:
    """The path of ``program``, installing the Debian ``package`` when it is missing."""
    with _lock:
        found = shutil.which(program)
        if found:
            return found
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail(
                f"{program} is missing: install it with `sudo apt-get install -y {package}` "
                "(the tests install it themselves when they run as root on Debian)"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "install", "-y", "--no-install-recommends", package],
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", package],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if cmd[1] == "install" and done.returncode == 0:
                break
        found = shutil.which(program)
        if not found:
            pytest.fail(f"apt-get could not install {package}:\n{done.stderr[-2000:]}")
        return found


def alertmanager() -> str:
    return require_program("prometheus-alertmanager", "prometheus-alertmanager")
