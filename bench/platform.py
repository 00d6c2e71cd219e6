"""`datarooms up` to healthy, against Synapse alone; RSS of the platform at idle.

Run from the repo root: python bench/platform.py [--quick]

- up_s: median time from spawning `datarooms up` until it reports the platform
  ready (Synapse healthy, service account checked, state written), on an
  existing data dir (the everyday case).
- synapse_s: median time from spawning Synapse alone with the same config
  until /health answers: the baseline.
- overhead_s = up_s - synapse_s: what datarooms adds (CLI start, checks, the
  service account). Target: under 1 s.
- first_up_s: the very first `up` on an empty data dir (config, keys, DB schema).
- idle_rss_mb: RSS of `datarooms up` plus its children after a few idle seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# This script's name shadows the stdlib `platform` module: take bench/ off the
# import path and load the shared helpers by file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("_bench_common", _HERE / "_common.py")
assert _spec and _spec.loader
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
emit, machine, median, tree_rss_mb = (
    _common.emit,
    _common.machine,
    _common.median,
    _common.tree_rss_mb,
)

from datarooms.homeserver.embedded import free_port  # noqa: E402

DATAROOMS = str(Path(sys.executable).parent / "datarooms")


def time_up(
    data_dir: Path, port: int, idle_s: float = 0.0, services: str = "all"
) -> tuple[float, float]:
    state = data_dir / "run" / "state.json"
    env = {
        **os.environ,
        "DATAROOMS_SERVICES": services,
        **{f"DATAROOMS_{s}_PORT": "0" for s in ("STATEBOT", "MCP", "ROOMSBOT", "CHAIN")},
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [DATAROOMS, "--data-dir", str(data_dir), "up", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    while not state.exists():
        if proc.poll() is not None:
            raise SystemExit(f"datarooms up exited with {proc.returncode}")
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    rss = 0.0
    if idle_s:
        time.sleep(idle_s)
        rss = tree_rss_mb(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    return elapsed, rss


def time_synapse(data_dir: Path, port: int) -> float:
    config = data_dir / "synapse" / "homeserver.yaml"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.01)
            if proc.poll() is not None:
                raise SystemExit("synapse exited")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    ap.add_argument("--smoke", action="store_true", help=_common.SMOKE_HELP)
    args = ap.parse_args()
    rounds = 1 if args.smoke else 2 if args.quick else 5
    tmp = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    try:
        data_dir = tmp / "data"
        port = free_port()
        first_up, _ = time_up(data_dir, port)
        ups, cores, synapses = [], [], []
        for i in range(rounds):  # interleave so noise hits all sides alike
            cores.append(time_up(data_dir, port, services="none")[0])
            ups.append(time_up(data_dir, port)[0])
            synapses.append(time_synapse(data_dir, port))
            print(
                f"round {i + 1}: up (core) {cores[-1]:.2f} s, up (all services) "
                f"{ups[-1]:.2f} s, synapse alone {synapses[-1]:.2f} s"
            )
        idle_rss = core_idle_rss = float("nan")  # not measured by a smoke run
        if not args.smoke:
            _, idle_rss = time_up(data_dir, port, idle_s=5.0)
            _, core_idle_rss = time_up(data_dir, port, idle_s=5.0, services="none")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    up_s, core_s, syn_s = median(ups), median(cores), median(synapses)
    print(
        f"datarooms up to ready (median of {rounds}): core (homeserver + service account) "
        f"{core_s:.2f} s, overhead {core_s - syn_s:.2f} s over Synapse alone ({syn_s:.2f} s); "
        f"with all services (devchain, rooms bot, state bot, MCP) {up_s:.2f} s, "
        f"overhead {up_s - syn_s:.2f} s; first up {first_up:.2f} s; "
        f"idle RSS {core_idle_rss:.0f} MB core, {idle_rss:.0f} MB with all services"
    )
    emit(
        {
            "bench": "platform",
            "up_s": core_s,
            "synapse_s": syn_s,
            "overhead_s": core_s - syn_s,
            "up_all_services_s": up_s,
            "overhead_all_services_s": up_s - syn_s,
            "first_up_s": first_up,
            "idle_rss_mb": core_idle_rss,
            "idle_rss_all_services_mb": idle_rss,
            "rounds": rounds,
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
