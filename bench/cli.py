"""The `datarooms` command as scripts use it: `--help`, a `put` and a `get` process.

Run from the repo root: python bench/cli.py [--quick] [--no-bytecode-cache]

Starts a real embedded platform of its own (`datarooms up` on a temp data dir,
services=none: the record commands need only the homeserver), creates a room,
then measures, interleaved, medians over the rounds, each end to end as a
process (spawn to exit):

- help_s: `datarooms --help`. Target: <= 0.3 s.
- put_process_s: `datarooms put ROOM KEY VALUE`. Target: <= 0.4 s.
- get_process_s: `datarooms get ROOM KEY`. Target: <= 0.4 s.
- history_process_s: `datarooms history ROOM KEY`.
  These run on the platform's copy of the CLI device (run/cli.sock,
  datarooms.services.clidevice). Side by side, the same commands with
  DATAROOMS_CLI_DEVICE=local, each process opening the device itself:
  put_local_s, get_local_s (the path without a platform).
- python_startup_s: `python -c pass`, the floor of any process;
  nio_import_s: `python -c "import nio"`, the floor of a process that encrypts.
- sdk_put_ms: the same put inside one process (an open DataroomsClient), the
  baseline the process is compared with (put_over_sdk = put_process_s / sdk_put_ms).

A pip-installed package has its bytecode compiled. Where the environment sets
PYTHONDONTWRITEBYTECODE every process compiles every module it imports again,
so by default the processes measured here get a private bytecode cache in the
benchmark's temp dir (PYTHONPYCACHEPREFIX), warmed by a first run;
--no-bytecode-cache measures as the environment is.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import bench_args, child_env, emit, machine, median
from datarooms.account import read_credentials
from datarooms.homeserver.embedded import free_port

DATAROOMS = str(Path(sys.executable).parent / "datarooms")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``cmd`` until it exited (it must succeed)."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{cmd} failed ({res.returncode}):\n{res.stderr.decode()}")
    return elapsed


def start_platform(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [DATAROOMS, "--data-dir", str(data_dir), "up", "--port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    state = data_dir / "run" / "state.json"
    deadline = time.monotonic() + 180
    while not state.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"datarooms up did not start ({proc.poll()})")
        time.sleep(0.05)
    return proc


async def sdk_puts(data_dir: Path, room: str, n: int) -> list[float]:
    """The same put in one process: another device of the same account, already open."""
    from datarooms import Credentials, DataroomsClient
    from datarooms.config import load_settings
    from datarooms.services.platform import live_homeserver_url

    settings = load_settings(data_dir=data_dir, env={})
    stored = read_credentials(settings.credentials_file)
    assert stored is not None
    # Its own device (a password login), beside the CLI's.
    creds = Credentials(live_homeserver_url(settings), stored.user_id, password=stored.password)
    out = []
    async with await DataroomsClient.open(creds, data_dir.parent / "sdk-device") as client:
        await client.records.put(room, "warm-up", 0)
        for i in range(n):
            t0 = time.perf_counter()
            await client.records.put(room, f"sdk-{i % 10}", {"i": i})
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = bench_args(__doc__, "3 rounds instead of 15")
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="measure as the environment is (see PYTHONDONTWRITEBYTECODE above)",
    )
    args = ap.parse_args()
    rounds = 1 if args.smoke else 3 if args.quick else 15
    # A smoke run measures as the environment is: a private cache would start cold.
    bytecode_cache = not args.no_bytecode_cache and not args.smoke
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    data_dir = tmp / "data"
    env = child_env(tmp, bytecode_cache, DATAROOMS_SERVICES="none")
    dr = [DATAROOMS, "--data-dir", str(data_dir)]
    up = start_platform(data_dir, env)
    try:
        made = subprocess.run(
            [*dr, "room", "create", "project", "--name", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        room = made.stdout.split()[0]
        # Warm up (and fill the bytecode cache): the first run of an installed CLI.
        for cmd in (["--help"], ["put", room, "k0", '{"v": 0}'], ["get", room, "k0"]):
            timed([*dr, *cmd], env)
        commands = {
            "python_startup": [sys.executable, "-c", "pass"],
            "nio_import": [sys.executable, "-c", "import nio"],
            "help": [*dr, "--help"],
            "put_process": [*dr, "put", room, "k1", '{"v": 1}'],
            "get_process": [*dr, "get", room, "k0"],
            "history_process": [*dr, "history", room, "k1"],
            "put_local": ["env", "DATAROOMS_CLI_DEVICE=local", *dr, "put", room, "k1", "1"],
            "get_local": ["env", "DATAROOMS_CLI_DEVICE=local", *dr, "get", room, "k0"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(rounds):  # interleave so noise hits all alike
            for name, cmd in commands.items():
                if name == "put_process":
                    cmd = [*dr, "put", room, f"k{i % 10}", f'{{"v": {i}}}']
                if name == "put_local":
                    cmd = [*cmd[:-2], f"l{i % 10}", f'{{"v": {i}}}']
                times[name].append(timed(cmd, env))
            print(
                f"round {i + 1}: "
                + ", ".join(f"{name} {t[-1] * 1000:.0f} ms" for name, t in times.items()),
                flush=True,
            )
        sdk = asyncio.run(sdk_puts(data_dir, room, max(20, rounds * 5)))
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        finally:
            up.kill()
            shutil.rmtree(tmp, ignore_errors=True)
    med = {name: median(t) for name, t in times.items()}
    sdk_ms = median(sdk)
    print(
        f"medians of {rounds}: --help {med['help']:.3f} s (target 0.3), "
        f"put process {med['put_process']:.3f} s, get process {med['get_process']:.3f} s "
        f"(target 0.4 each), history process {med['history_process']:.3f} s; "
        f"opening the device in the process: put {med['put_local']:.3f} s, "
        f"get {med['get_local']:.3f} s; "
        f"python -c pass {med['python_startup']:.3f} s, python -c 'import nio' "
        f"{med['nio_import']:.3f} s; the same put in one process {sdk_ms:.1f} ms "
        f"(a put process is {med['put_process'] * 1000 / sdk_ms:.0f}x that)"
    )
    emit(
        {
            "bench": "cli",
            "help_s": med["help"],
            "put_process_s": med["put_process"],
            "get_process_s": med["get_process"],
            "history_process_s": med["history_process"],
            "put_local_s": med["put_local"],
            "get_local_s": med["get_local"],
            "local_over_served_put": med["put_local"] / med["put_process"],
            "python_startup_s": med["python_startup"],
            "nio_import_s": med["nio_import"],
            "sdk_put_ms": sdk_ms,
            "put_over_sdk": med["put_process"] * 1000 / sdk_ms,
            "bytecode_cache": bytecode_cache,
            "rounds": rounds,
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
