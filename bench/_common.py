"""Shared bits of the benchmarks: stats, RSS, the JSON result line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

#: ``--smoke``: what CI runs (scripts/test) to see that a benchmark still works.
SMOKE_HELP = "smallest sizes, a few seconds: checks that the benchmark runs; not a measurement"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, in MB."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            total += rss_mb(p)
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        stack.extend(int(c) for c in children)
    return total


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def emit(result: dict[str, Any]) -> None:
    """Print the result; the last line of every benchmark is this JSON object."""
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(rounded, default=str), flush=True)


def bench_args(doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--quick`` (what it shortens) and ``--smoke``."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    return ap


def with_homeserver(
    name: str, run: Callable[[Any, Path], Coroutine[Any, Any, dict[str, Any]]]
) -> dict[str, Any]:
    """Start a real embedded Synapse in a temp dir, ``run(homeserver, tmp)``, clean up;
    the result gains ``runtime_s``."""
    from datarooms.testing import TestHomeserver

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        with TestHomeserver(tmp / "homeserver") as hs:
            result = asyncio.run(run(hs, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["runtime_s"] = time.perf_counter() - started
    return result


async def interleaved(
    ours: Callable[[int], Awaitable[Any]],
    base: Callable[[int], Awaitable[Any]],
    n: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    """Time ``ours(i)`` and ``base(i)`` n times each (ms), alternating which goes first,
    so that noise hits both alike."""
    for i in range(warmup):
        await ours(i)
        await base(i)
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        pairs = [(ours, a), (base, b)]
        for fn, out in pairs if i % 2 == 0 else reversed(pairs):
            t0 = time.perf_counter()
            await fn(i)
            out.append((time.perf_counter() - t0) * 1000.0)
    return a, b


def child_env(tmp: Path, bytecode_cache: bool, **extra: str) -> dict[str, str]:
    """The environment for a timed ``datarooms`` process: no DATAROOMS_* of the caller's;
    with ``bytecode_cache``, a private warmed bytecode cache, as an installed package has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAROOMS_")}
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    env.update(extra)
    return env
