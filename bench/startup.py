"""`datarooms up` to ready, against Synapse alone; where the time goes; idle RSS.

Run from the repo root: python bench/startup.py [--quick] [--no-bytecode-cache]

- up_s: median time from spawning `datarooms up` (services=none) until it reports
  the platform ready (Synapse healthy, service account checked, state written),
  on an existing data dir (the everyday case).
- up_all_services_s: the same with every service (devchain, rooms bot, state bot,
  MCP), as `datarooms up` runs by default.
- synapse_s: median time from spawning Synapse alone with the same config until
  /health answers: the baseline. overhead_s, overhead_all_services_s: what
  datarooms adds (CLI start, imports, checks, the services). Target: under 1 s.
- first_up_s: the very first `up` (all services) on an empty data dir (config,
  keys, DB schema, accounts), against first_synapse_s: Synapse alone on an empty
  data dir with a config prepared beforehand. first_overhead_s: target under 1 s.
- phases: what the `up` process logged about each part's start (seconds; parts
  overlap, since they start concurrently), median over the all-services rounds.
- idle_rss_mb: RSS of `datarooms up` plus its children after a few idle seconds.

A pip-installed package has its bytecode compiled. Where the environment sets
PYTHONDONTWRITEBYTECODE every process compiles every module it imports again
(Synapse's start and ours alike), so by default the processes measured here get a
private bytecode cache in the benchmark's temp dir (PYTHONPYCACHEPREFIX), warmed
by a first run; --no-bytecode-cache measures as the environment is.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import bench_args, child_env, emit, machine, median, tree_rss_mb
from datarooms.homeserver.embedded import EmbeddedSynapse, free_port

DATAROOMS = str(Path(sys.executable).parent / "datarooms")
#: The `up` process logs this once it is ready, with each part's start time.
STARTED_MSG = "datarooms started"
LOG_JSON = ("--log-level", "INFO", "--log-format", "json")


def time_up(
    data_dir: Path, port: int, env: dict[str, str], *, services: str = "all", idle_s: float = 0.0
) -> tuple[float, float, dict[str, float]]:
    """Seconds to ready, idle RSS (if idle_s), and the phases the process logged."""
    state = data_dir / "run" / "state.json"
    env = {
        **env,
        "DATAROOMS_SERVICES": services,
        **{f"DATAROOMS_{s}_PORT": "0" for s in ("STATEBOT", "MCP", "ROOMSBOT", "CHAIN")},
    }
    log = data_dir.parent / "up.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [DATAROOMS, "--data-dir", str(data_dir), *LOG_JSON, "up", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        while not state.exists():
            if proc.poll() is not None:
                raise SystemExit(f"datarooms up exited with {proc.returncode}:\n{log.read_text()}")
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        rss = 0.0
        if idle_s:
            time.sleep(idle_s)
            rss = tree_rss_mb(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    return elapsed, rss, _phases(log)


def _phases(log: Path) -> dict[str, float]:
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("msg") == STARTED_MSG:
            skip = {"ts", "level", "logger", "msg"}
            return {k: float(v) for k, v in rec.items() if k not in skip}
    return {}


def time_synapse(config: Path, port: int, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.005)
            if proc.poll() is not None:
                raise SystemExit("synapse exited")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def first_synapse(tmp: Path, env: dict[str, str]) -> float:
    """Synapse alone on an empty data dir (its config written beforehand, not timed)."""
    port = free_port()
    hs = EmbeddedSynapse(tmp / "first-synapse", port=port)
    hs.prepare()
    return time_synapse(hs.config_path, port, env)


def main() -> None:
    ap = bench_args(__doc__, "2 rounds instead of 5")
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="measure as the environment is (see PYTHONDONTWRITEBYTECODE above)",
    )
    args = ap.parse_args()
    rounds = 1 if args.smoke else 2 if args.quick else 5
    # A smoke run measures as the environment is: a private cache would start cold.
    bytecode_cache = not args.no_bytecode_cache and not args.smoke
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        env = child_env(tmp, bytecode_cache)
        if bytecode_cache:  # warm the cache, as an installed package has
            warm = tmp / "warm"
            time_up(warm / "data", free_port(), env)
            first_synapse(warm, env)
        # A smoke run (it checks the benchmark runs) skips Synapse's own first start.
        first_syn = float("nan") if args.smoke else first_synapse(tmp, env)
        data_dir = tmp / "data"
        port = free_port()
        first_up, _, first_phases = time_up(data_dir, port, env)
        config = data_dir / "synapse" / "homeserver.yaml"
        ups, cores, synapses = [], [], []
        phases: dict[str, list[float]] = {}
        for i in range(rounds):  # interleave so noise hits all sides alike
            cores.append(time_up(data_dir, port, env, services="none")[0])
            up, _, ph = time_up(data_dir, port, env)
            ups.append(up)
            for k, v in ph.items():
                phases.setdefault(k, []).append(v)
            synapses.append(time_synapse(config, port, env))
            print(
                f"round {i + 1}: up (core) {cores[-1]:.2f} s, up (all services) "
                f"{ups[-1]:.2f} s, synapse alone {synapses[-1]:.2f} s",
                flush=True,
            )
        idle_rss = core_idle_rss = float("nan")  # a smoke run does not measure RSS
        if not args.smoke:
            _, idle_rss, _ = time_up(data_dir, port, env, idle_s=5.0)
            _, core_idle_rss, _ = time_up(data_dir, port, env, services="none", idle_s=5.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    up_s, core_s, syn_s = median(ups), median(cores), median(synapses)
    phase_s = {k: round(median(v), 3) for k, v in phases.items()}
    print(
        f"datarooms up to ready (median of {rounds}): core (homeserver + service account) "
        f"{core_s:.2f} s, overhead {core_s - syn_s:.2f} s over Synapse alone ({syn_s:.2f} s); "
        f"with all services (devchain, rooms bot, state bot, MCP) {up_s:.2f} s, "
        f"overhead {up_s - syn_s:.2f} s; first up {first_up:.2f} s against Synapse's first "
        f"start {first_syn:.2f} s (overhead {first_up - first_syn:.2f} s); "
        f"idle RSS {core_idle_rss:.0f} MB core, {idle_rss:.0f} MB with all services"
    )
    print(f"phases of an up with all services (s, median; they overlap): {phase_s}")
    print(f"phases of the first up: {first_phases}")
    result: dict[str, Any] = {
        "bench": "startup",
        "up_s": core_s,
        "synapse_s": syn_s,
        "overhead_s": core_s - syn_s,
        "up_all_services_s": up_s,
        "overhead_all_services_s": up_s - syn_s,
        "first_up_s": first_up,
        "first_synapse_s": first_syn,
        "first_overhead_s": first_up - first_syn,
        "idle_rss_mb": core_idle_rss,
        "idle_rss_all_services_mb": idle_rss,
        "phases": phase_s,
        "bytecode_cache": bytecode_cache,
        "rounds": rounds,
        **machine(),
    }
    emit(result)


if __name__ == "__main__":
    main()
