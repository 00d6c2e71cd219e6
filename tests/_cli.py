"""Run the real `datarooms` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests import _forkcli as forkcli

DATAROOMS = shutil.which("datarooms", path=str(Path(sys.executable).parent)) or "datarooms"
#: Commands run from a warm fork server (tests/_forkcli.py); 0 spawns each one.
FORK_CLI = os.environ.get("DATAROOMS_TEST_FORK_CLI", "1") != "0"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAROOMS_")}
    # Services of `datarooms up` on free ports, so tests never collide with each
    # other or with a platform the developer is running.
    env.update(
        DATAROOMS_STATEBOT_PORT="0",
        DATAROOMS_CLAIMS_PORT="0",
        DATAROOMS_MCP_PORT="0",
        DATAROOMS_ROOMSBOT_PORT="0",
        DATAROOMS_CHAIN_PORT="0",
        DATAROOMS_AUTOMATION_PORT="0",
        DATAROOMS_DASHBOARD_PORT="0",
    )
    env.update(extra)
    return env


def cli(
    *args: str,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    cmd = [DATAROOMS]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    env = env or clean_env()
    if FORK_CLI and forkcli.can_run(env):
        return forkcli.server().run([*cmd, *args], env=env, input=input, timeout=timeout)
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        env=env,
        input=input,
        timeout=timeout,
        check=False,
    )


@dataclass
class UpProcess:
    proc: subprocess.Popen[str]
    data_dir: Path

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.data_dir / "run" / "state.json").read_text()))

    def wait_running(self, timeout: float = 120) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        state_file = self.data_dir / "run" / "state.json"
        while time.monotonic() < deadline:
            if state_file.exists():
                return self.state()
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"datarooms up exited {self.proc.returncode}:\n{out}\n{err}")
            time.sleep(0.1)
        raise AssertionError("datarooms up did not become ready")

    def interrupt(self, timeout: float = 60) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_up(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> UpProcess:
    argv = [DATAROOMS, "--data-dir", str(data_dir), "up", *args]
    env = env or clean_env()
    if FORK_CLI and forkcli.can_run(env):
        return UpProcess(forkcli.server().start(argv, env=env, stdin=False), data_dir)  # type: ignore[arg-type]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    return UpProcess(proc, data_dir)


def free_port_block(n: int = 32) -> int:
    """The first of ``n`` consecutive free ports, below the kernel's ephemeral range
    (32768-60999 here), where the local ports of every outgoing connection of the suite
    come from: a block chosen there (``free_port()`` + 1, + 2, ...) can be taken by a
    client socket of another test between the check and the bind."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no block of {n} free ports below 32000")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def entity_rooms(data_dir: Path, env: dict[str, str]) -> dict[str, str | None]:
    """The rooms bot's entities and their rooms, from `datarooms entity list --json`."""
    res = cli("entity", "list", "--json", data_dir=data_dir, env=env)
    assert res.returncode == 0, res.stderr
    return {e["did"]: e["room_id"] for e in map(json.loads, res.stdout.splitlines())}


def wait_entity_rooms(data_dir: Path, env: dict[str, str], n: int) -> dict[str, str | None]:
    """Wait until at least ``n`` entities each have their room."""
    deadline = time.monotonic() + 90
    while True:
        rooms = entity_rooms(data_dir, env)
        if len(rooms) >= n and all(rooms.values()):
            return rooms
        assert time.monotonic() < deadline, f"entity rooms not made: {rooms}"
        time.sleep(0.3)
