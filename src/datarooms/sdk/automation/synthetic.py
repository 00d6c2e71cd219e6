"""Synthetic telemetry with known anomalies, for the tests and the benchmark of the
anomaly rule (the same series in both, so the figures in the docs are the tests')."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticSeries:
    metric: str
    #: ``(ts_ms, value)`` at 1 Hz.
    samples: list[tuple[int, float]]
    #: Indexes of the injected anomalies.
    anomalies: frozenset[int]


def anomaly_series(
    seed: int,
    *,
    n: int = 1000,
    rate: float = 0.01,
    magnitude: float = 8.0,
    metric: str = "sensor",
    t0_ms: int = 1_700_000_000_000,
) -> SyntheticSeries:
    """A daily-like sine with Gaussian noise (sigma 1) and a slow drift, with ``rate`` of
    its points replaced by spikes of ``magnitude`` sigma (either sign); never in the
    first 60 points (the detector's warm-up)."""
    rng = random.Random(seed)
    base, amp, period = rng.uniform(10, 100), rng.uniform(2, 10), rng.uniform(200, 600)
    out: list[tuple[int, float]] = []
    anomalies: set[int] = set()
    for i in range(n):
        v = base + amp * math.sin(2 * math.pi * i / period) + 0.002 * i + rng.gauss(0, 1)
        if i >= 60 and rng.random() < rate:
            v += rng.choice((-1, 1)) * magnitude * (1 + rng.random())
            anomalies.add(i)
        out.append((t0_ms + i * 1000, v))
    return SyntheticSeries(metric, out, frozenset(anomalies))
