"""Automation: webhook -> decrypted in a member's client, vs a plain send; rules on a
1,000-series 1 Hz stream; the anomaly rule's precision and recall.

Run from the repo root: python bench/automation.py [--quick | --smoke]

Against a real embedded Synapse: the automation service (its own account and E2EE
device, its HTTP server in this process) posts into a room; a member (another SDK
device, syncing) is where a message counts as visible: received and decrypted.

1. latency, interleaved: a webhook (``POST /hooks/<id>``, token auth, a template)
   from the request to the member seeing the decrypted message, vs the baseline, a
   plain ``messages.send`` (what ``datarooms send`` does) by another member, from the
   call to the member seeing it. p50 of each and the ratio.
2. throughput: N webhooks in flight (16 at a time) to all visible, hooks/s; the same
   N plain sends (16 at a time) to all visible, sends/s.
3. rules: 1,000 series (tag ``id``) at 1 Hz, a threshold rule and an anomaly rule on
   all of them; CPU (process time) per sample. Alert latency through the service: a
   member appends a breaching sample (a rule record in the room), the service's rule
   fires and posts the alert, the member sees it decrypted: p50 from the append.
4. anomaly precision/recall on the synthetic series of the tests
   (:mod:`datarooms.sdk.automation.synthetic`, 1% spikes of 8-16 sigma).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from _common import bench_args, emit, machine, median, with_homeserver
from datarooms import Credentials, DataroomsClient
from datarooms.account import write_credentials
from datarooms.config import load_settings
from datarooms.sdk.automation import HookRegistry
from datarooms.sdk.automation.rules import RULE_KEY_PREFIX, Rule, RuleEngine, rule_schema
from datarooms.sdk.automation.synthetic import anomaly_series
from datarooms.sdk.hooks import RoomEventReceived
from datarooms.services.automation import AutomationService, registry_path
from datarooms.services.platform import PlatformContext
from datarooms.testing import TestHomeserver


class Seen:
    """Bodies a syncing member has seen decrypted, with when."""

    def __init__(self, client: DataroomsClient) -> None:
        self.at: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        client.hooks.on(RoomEventReceived, self._on)

    def _on(self, ev: RoomEventReceived) -> None:
        body = ev.event.body
        if body is not None and ev.event.decrypted:
            now = time.perf_counter()
            self.at.setdefault(body, now)
            fut = self._waiters.pop(body, None)
            if fut is not None and not fut.done():
                fut.set_result(now)

    async def wait(self, body: str, timeout: float = 60) -> float:
        if body in self.at:
            return self.at[body]
        fut = self._waiters.setdefault(body, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(fut, timeout)


async def run(hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool) -> dict[str, Any]:
    n_lat = 5 if smoke else 20 if quick else 50
    n_burst = 20 if smoke else 100 if quick else 300
    series = 50 if smoke else 1000
    seconds = 3 if smoke else 20 if quick else 60
    data = tmp / "data"
    data.mkdir()
    (data / "datarooms.toml").write_text(
        '[homeserver]\nmode = "external"\n'
        f'url = "{hs.base_url}"\nserver_name = "{hs.server_name}"\n'
        f'registration_shared_secret = "{hs.synapse.registration_shared_secret}"\n'
    )
    settings = load_settings(data_dir=data, env={})
    svc_user = await hs.new_user("svc", admin=True)
    creds = Credentials(hs.base_url, svc_user.user_id, svc_user.access_token, svc_user.device_id)
    write_credentials(settings.credentials_file, creds)
    ctx = PlatformContext(settings, hs.base_url, creds, None)

    async def open_user(prefix: str) -> DataroomsClient:
        u = await hs.new_user(prefix)
        c = Credentials(hs.base_url, u.user_id, u.access_token, u.device_id)
        return await DataroomsClient.open(c, tmp / prefix)

    alice, bob = await open_user("alice"), await open_user("bob")
    svc = AutomationService(port=0, rate_per_hook=10_000, burst=10_000)
    info = await svc.start(ctx)
    assert svc.bot is not None
    bot = svc.bot.client
    try:
        room = (await alice.rooms.create("device", name="bench")).room_id
        await alice.rooms.grant(room, bot.user_id, "write")
        await alice.rooms.grant(room, bob.user_id, "write")
        await bob.sync_once()
        await bob.rooms.join(room)
        for _ in range(300):
            if bot.membership(room) == "join":
                break
            await asyncio.sleep(0.1)
        reg = HookRegistry(registry_path(settings))
        hook = reg.add(room, template="${text}")
        reg.close()
        url = f"{info['url']}/hooks/{hook.hook_id}"
        headers = {"Authorization": f"Bearer {hook.secret}"}
        seen = Seen(alice)
        alice.start_sync()
        async with aiohttp.ClientSession() as http:

            async def via_hook(text: str) -> None:
                async with http.post(url, data=json.dumps({"text": text}), headers=headers) as r:
                    assert r.status == 202, await r.text()

            async def one(kind: str, i: int) -> float:
                text = f"{kind}-{i}-{time.time_ns()}"
                t0 = time.perf_counter()
                if kind == "hook":
                    await via_hook(text)
                else:
                    await bob.messages.send(room, text)
                return (await seen.wait(text) - t0) * 1000

            for i in range(3):  # warm-up: sessions shared, connections open
                await one("hook", -i - 1)
                await one("send", -i - 1)
            hook_ms: list[float] = []
            send_ms: list[float] = []
            for i in range(n_lat):
                order = ("hook", "send") if i % 2 == 0 else ("send", "hook")
                for kind in order:
                    (hook_ms if kind == "hook" else send_ms).append(await one(kind, i))

            async def burst(kind: str) -> float:
                sem = asyncio.Semaphore(16)
                texts = [f"{kind}-burst-{i}-{time.time_ns()}" for i in range(n_burst)]

                async def go(text: str) -> None:
                    async with sem:
                        if kind == "hook":
                            await via_hook(text)
                        else:
                            await bob.messages.send(room, text)

                t0 = time.perf_counter()
                await asyncio.gather(*(go(t) for t in texts))
                await asyncio.gather(*(seen.wait(t, 300) for t in texts))
                return n_burst / (time.perf_counter() - t0)

            hooks_per_s = await burst("hook")
            sends_per_s = await burst("send")

        # -- rules ------------------------------------------------------------------
        engine = RuleEngine(
            [
                Rule("hot", "threshold", "temp", above=1e9),
                Rule("odd", "anomaly", "temp", z=1e9),  # evaluated, never fires
            ]
        )
        tags = [{"id": str(i)} for i in range(series)]
        t0_ms = 1_700_000_000_000
        cpu0 = time.process_time()
        samples = 0
        for s in range(seconds):
            for i in range(series):
                engine.observe("temp", 20.0 + (i % 7) + (s % 5) * 0.1, t0_ms + s * 1000, tags[i])
                samples += 1
        rule_cpu_us = (time.process_time() - cpu0) / samples * 1e6

        # Alert latency through the service: a member appends a breaching sample of a
        # new series; the service's rule fires and posts; the member sees it decrypted.
        name, schema = rule_schema()
        await alice.records.publish_schema(room, name, schema)
        rule = {"name": "hot", "kind": "threshold", "metric": "pump", "above": 100}
        await alice.records.put(room, RULE_KEY_PREFIX + "hot", rule, schema=name)
        engines = svc.bot.alerts.engines
        for _ in range(600):
            if room in engines and "hot" in engines[room].rules:
                break
            await asyncio.sleep(0.05)
        alert_ms: list[float] = []
        for i in range(3 if smoke else 20):
            t0 = time.perf_counter()
            await alice.telemetry.append(room, "pump", 150.0, tags={"run": str(i)})
            await alice.telemetry.flush()
            alert_ms.append((await seen.wait(f"🔥 [FIRING] hot\n- pump,run={i} = 150") - t0) * 1000)

        # -- anomaly precision / recall ------------------------------------------------
        tp = fp = fn = 0
        for seed in range(5 if smoke else 20):
            ser = anomaly_series(seed)
            det = RuleEngine([Rule("odd", "anomaly", ser.metric)])
            flagged = {
                i
                for i, (ts, v) in enumerate(ser.samples)
                if any(t.status == "firing" for t in det.observe(ser.metric, v, ts))
            }
            tp += len(flagged & ser.anomalies)
            fp += len(flagged - ser.anomalies)
            fn += len(ser.anomalies - flagged)
    finally:
        await svc.stop()
        await alice.close()
        await bob.close()
    hook_p50, send_p50 = median(hook_ms), median(send_ms)
    return {
        "hook_to_visible_p50_ms": hook_p50,
        "send_visible_p50_ms": send_p50,
        "hook_vs_send_ratio": hook_p50 / send_p50,
        "latency_n": n_lat,
        "hooks_per_s": hooks_per_s,
        "sends_per_s": sends_per_s,
        "burst_n": n_burst,
        "rule_series": series,
        "rule_samples": samples,
        "rule_cpu_us_per_sample": rule_cpu_us,
        "alert_latency_p50_ms": median(alert_ms),
        "anomaly_precision": tp / max(1, tp + fp),
        "anomaly_recall": tp / max(1, tp + fn),
        "anomaly_false_positives": fp,
        "anomaly_samples": (5 if smoke else 20) * 1000,
    }


def main() -> None:
    ap = bench_args(__doc__, "fewer samples, a 20 s rules stream")
    args = ap.parse_args()
    r = with_homeserver("automation", lambda hs, tmp: run(hs, tmp, args.quick, args.smoke))
    print(
        f"webhook -> visible p50 {r['hook_to_visible_p50_ms']:.1f} ms vs plain send -> visible "
        f"p50 {r['send_visible_p50_ms']:.1f} ms (ratio {r['hook_vs_send_ratio']:.2f}, "
        f"{r['latency_n']} each)"
    )
    print(
        f"throughput ({r['burst_n']}, 16 in flight): {r['hooks_per_s']:.1f} hooks/s vs "
        f"{r['sends_per_s']:.1f} sends/s to visible"
    )
    print(
        f"rules: {r['rule_cpu_us_per_sample']:.1f} us CPU per sample over {r['rule_series']} "
        f"series; alert latency p50 {r['alert_latency_p50_ms']:.1f} ms"
    )
    print(
        f"anomaly: precision {r['anomaly_precision']:.3f} recall {r['anomaly_recall']:.3f} "
        f"({r['anomaly_false_positives']} false positives in {r['anomaly_samples']} samples)"
    )
    emit({"bench": "automation", "quick": args.quick, "smoke": args.smoke, **r, **machine()})


if __name__ == "__main__":
    main()
