"""The web dashboard: twin page time, live-update latency in Chromium, chart data size.

Run from the repo root: python bench/dashboard.py [--quick | --smoke]

A real embedded Synapse; the dashboard in its own process (``python -m
datarooms.services.dashboard``), signed in to by a user whose other device (an SDK
client in this process) writes; Debian's chromium (headless, Selenium) shows the twin.

1. twin: a room with 1,000 keys (quick 300, smoke 50) put by the SDK device; then
   ``GET /api/rooms/{room}/twin`` on the dashboard (HTTP round trip on loopback, JSON
   of every key's latest record: what the twin page loads) vs the SDK's own
   ``records.latest`` on the writing device, interleaved. twin_page_p50_ms /
   sdk_twin_p50_ms.
2. live: N puts of a key shown on the twin page in Chromium; per put, from just before
   ``records.put`` to (a) the row changed in the page's DOM (a MutationObserver stamps
   ``Date.now()``; same machine clock) and (b) the record delivered to a second SDK
   device of another member (``client.subscribe``): live_update_p50_ms vs
   record_delivery_p50_ms.
3. chart: 1,000,000 samples (quick 100,000, smoke 20,000) spread over 24 h, appended
   by the SDK device; the dashboard's device indexes them on the first query (timed
   apart, chart_catch_up_s); then the chart endpoint for the 24 h (per-minute rollups,
   at most 2,000 points: chart_24h_ms, chart_24h_bytes) vs the same range as raw
   samples in the same JSON shape (raw_24h_bytes, computed from an SDK query).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from _common import bench_args, emit, interleaved, machine, median, with_homeserver

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests._dashboard import chromium  # noqa: E402

from datarooms import Credentials, DataroomsClient  # noqa: E402
from datarooms.sdk.telemetry import Sample  # noqa: E402
from datarooms.testing import TestHomeserver  # noqa: E402

#: Stamps the time each twin row is (re)drawn: ``window.__seen["key@ts"] = Date.now()``.
OBSERVE = """window.__seen = {};
new MutationObserver((list) => {
  for (const m of list) for (const n of m.addedNodes)
    if (n.dataset && n.dataset.key) window.__seen[n.dataset.key + "@" + n.dataset.ts] = Date.now();
}).observe(document.querySelector("#twin tbody"), {childList: true});"""
SEEN = "return Object.entries(window.__seen).find(([k]) => k.startsWith(arguments[0] + '@'))"


def start_dashboard(hs: TestHomeserver, data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "datarooms.services.dashboard",
            hs.base_url,
            hs.server_name,
            str(data_dir),
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"the dashboard did not start: {url!r}")
    return proc, url


async def sign_in(http: aiohttp.ClientSession, url: str, user: Any) -> str:
    async with http.get(url + "/login") as resp:
        html = await resp.text()
    token = re.search(r'name="csrf" content="([^"]+)"', html)
    assert token is not None
    async with http.post(
        url + "/login",
        json={"user": user.user_id, "password": user.password},
        headers={"x-csrf-token": token.group(1)},
    ) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(url + "/") as resp:
        page = await resp.text()
    csrf = re.search(r'name="csrf" content="([^"]+)"', page)
    assert csrf is not None
    return csrf.group(1)


async def run(hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool) -> dict[str, Any]:
    keys = 50 if smoke else 300 if quick else 1000
    n_twin = 5 if smoke else 20 if quick else 50
    n_live = 5 if smoke else 15 if quick else 40
    samples = 20_000 if smoke else 100_000 if quick else 1_000_000
    proc, url = start_dashboard(hs, tmp / "dashboard")
    driver = None
    alice = bob = None
    try:
        owner = await hs.new_user("alice")
        other = await hs.new_user("bob")
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            # The dashboard's device first: it cross-signs the account (see docs/dashboard.md).
            await sign_in(http, url, owner)
            alice = await DataroomsClient.open(
                Credentials(hs.base_url, owner.user_id, owner.access_token), tmp / "alice"
            )
            bob = await DataroomsClient.open(
                Credentials(hs.base_url, other.user_id, other.access_token), tmp / "bob"
            )
            room = (await alice.rooms.create("device", name="bench twin")).room_id
            await alice.rooms.grant(room, bob.user_id, "read")
            await bob.sync_once()
            await bob.rooms.join(room)
            await alice.sync_once()

            # 1. twin
            sem = asyncio.Semaphore(16)

            async def put(i: int) -> None:
                async with sem:
                    await alice.records.put(room, f"sensor/{i:04d}", {"v": i, "unit": "C"})

            await asyncio.gather(*(put(i) for i in range(keys)))
            twin_url = f"{url}/api/rooms/{room}/twin"
            deadline = time.monotonic() + 120
            while True:
                async with http.get(twin_url) as resp:
                    body = await resp.json() if resp.status == 200 else {}
                if len(body.get("records", [])) == keys:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard's device did not get every record")
                await asyncio.sleep(0.2)

            async def page(_i: int) -> None:
                async with http.get(twin_url) as resp:
                    await resp.read()

            async def sdk(_i: int) -> None:
                await alice.records.latest(room)

            page_ms, sdk_ms = await interleaved(page, sdk, n_twin, warmup=2)

            # 2. live
            driver = await asyncio.to_thread(chromium)
            cookies = [{"name": c.key, "value": c.value, "path": "/"} for c in jar]
            await asyncio.to_thread(driver.get, url + "/static/app.css")
            for c in cookies:
                await asyncio.to_thread(driver.add_cookie, c)
            await asyncio.to_thread(driver.get, f"{url}/#/room/{room}/twin")
            for _ in range(600):
                rows = await asyncio.to_thread(
                    driver.execute_script,
                    "return document.querySelectorAll('#twin tbody tr').length",
                )
                if rows == keys:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(
                driver.execute_script,
                OBSERVE,
            )
            live: list[float] = []
            delivery: list[float] = []
            feed = bob.subscribe(room)
            for i in range(n_live):
                key = f"sensor/{i % keys:04d}"
                started = time.time() * 1000
                record = await alice.records.put(room, key, {"v": -i, "unit": "C"})
                while True:
                    event = await asyncio.wait_for(feed.__anext__(), 30)
                    if event.event_id == record.event_id:
                        delivery.append(time.time() * 1000 - started)
                        break
                for _ in range(400):
                    seen = await asyncio.to_thread(
                        driver.execute_script,
                        SEEN,
                        key,
                    )
                    if seen:
                        live.append(float(seen[1]) - started)
                        await asyncio.to_thread(driver.execute_script, "window.__seen = {}")
                        break
                    await asyncio.sleep(0.01)
            await feed.aclose()

            # 3. chart
            trend = (await alice.rooms.create("device", name="bench telemetry")).room_id
            end = int(time.time() * 1000)
            span = 86_400_000
            step = span / samples
            series = [
                Sample(int(end - span + i * step), "temp", 20 + (i % 1000) / 100)
                for i in range(samples)
            ]
            await alice.telemetry.append_many(trend, series)
            await alice.telemetry.flush(timeout=300)
            chart_url = (
                f"{url}/api/rooms/{trend}/telemetry?metric=temp&since={end - span}&until={end + 1}"
            )
            t0 = time.perf_counter()
            while True:
                async with http.get(chart_url) as resp:
                    if resp.status == 200:
                        first = await resp.json()
                        if sum(first["n"]) == samples:
                            break
                if time.perf_counter() - t0 > 300:
                    raise SystemExit("the dashboard's device did not index every sample")
                await asyncio.sleep(0.5)
            catch_up_s = time.perf_counter() - t0
            chart_ms: list[float] = []
            size = 0
            for _ in range(5):
                t1 = time.perf_counter()
                async with http.get(chart_url) as resp:
                    data = await resp.read()
                chart_ms.append((time.perf_counter() - t1) * 1000)
                size = len(data)
            raw = await alice.telemetry.query(
                trend, "temp", since=end - span, until=end + 1, limit=samples
            )
            raw_bytes = len(
                json.dumps({"t": [s.ts / 1000 for s in raw], "v": [s.value for s in raw]}).encode()
            )
            points = len(json.loads(data)["t"])
    finally:
        if driver is not None:
            await asyncio.to_thread(driver.quit)
        for c in (alice, bob):
            if c is not None:
                await c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    twin_p50, sdk_p50 = median(page_ms), median(sdk_ms)
    live_p50, delivery_p50 = median(live), median(delivery)
    return {
        "keys": keys,
        "twin_page_p50_ms": twin_p50,
        "sdk_twin_p50_ms": sdk_p50,
        "twin_ratio": twin_p50 / sdk_p50 if sdk_p50 else None,
        "live_updates": len(live),
        "live_update_p50_ms": live_p50,
        "record_delivery_p50_ms": delivery_p50,
        "live_ratio": live_p50 / delivery_p50 if delivery_p50 else None,
        "chart_samples": samples,
        "chart_points": points,
        "chart_catch_up_s": catch_up_s,
        "chart_24h_ms": median(chart_ms),
        "chart_24h_bytes": size,
        "raw_24h_bytes": raw_bytes,
        "chart_bytes_ratio": raw_bytes / size if size else None,
    }


def main() -> None:
    ap = bench_args(__doc__, "300 keys, 100,000 samples, fewer rounds (< 60 s)")
    args = ap.parse_args()
    r = with_homeserver("dashboard", lambda hs, tmp: run(hs, tmp, args.quick, args.smoke))
    emit({"bench": "dashboard", "quick": args.quick, "smoke": args.smoke, **r, **machine()})


if __name__ == "__main__":
    main()
