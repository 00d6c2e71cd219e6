"""The `datarooms` command for the suite, from a warm fork server.

A `datarooms` process spends most of its life importing (typer, nio, aiohttp, the SDK:
about 1 s of CPU of a 1.2 s `get`), and the suite runs hundreds of them. This server
imports all of that once, then forks a child per command: the child gets the caller's
stdin, stdout and stderr (passed over a unix socket, SCM_RIGHTS), its environment,
working directory and argv, and runs the real entry point, ``datarooms.cli.main``, to
its exit. What the command does after start-up is the same code a user runs: its own
process (pid, exit code, signals, files), its own event loop, its own device.

What a fresh process alone can tell (what a command imports, how long `--help` or a
`put` takes from exec, the entry point script) is tested with real spawns
(``tests/test_cli_fast.py``, ``tests/test_cli_device.py``, ``bench/cli.py``).
``DATAROOMS_TEST_FORK_CLI=0`` makes :func:`tests._cli.cli` spawn every command.

Protocol, one connection per command: the client sends a JSON header (argv, env, cwd)
with three descriptors; the server forks a keeper that forks the command, sends
``{"pid": N}``, waits for it and sends ``{"code": C}`` (subprocess's returncode: -N for
signal N).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: Imported once by the server, before any fork: what most commands import.
PRELOAD = (
    "datarooms.cli",
    "datarooms.cli.app",
    "datarooms.cli._fast",
    "datarooms.sdk.client",
    "datarooms.services.platform",
    "typer",
    "rich.console",
)


def _recv_header(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    data = b""
    fds: list[int] = []
    while not data.endswith(b"\n"):
        msg, got, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        if not msg:
            raise EOFError("client went away")
        data += msg
        fds += got
    return json.loads(data), fds


def _run_command(header: dict[str, object], fds: list[int]) -> None:
    """In the command's process: take the caller's stdio, env, cwd, argv; run; exit."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    env = header["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(str(header["cwd"]))
    argv = header["argv"]
    assert isinstance(argv, list)
    sys.argv = [str(a) for a in argv]
    code = 0
    try:
        from datarooms.cli import main

        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # as an uncaught exception ends a process: traceback, 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _keeper(conn: socket.socket, server: socket.socket) -> None:
    """Forked per command: fork the command, report its pid, wait, report its code."""
    server.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        header, fds = _recv_header(conn)
    except (EOFError, OSError, ValueError):
        os._exit(1)
    started_r, started_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # Python code runs: a signal from now on is handled. (One that reaches the child
        # while fork() returns is dropped by CPython's after-fork reset, so the caller
        # learns the pid only after this write.)
        os.close(started_r)
        os.write(started_w, b"1")
        os.close(started_w)
        conn.close()
        os.setpgid(0, 0)  # like start_new_session for signals: the test kills the group
        _run_command(header, fds)
    os.close(started_w)
    os.read(started_r, 1)
    os.close(started_r)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    os._exit(0)


#: Read by typer when it is imported: the value a command starts with
#: (``datarooms.cli.main`` sets this default before it imports typer).
IMPORT_TIME_ENV = {"TYPER_USE_RICH": "0"}


def can_run(env: dict[str, str]) -> bool:
    """Whether a command with this environment behaves here as when spawned: the
    variables read at import time have the values the server imported with."""
    return all(env.get(k, v) == v for k, v in IMPORT_TIME_ENV.items())


def serve(path: str) -> None:
    os.environ.update(IMPORT_TIME_ENV)
    for name in PRELOAD:
        __import__(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    print("ready", flush=True)
    parent = os.getppid()
    server.settimeout(1.0)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test process is gone
                return
            continue
        conn.settimeout(None)
        if os.fork() == 0:
            _keeper(conn, server)
        conn.close()


class ForkServer:
    """One per test process, started on first use, stopped at exit."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="dr-forkcli-")
        self.path = os.path.join(self._dir, "s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATAROOMS_")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests._forkcli", self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the CLI fork server did not start: {line!r}")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self._dir)

    def start(self, argv: list[str], *, env: dict[str, str], stdin: bool) -> ForkProcess:
        """As ``subprocess.Popen(argv, stdin=PIPE if stdin else DEVNULL, stdout=PIPE,
        stderr=PIPE, text=True, env=env)``, with the methods the tests use."""
        in_r, in_w = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            header = json.dumps({"argv": argv, "env": env, "cwd": os.getcwd()}).encode()
            socket.send_fds(conn, [header + b"\n"], [in_r, out_w, err_w])
            reply = conn.makefile("rb")
            pid = int(json.loads(reply.readline())["pid"])
        except BaseException:
            conn.close()
            for fd in (in_w, out_r, err_r):
                if fd != -1:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return ForkProcess(argv, pid, conn, reply, in_w, out_r, err_r)

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        input: str | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        """As ``subprocess.run(argv, capture_output=True, text=True, input=..., env=...,
        timeout=...)``; on timeout the command's process group is killed."""
        proc = self.start(argv, env=env, stdin=input is not None)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill_group()
            proc.wait()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class ForkProcess:
    """A command forked by the server, as much of ``subprocess.Popen`` as tests use:
    ``pid``, ``poll``, ``wait``, ``communicate``, ``send_signal``, ``terminate``,
    ``kill``, ``returncode``. Its output is collected as it comes (no pipe fills up)."""

    def __init__(
        self,
        argv: list[str],
        pid: int,
        conn: socket.socket,
        reply: Any,
        in_w: int,
        out_r: int,
        err_r: int,
    ) -> None:
        self.args, self.pid, self.returncode = argv, pid, None
        self._conn, self._reply, self._in_w = conn, reply, in_w
        self._outs: dict[str, bytes] = {}
        self._readers = [
            threading.Thread(target=self._drain, args=(name, fd), daemon=True)
            for name, fd in (("out", out_r), ("err", err_r))
        ]
        for t in self._readers:
            t.start()
        self._done = threading.Event()
        threading.Thread(target=self._wait_code, daemon=True).start()

    def _drain(self, name: str, fd: int) -> None:
        chunks = []
        with open(fd, "rb", closefd=True) as f:
            while chunk := f.read1(1 << 16):
                chunks.append(chunk)
        self._outs[name] = b"".join(chunks)

    def _wait_code(self) -> None:
        try:
            line = self._reply.readline()
            self.returncode = int(json.loads(line)["code"]) if line else -signal.SIGKILL
        finally:
            self._conn.close()
            self._done.set()

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def communicate(
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[str, str]:
        if self._in_w != -1:
            with open(self._in_w, "wb", closefd=True) as f, contextlib.suppress(BrokenPipeError):
                f.write((input or "").encode())
            self._in_w = -1
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait(timeout)
        for t in self._readers:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():  # a child of the command still holds the pipe
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return _text(self._outs.get("out", b"")), _text(self._outs.get("err", b""))

    def send_signal(self, sig: int) -> None:
        if not self._done.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def _text(raw: bytes) -> str:
    """What ``text=True`` makes of a pipe's bytes (universal newlines)."""
    return raw.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")


_server: ForkServer | None = None
_lock = threading.Lock()


def server() -> ForkServer:
    global _server
    with _lock:
        if _server is None:
            import atexit

            _server = ForkServer()
            atexit.register(_server.close)
        return _server


if __name__ == "__main__":
    serve(sys.argv[1])
