"""The scale profile against the embedded homeserver, side by side in one run (issue 18).

Run from the repo root: python bench/scale.py [--quick | --smoke]

Three homeservers, one after the other, each fresh, each with the rooms bot's
appservice registration loaded:

- ``embedded``: one Synapse process on SQLite (the default profile);
- ``scale_1p``: the scale profile (PostgreSQL, Redis, Synapse main + client, sync, media,
  federation sender and appservice workers, nginx) with 1 event persister;
- ``scale_2p``: the same with 2 event persisters (``stream_writers.events`` sharded by room).

On each, through its public URL (nginx's for the scale profile):

1. record put p50: ``records.put`` one after another in a shared encrypted room;
2. telemetry samples/s: ``Telemetry.append_many`` of S samples, then ``flush`` until the
   homeserver acknowledged all of them;
3. sync delivery p50: from before alice's put until bob's live feed (his sync loop,
   through the sync worker) yields it;
4. rooms bot provisioning: N entities registered on a devchain, as fast as it takes them;
   the time until the bot's store has every entity's rooms, and Synapse's CPU per entity:
   utime+stime of every Synapse process (main and workers) from /proc, before and after
   (PostgreSQL's own CPU is reported apart, ``pg_cpu_ms_per_entity_*``; each Synapse
   process's share in ``cpu_ms_per_entity_by_process_*``).

Sizes: full N=1000, 200 puts, 100,000 samples, 50 deliveries; --quick N=100, 50, 20,000,
20; --smoke N=5, 10, 2,000, 5, embedded and scale_2p only (the scale_1p figures are null;
checks it runs, not a measurement).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import bench_args, emit, machine, median
from datarooms import Credentials, DataroomsClient
from datarooms.chain import CometRpc, DevChain, DevChainServer, create_entity_tx, parse_tx_events
from datarooms.homeserver.embedded import free_port
from datarooms.sdk.telemetry import Telemetry
from datarooms.services.roomsbot import RoomsBot, RoomsBotSettings
from datarooms.services.roomsbot.registration import write_registration
from datarooms.testing import TestHomeserver, TestScaleHomeserver

CONTROLLER = "did:ixo:ixo1benchscale"
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (seconds); a process gone counts 0."""
    total = 0
    for pid in pids:
        try:
            f = _stat(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / _TICK


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU of a process, its reaped children and its live descendants (PostgreSQL's
    postmaster and its backends)."""
    if not pid:
        return 0.0
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            f = _stat(p)
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if p == pid else 0)
        stack.extend(int(c) for c in children)
    return total / _TICK


def synapse_pids(hs: TestHomeserver) -> dict[str, int]:
    """Every Synapse process by name (``main`` and the workers)."""
    if isinstance(hs, TestScaleHomeserver):
        return hs.scale.synapse_pids()
    return {"main": hs.synapse.pid or 0}


async def register_all(url: str, n: int) -> None:
    sem = asyncio.Semaphore(100)

    async def one(rpc: CometRpc) -> None:
        async with sem:
            res = await rpc.broadcast_tx_commit(
                create_entity_tx(entity_type="asset/device", controllers=[CONTROLLER])
            )
        parse_tx_events(int(res["height"]), res["hash"], res["tx_result"]["events"])

    async with CometRpc(url, timeout=600) as rpc:
        await asyncio.gather(*(one(rpc) for _ in range(n)))


async def client_figures(
    hs: TestHomeserver, tmp: Path, puts: int, samples: int, deliveries: int
) -> dict[str, float]:
    a, b = await hs.new_user("alice"), await hs.new_user("bob")
    alice = await DataroomsClient.open(
        Credentials(hs.base_url, a.user_id, a.access_token), tmp / "alice"
    )
    bob = await DataroomsClient.open(
        Credentials(hs.base_url, b.user_id, b.access_token), tmp / "bob"
    )
    try:
        room = (await alice.rooms.create("device", name="bench")).room_id
        await alice.rooms.grant(room, bob.user_id, "read")
        await bob.sync_once()
        await bob.rooms.join(room)
        await alice.sync_once()
        for i in range(3):  # warm-up: sessions shared, caches filled
            await alice.records.put(room, "warm", i)
        put_ms = []
        for i in range(puts):
            t = time.perf_counter()
            await alice.records.put(room, f"k{i % 20}", {"i": i})
            put_ms.append((time.perf_counter() - t) * 1000)
        async with Telemetry(alice) as ta:
            t0 = 1_700_000_000_000
            rows = [(t0 + i, "bench", float(i % 1000)) for i in range(samples)]
            t = time.perf_counter()
            await ta.append_many(room, rows)
            await ta.flush(timeout=600)
            telemetry_s = time.perf_counter() - t
        feed = bob.subscribe(room)
        delivery_ms = []
        try:
            for i in range(deliveries):
                t = time.perf_counter()
                record = await alice.records.put(room, "live", i)
                while True:
                    event = await asyncio.wait_for(feed.__anext__(), 60)
                    if event.event_id == record.event_id:
                        delivery_ms.append((time.perf_counter() - t) * 1000)
                        break
        finally:
            await feed.aclose()
    finally:
        await alice.close()
        await bob.close()
    return {
        "put_p50_ms": median(put_ms),
        "telemetry_samples_per_s": samples / telemetry_s,
        "sync_delivery_p50_ms": median(delivery_ms),
    }


async def provisioning(
    hs: TestHomeserver, reg: Any, bot_port: int, tmp: Path, n: int
) -> dict[str, Any]:
    chain = DevChain(tmp / "chain", chain_id=f"bench-{uuid.uuid4().hex[:6]}")
    async with DevChainServer(chain, port=0) as server:
        bot = RoomsBot(
            homeserver_url=hs.base_url,
            registration=reg,
            store_path=tmp / "store.db",
            settings=RoomsBotSettings(port=bot_port),
            chain_url=server.url,
        )
        await bot.start()
        try:
            await register_all(server.url, 3)  # warm-up, outside the timing
            while bot.store.count() < 3:
                await asyncio.sleep(0.05)
            target = bot.store.count() + n
            pids = synapse_pids(hs)
            pg_pid = hs.scale.postgres.pid if isinstance(hs, TestScaleHomeserver) else None
            by0 = {name: cpu_seconds([pid]) for name, pid in pids.items()}
            pg0 = tree_cpu_seconds(pg_pid)
            t0 = time.perf_counter()
            registering = asyncio.create_task(register_all(server.url, n))
            shown = t0
            while bot.store.count() < target:
                await asyncio.sleep(0.05)
                if time.perf_counter() - shown > 15:
                    shown = time.perf_counter()
                    print(f"  ... {bot.store.count() - target + n}/{n} entities", flush=True)
            seconds = time.perf_counter() - t0
            await registering
            by = {name: cpu_seconds([pid]) - by0[name] for name, pid in pids.items()}
            pg = tree_cpu_seconds(pg_pid) - pg0
        finally:
            await bot.stop()
    return {
        "provision_s": seconds,
        "cpu_ms_per_entity": sum(by.values()) * 1000 / n,
        "pg_cpu_ms_per_entity": pg * 1000 / n,
        # Where it goes: each Synapse process's share (ms an entity).
        "cpu_ms_per_entity_by_process": {k: round(v * 1000 / n, 1) for k, v in by.items()},
    }


async def run_profile(name: str, persisters: int, sizes: dict[str, int]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-scale-{name}-"))
    bot_port = free_port()
    reg = write_registration(
        tmp / "registration.yaml", server_name="localhost", url=f"http://127.0.0.1:{bot_port}"
    )
    extra = {"app_service_config_files": [str(reg.path)]}
    hs: TestHomeserver = (
        TestScaleHomeserver(tmp / "synapse", extra_config=extra, persisters=persisters)
        if persisters
        else TestHomeserver(tmp / "synapse", extra_config=extra)
    )
    t = time.perf_counter()
    await hs.synapse.start()
    started_s = time.perf_counter() - t
    try:
        figures = await client_figures(
            hs, tmp, sizes["puts"], sizes["samples"], sizes["deliveries"]
        )
        figures |= await provisioning(hs, reg, bot_port, tmp, sizes["entities"])
    finally:
        await hs.synapse.stop()
        if isinstance(hs, TestScaleHomeserver):
            hs.scale.postgres.destroy()  # type: ignore[union-attr]
        shutil.rmtree(tmp, ignore_errors=True)
    figures["start_s"] = started_s
    print(
        f"{name:>9}: started in {started_s:.1f} s; put p50 {figures['put_p50_ms']:.1f} ms, "
        f"{figures['telemetry_samples_per_s']:.0f} samples/s, sync delivery p50 "
        f"{figures['sync_delivery_p50_ms']:.1f} ms; {sizes['entities']} entities in "
        f"{figures['provision_s']:.1f} s, Synapse {figures['cpu_ms_per_entity']:.0f} ms CPU "
        f"(+ PostgreSQL {figures['pg_cpu_ms_per_entity']:.0f} ms) an entity",
        flush=True,
    )
    if persisters:
        by = figures["cpu_ms_per_entity_by_process"]
        print(f"{'':>9}  Synapse CPU ms an entity by process: {by}", flush=True)
    return figures


async def main(quick: bool, smoke: bool) -> None:
    sizes = (
        {"entities": 5, "puts": 10, "samples": 2000, "deliveries": 5}
        if smoke
        else {"entities": 100, "puts": 50, "samples": 20_000, "deliveries": 20}
        if quick
        else {"entities": 1000, "puts": 200, "samples": 100_000, "deliveries": 50}
    )
    started = time.perf_counter()
    runs = {}
    # A smoke run starts one scale profile (2 persisters): it checks the path runs;
    # the 1-persister figures are then null.
    profiles = (
        (("embedded", 0), ("scale_2p", 2))
        if smoke
        else (
            ("embedded", 0),
            ("scale_1p", 1),
            ("scale_2p", 2),
        )
    )
    for name, persisters in profiles:
        runs[name] = await run_profile(name, persisters, sizes)
    e, s2 = runs["embedded"], runs["scale_2p"]
    s1 = runs.get("scale_1p", dict.fromkeys(s2))
    result: dict[str, Any] = {
        "bench": "scale",
        "entities": sizes["entities"],
        "embedded_s": e["provision_s"],
        "scale_1p_s": s1["provision_s"],
        "scale_2p_s": s2["provision_s"],
        "cpu_ms_per_entity_embedded": e["cpu_ms_per_entity"],
        "cpu_ms_per_entity_scale": s2["cpu_ms_per_entity"],
        "cpu_ms_per_entity_scale_1p": s1["cpu_ms_per_entity"],
        "pg_cpu_ms_per_entity_scale": s2["pg_cpu_ms_per_entity"],
        "put_p50_ms_embedded": e["put_p50_ms"],
        "put_p50_ms_scale": s2["put_p50_ms"],
        "put_p50_ms_scale_1p": s1["put_p50_ms"],
        "telemetry_samples_per_s_embedded": e["telemetry_samples_per_s"],
        "telemetry_samples_per_s_scale": s2["telemetry_samples_per_s"],
        "sync_delivery_p50_ms_embedded": e["sync_delivery_p50_ms"],
        "sync_delivery_p50_ms_scale": s2["sync_delivery_p50_ms"],
        "start_s_embedded": e["start_s"],
        "start_s_scale": s2["start_s"],
        "provision_ratio_2p_vs_embedded": e["provision_s"] / s2["provision_s"],
        "cpu_ms_per_entity_by_process_scale": s2["cpu_ms_per_entity_by_process"],
        "cpu_ms_per_entity_by_process_scale_1p": s1["cpu_ms_per_entity_by_process"],
        "put_samples": sizes["puts"],
        "telemetry_samples": sizes["samples"],
        "runtime_s": time.perf_counter() - started,
        **machine(),
    }
    emit(result)


if __name__ == "__main__":
    args = bench_args(__doc__.split("\n")[0], "100 entities, 50 puts, 20,000 samples").parse_args()
    asyncio.run(main(args.quick, args.smoke))
