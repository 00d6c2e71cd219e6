"""Child processes of the scale profile: one log file each, stopped by signal, reported clearly.

PostgreSQL, Redis, the Synapse workers and nginx are each a :class:`Child`: spawned in a
session of its own (a Ctrl-C in the terminal reaches ``datarooms up``, which stops them in
order), told by the kernel to stop when ``datarooms up`` dies, its output in one log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from datarooms._fs import PRIVATE_FILE
from datarooms.errors import MissingDependencyError, PlatformError

_POLL_S = 0.05


def require_program(program: str, package: str, *, candidates: Sequence[Path] = ()) -> str:
    """The path of ``program`` (on ``PATH`` or one of ``candidates``), or a clear error."""
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(program)
    if found:
        return found
    raise MissingDependencyError(
        f"the scale profile needs {program}, which is not installed: install the Debian "
        f"package with `sudo apt-get install -y {package}` (or point the profile at an "
        "external service, docs/scaling.md)"
    )


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 32 * 1024))
        text = fh.read().decode("utf8", "replace")
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One long-running program of the platform."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.user = user
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        if self.user is not None:
            os.fchown(fd, pwd.getpwnam(self.user).pw_uid, -1)
        extra: dict[str, Any] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o077,
                preexec_fn=_die_with_parent,
                **extra,
            )
        finally:
            os.close(fd)

    async def wait_ready(
        self, ready: Callable[[], Awaitable[bool]], timeout: float, what: str | None = None
    ) -> None:
        """Poll ``ready`` until it says yes; a clear error if the child exits or is too slow."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise PlatformError(
                    f"{what or self.name} exited with code {code} during start-up.\n"
                    f"Last lines of its log ({self.log_path}):\n{tail(self.log_path)}"
                )
            if await ready():
                return
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"{what or self.name} did not become ready within {timeout:.0f} s.\n"
                    f"Last lines of its log ({self.log_path}):\n{tail(self.log_path)}"
                )
            await asyncio.sleep(_POLL_S)

    async def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal)
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(_POLL_S)
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            return proc.returncode
        finally:
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, no clean-up: what a crash looks like (tests, the fault bench)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
