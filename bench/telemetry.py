"""Telemetry: sustained ingest vs one event per sample, ack latency, queries, live latency.

Run from the repo root: python bench/telemetry.py [--quick | --smoke]

Everything runs against one real embedded Synapse (SQLite), started here, with
two users' devices (a writer and a reader) sharing an encrypted device room.

1. naive: one ``io.datarooms.telemetry.sample`` event per sample (what IXO's
   ``sendEvent(room, 'data.store', ...)`` does), through the same SDK send path
   (Megolm-encrypted, txn ids): sequentially, then 16 in flight, for a fixed time
   each. naive_samples_per_s is the better of the two.
2. ingest: a writer process (this script with --worker) appends for 60 s
   (quick: 15 s) with ``Telemetry.append_many`` in chunks of 1,000 samples from 4
   concurrent tasks (each append durable, fsynced, on return; concurrent appends share
   commits), at an offered rate of 200,000 samples/s (``--rate``): 100 metrics, values random
   walks with two decimals, timestamps the append time. samples_per_s = samples
   acknowledged by the homeserver during the window / window; p50/p99 of the
   time from append (its return: durable in the outbox) to acknowledgement,
   weighted by samples; writer RSS sampled every 0.5 s (peak). Defaults for
   everything else (flush interval 0.5 s, durability "full": fsync per commit).
   Then the writer flushes, and the reader device catches up from the room's
   history and must hold every appended sample exactly once.
3. queries on a synthetic index of 1,000,000 samples (10 metrics x 100,000 at
   25 Hz, about 67 minutes), filled through the index's ingest path:
   aggregate one metric over one hour in 60 buckets (rollups; also the raw-scan
   path with an unaligned start), and 1,000 raw samples from a one-hour range.
4. live: the reader subscribes; the writer appends one sample every 200 ms with
   the default flush interval; latency from the start of ``append`` to the
   sample reaching the subscriber (same process, same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from itertools import repeat
from pathlib import Path
from typing import Any

from _common import SMOKE_HELP, emit, machine, median, percentile, rss_mb
from datarooms import Credentials, DataroomsClient
from datarooms.homeserver.admin import RegisteredUser
from datarooms.sdk.telemetry import Telemetry, TelemetryConfig
from datarooms.sdk.telemetry.encoding import SeriesData, SeriesKey
from datarooms.sdk.telemetry.index import DecodedBatch, TelemetryIndex
from datarooms.testing import TestHomeserver

NAIVE_TYPE = "io.datarooms.telemetry.sample"
METRICS = 100
CHUNK = 1000
PRODUCERS = 4  # concurrent appenders (e.g. a gateway's sensor connections)


def ms(seconds: float) -> float:
    return seconds * 1000


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Peak and median VmRSS of a process, sampled every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.values.append(rss_mb(self.pid))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def open_client(hs_url: str, user: dict[str, str], store: Path) -> DataroomsClient:
    return await DataroomsClient.open(
        Credentials(hs_url, user["user_id"], user["access_token"]), store
    )


def user_dict(u: RegisteredUser) -> dict[str, str]:
    return {"user_id": u.user_id, "access_token": u.access_token}


# -- 1. naive: one event per sample -------------------------------------------------


async def bench_naive(client: DataroomsClient, room: str, seconds: float) -> dict[str, Any]:
    rng = random.Random(7)

    def content(i: int) -> dict[str, Any]:
        return {
            "ts": int(time.time() * 1000),
            "metric": f"sensor-{i % METRICS:03d}",
            "value": round(20 + rng.gauss(0, 1), 2),
        }

    for i in range(5):  # warm-up: the Megolm session is made and shared
        await client.send(room, NAIVE_TYPE, content(i), txn_id=uuid.uuid4().hex)
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await client.send(room, NAIVE_TYPE, content(done), txn_id=uuid.uuid4().hex)
        done += 1
    seq_rate = done / (time.perf_counter() - t0)

    conc = 16
    done_c = 0
    t0 = time.perf_counter()

    async def sender(k: int) -> None:
        nonlocal done_c
        i = k
        while time.perf_counter() - t0 < seconds:
            await client.send(room, NAIVE_TYPE, content(i), txn_id=uuid.uuid4().hex)
            done_c += 1
            i += conc

    await asyncio.gather(*(sender(k) for k in range(conc)))
    conc_rate = done_c / (time.perf_counter() - t0)
    return {
        "naive_sequential_per_s": seq_rate,
        "naive_concurrent_per_s": conc_rate,
        "naive_concurrency": conc,
        "naive_samples_per_s": max(seq_rate, conc_rate),
        "naive_seconds": seconds,
    }


# -- 2. ingest (the writer process) ---------------------------------------------------


def make_values(steps: int) -> list[float]:
    """METRICS random walks of ``steps`` steps, two decimals, interleaved metric by metric."""
    rng = random.Random(1)
    walks = []
    for m in range(METRICS):
        v = 20.0 + m
        walk = []
        for _ in range(steps):
            v += rng.gauss(0, 0.05)
            walk.append(round(v, 2))
        walks.append(walk)
    return [walks[m][s] for s in range(steps) for m in range(METRICS)]


async def worker(args: dict[str, Any]) -> dict[str, Any]:
    """Open the writer device, append at the offered rate for the window, then flush."""
    client = await open_client(args["hs"], args["user"], Path(args["store"]))
    tel = Telemetry(client, TelemetryConfig())
    room, rate, seconds = args["room"], float(args["rate"]), float(args["seconds"])
    values = make_values(4000)
    names = [f"sensor-{i % METRICS:03d}" for i in range(CHUNK)]
    period = len(values)
    await tel.start()
    appended = 0
    off = 0

    async def produce(until: float, start: float) -> int:
        """PRODUCERS tasks append CHUNK-sample chunks, together at the offered rate."""
        nonlocal off
        n = 0

        async def task() -> None:
            nonlocal off, n
            while True:
                now = time.perf_counter()
                if now >= until:
                    return
                if int((now - start) * rate) - n < CHUNK:
                    await asyncio.sleep(0.002)
                    continue
                n += CHUNK  # claimed before the await: the other tasks see it
                ts = time.time_ns() // 1_000_000
                chunk = list(zip(repeat(ts, CHUNK), names, values[off : off + CHUNK], strict=True))
                off = (off + CHUNK) % period
                await tel.append_many(room, chunk)

        await asyncio.gather(*(task() for _ in range(PRODUCERS)))
        return n

    warm = float(args["warmup"])
    t = time.perf_counter()
    appended += await produce(t + warm, t)
    stats = tel.stats
    stats.latencies.clear()
    acked0 = stats.acked_samples
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t_start = time.perf_counter()
    appended_window = await produce(t_start + seconds, t_start)
    window = time.perf_counter() - t_start
    acked_window = stats.acked_samples - acked0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat = list(stats.latencies)
    appended += appended_window
    status = tel.status()
    t = time.perf_counter()
    await tel.flush(timeout=300)
    flush_s = time.perf_counter() - t

    def pct(p: float) -> float:
        items = sorted(lat)
        total = sum(n for _, n in items)
        seen = 0
        for latency, n in items:
            seen += n
            if seen >= p / 100 * total:
                return latency
        return float("nan")

    out = {
        "samples_per_s": acked_window / window,
        "offered_per_s": appended_window / window,
        "window_s": window,
        "appended": appended,
        "acked_window": acked_window,
        "p50_ack_ms": ms(pct(50)),
        "p99_ack_ms": ms(pct(99)),
        "writer_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "batches": stats.acked_batches,
        "inline_batches": stats.inline_batches,
        "media_batches": stats.media_batches,
        "payload_bytes_per_sample": stats.payload_bytes / max(1, stats.acked_samples),
        "retries": stats.retries,
        "backlog_at_end": status.unacked_samples,
        "flush_s": flush_s,
    }
    await tel.close()
    await client.close()
    return out


def run_worker(args: dict[str, Any], synapse_pid: int | None) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    syn0 = cpu_s(synapse_pid) if synapse_pid else 0.0
    t0 = time.perf_counter()
    with RssSampler(proc.pid) as rss:
        out, _ = proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the writer process failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rss_mb"] = max(rss.values) if rss.values else float("nan")
    result["rss_median_mb"] = median(rss.values)
    if synapse_pid:
        result["synapse_cpu_share"] = (cpu_s(synapse_pid) - syn0) / elapsed
    return result


# -- 3. queries on a synthetic index ---------------------------------------------------


def fill_index(index: TelemetryIndex, room: str, metrics: int, per_metric: int, t0: int) -> float:
    """``metrics`` x ``per_metric`` samples at 40 ms, in batches of 10,000, via add_batches."""
    rng = random.Random(3)
    seq = 0
    per_batch = 10_000 // metrics
    started = time.perf_counter()
    walks = [20.0 + m for m in range(metrics)]
    for start in range(0, per_metric, per_batch):
        series = []
        for m in range(metrics):
            ts = [t0 + (start + i) * 40 + m for i in range(per_batch)]
            vals = []
            v = walks[m]
            for _ in range(per_batch):
                v += rng.gauss(0, 0.05)
                vals.append(round(v, 2))
            walks[m] = v
            series.append(SeriesData(SeriesKey(f"m{m}"), ts, vals))
        seq += 1
        batch = DecodedBatch(
            room,
            f"$synthetic{seq}",
            "@w:localhost",
            "s",
            seq,
            t0,
            min(s.ts[0] for s in series),
            max(s.ts[-1] for s in series),
            series,
        )
        index.add_batches([batch])
    return time.perf_counter() - started


async def bench_queries(tmp: Path, runs: int, metrics: int = 10) -> dict[str, Any]:
    room = "!synthetic:localhost"
    per_metric = 100_000
    t0 = 1_700_000_040_000  # a whole minute
    index = TelemetryIndex(tmp / "synthetic" / "index.db")
    try:
        fill_s = fill_index(index, room, metrics, per_metric, t0)
        total = index.count(room)
        print(
            f"synthetic index: {total:,} samples filled in {fill_s:.1f} s "
            f"({total / fill_s:,.0f} samples/s through the ingest path)",
            flush=True,
        )
        hour = 3_600_000
        since = t0 + 5 * 60_000

        def loop(fn: Any, check: Any) -> list[float]:
            for _ in range(3):
                fn()
            out = []
            for _ in range(runs):
                t = time.perf_counter()
                got = fn()
                out.append(ms(time.perf_counter() - t))
                check(got)
            return out

        def check_agg(got: Any) -> None:
            assert len(got) == 60 and sum(b.count for b in got) == hour // 40, (
                len(got),
                sum(b.count for b in got),
            )

        agg = loop(
            lambda: index.aggregate(room, "m0", since=since, until=since + hour, step=60_000),
            check_agg,
        )
        agg_raw = loop(
            lambda: index.aggregate(
                room, "m0", since=since + 1, until=since + 1 + hour, step=60_000
            ),
            lambda got: None,
        )
        raw = loop(
            lambda: index.samples(
                room, "m0", since=since + 123_456, until=since + 123_456 + hour, limit=1000
            ),
            lambda got: len(got) == 1000 or (_ for _ in ()).throw(AssertionError),
        )
    finally:
        index.close()
    return {
        "agg_query_p50_ms": median(agg),
        "agg_query_p99_ms": percentile(agg, 99),
        "agg_raw_scan_p50_ms": median(agg_raw),
        "raw_query_p50_ms": median(raw),
        "raw_query_p99_ms": percentile(raw, 99),
        "index_samples": total,
        "index_fill_samples_per_s": total / fill_s,
        "agg_samples_in_range": hour // 40,
    }


# -- 4. live latency ------------------------------------------------------------------


async def bench_live(writer: Telemetry, reader: Telemetry, room: str, n: int) -> dict[str, Any]:
    sent: dict[float, float] = {}
    got: list[float] = []
    done = asyncio.Event()

    async def listen() -> None:
        async for s in reader.subscribe(room, metric="live"):
            if s.value in sent:
                got.append(time.perf_counter() - sent[s.value])
            if len(got) >= n:
                done.set()
                return

    task = asyncio.create_task(listen())
    await reader.catch_up(room)  # the room is current before the clock starts
    await asyncio.sleep(1.0)
    for i in range(n):
        sent[float(i)] = time.perf_counter()
        await writer.append(room, "live", float(i))
        await asyncio.sleep(0.2)
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        task.cancel()
    lat = [ms(x) for x in got]
    return {"live_p50_ms": median(lat), "live_p99_ms": percentile(lat, 99), "live_n": len(lat)}


# -- main ---------------------------------------------------------------------------------


async def run(
    hs: TestHomeserver, tmp: Path, quick: bool, rate: float, smoke: bool = False
) -> dict[str, Any]:
    w_user = user_dict(await hs.new_user("tlm-writer"))
    r_user = user_dict(await hs.new_user("tlm-reader"))
    w_store, r_store = tmp / "writer", tmp / "reader"
    result: dict[str, Any] = {}
    writer = await open_client(hs.base_url, w_user, w_store)
    reader = await open_client(hs.base_url, r_user, r_store)
    try:
        room = (await writer.rooms.create("device", name="bench telemetry")).room_id
        await writer.rooms.grant(room, reader.user_id, "read")
        await reader.sync_once()
        await reader.rooms.join(room)
        await writer.sync_once()
        naive_room = (await writer.rooms.create("device", name="bench naive")).room_id
        await writer.rooms.grant(naive_room, reader.user_id, "read")
        await reader.sync_once()
        await reader.rooms.join(naive_room)
        await writer.sync_once()
        print("1/4 naive: one event per sample ...", flush=True)
        result.update(await bench_naive(writer, naive_room, 0.5 if smoke else 5 if quick else 15))
        print(
            f"    sequential {result['naive_sequential_per_s']:.1f}/s, 16 in flight "
            f"{result['naive_concurrent_per_s']:.1f}/s",
            flush=True,
        )
    finally:
        await writer.close()

    seconds = 2 if smoke else 15 if quick else 60
    rate = min(rate, 20_000) if smoke else rate
    print(f"2/4 ingest: {seconds} s at an offered {rate:,.0f} samples/s ...", flush=True)
    load0 = os.getloadavg()[0]
    ingest = run_worker(
        {
            "hs": hs.base_url,
            "user": w_user,
            "store": str(w_store),
            "room": room,
            "rate": rate,
            "seconds": seconds,
            "warmup": 0.5 if smoke else 3,
        },
        hs.synapse.pid,
    )
    ingest["load_avg_1m_before"] = load0
    ingest["load_avg_1m_after"] = os.getloadavg()[0]
    result.update(ingest)
    result["ratio"] = result["samples_per_s"] / result["naive_samples_per_s"]
    print(
        f"    {result['samples_per_s']:,.0f} samples/s acknowledged; verifying on the "
        "reader device ...",
        flush=True,
    )
    rt = Telemetry(reader)
    try:
        t = time.perf_counter()
        got = await rt.catch_up(room)
        catch_s = time.perf_counter() - t
        have = rt.index.count(room)
        result["reader_catch_up_samples_per_s"] = got / catch_s
        result["reader_samples"] = have
        result["exactly_once"] = have == result["appended"]
        if have != result["appended"]:
            print(f"    MISMATCH: reader has {have:,}, writer appended {result['appended']:,}")

        print(f"3/4 queries on a {(1 if smoke else 10) * 100_000:,}-sample index ...", flush=True)
        result.update(
            await bench_queries(tmp, 3 if smoke else 50 if quick else 200, 1 if smoke else 10)
        )

        print("4/4 live latency ...", flush=True)
        writer = await open_client(hs.base_url, w_user, w_store)
        wt = Telemetry(writer)
        try:
            result.update(await bench_live(wt, rt, room, 3 if smoke else 15 if quick else 40))
        finally:
            await wt.close()
            await writer.close()
    finally:
        await rt.close()
        await reader.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer runs")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    ap.add_argument("--rate", type=float, default=200_000, help="offered samples/s")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        profile = os.environ.get("BENCH_TELEMETRY_PROFILE")  # a path: cProfile the writer
        if profile:
            import cProfile

            with cProfile.Profile() as prof:
                out = asyncio.run(worker(json.loads(args.worker)))
            prof.dump_stats(profile)
        else:
            out = asyncio.run(worker(json.loads(args.worker)))
        print(json.dumps(out), flush=True)
        return
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    try:
        with TestHomeserver(tmp / "homeserver") as hs:
            r = asyncio.run(run(hs, tmp, args.quick, args.rate, args.smoke))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r["runtime_s"] = time.perf_counter() - started
    print(
        f"ingest: {r['samples_per_s']:,.0f} samples/s acknowledged (offered "
        f"{r['offered_per_s']:,.0f}/s) over {r['window_s']:.0f} s vs naive "
        f"{r['naive_samples_per_s']:.1f}/s (sequential {r['naive_sequential_per_s']:.1f}, "
        f"16 in flight {r['naive_concurrent_per_s']:.1f}): {r['ratio']:,.0f}x"
    )
    print(
        f"append -> ack: p50 {r['p50_ack_ms']:.0f} ms, p99 {r['p99_ack_ms']:.0f} ms; writer "
        f"RSS peak {r['rss_mb']:.0f} MB; writer CPU {r['writer_cpu_s']:.1f} s; Synapse CPU "
        f"{r.get('synapse_cpu_share', float('nan')):.0%}; {r['batches']} batches "
        f"({r['inline_batches']} inline, {r['media_batches']} media), "
        f"{r['payload_bytes_per_sample']:.2f} B/sample"
    )
    print(
        f"reader: {r['reader_samples']:,} samples, exactly once: {r['exactly_once']}; "
        f"catch-up {r['reader_catch_up_samples_per_s']:,.0f} samples/s"
    )
    print(
        f"queries ({r['index_samples']:,} samples): 1 h in 60 buckets p50 "
        f"{r['agg_query_p50_ms']:.2f} ms (raw scan {r['agg_raw_scan_p50_ms']:.1f} ms); 1,000 "
        f"raw samples p50 {r['raw_query_p50_ms']:.2f} ms"
    )
    print(
        f"live: append -> subscriber p50 {r['live_p50_ms']:.0f} ms, p99 "
        f"{r['live_p99_ms']:.0f} ms ({r['live_n']} samples)"
    )
    print(
        f"load average (1 min) before/after ingest: {r['load_avg_1m_before']:.2f} / "
        f"{r['load_avg_1m_after']:.2f}; runtime {r['runtime_s']:.0f} s"
    )
    emit({"bench": "telemetry", "quick": args.quick, "smoke": args.smoke, **r, **machine()})


if __name__ == "__main__":
    main()
