"""Rooms bot: from 1,000 entity registrations to 1,000 entities' rooms ready.

Run from the repo root: python bench/roomsbot.py [--quick | --smoke]

Everything is real: an embedded Synapse that loaded the bot's appservice registration,
the devchain, and the rooms bot watching it (the bot and the devchain share this
process, as under `datarooms up`). Two phases, one after the other:

1. baseline: the bot's earlier recipe (``EntityRooms(recipe="baseline")``: a topic on
   every room, and the entity's space made with its room: 23 events an entity with one
   controller); N entities (full 1,000, quick 100, smoke 5);
2. ours (``recipe="lean"``): no topics, the space made only when someone asks for it;
   the same N.

Each phase has a homeserver, a devchain and a bot of its own, fresh (until 2026-12 ours
ran second, on the homeserver the baseline had filled with 2,000 rooms, which cost it
~2x in Synapse CPU an entity).

Each phase registers its N entities on the devchain as fast as the chain takes them, each
with one controller, and times from the first registration until every entity's rooms
are in the bot's store (then every alias is checked against the homeserver's directory,
outside the timing). Per phase: wall time, entities/s, events per entity (counted in the
rooms' timelines), and Synapse's CPU time (utime + stime of its process, /proc/<pid>/stat)
per entity: the homeserver's CPU is what bounds this on a small machine. Then, for a few
of ours, a client resolves the ``#space.`` alias, and the cost of a space made on request
is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from _common import SMOKE_HELP, emit, machine, rss_mb
from datarooms._transport.http import MatrixHttp
from datarooms.chain import (
    CometRpc,
    DevChain,
    DevChainServer,
    create_entity_tx,
    parse_tx_events,
)
from datarooms.homeserver.embedded import free_port
from datarooms.services.roomsbot import RoomsBot, RoomsBotSettings
from datarooms.services.roomsbot.entity_rooms import SPACE, Recipe
from datarooms.services.roomsbot.registration import write_registration
from datarooms.testing import TestHomeserver

CONTROLLER = "did:ixo:ixo1benchowner"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def register_all(url: str, n: int) -> list[str]:
    sem = asyncio.Semaphore(100)

    async def one(rpc: CometRpc) -> list[str]:
        async with sem:
            res = await rpc.broadcast_tx_commit(
                create_entity_tx(entity_type="asset/device", controllers=[CONTROLLER])
            )
        parsed = parse_tx_events(int(res["height"]), res["hash"], res["tx_result"]["events"])
        return [e.did for e in parsed.entities]

    async with CometRpc(url, timeout=300) as rpc:
        done = await asyncio.gather(*(one(rpc) for _ in range(n)))
    return [d for batch in done for d in batch]


async def events_in(http: MatrixHttp, room_ids: list[str]) -> int:
    """Every event the homeserver made in these rooms (their timelines, state included)."""
    total = 0
    for rid in room_ids:
        msgs = await http.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(rid)}/messages",
            params={"dir": "b", "limit": "200"},
        )
        total += len(msgs["chunk"])
    return total


async def bench_phase(
    hs: TestHomeserver, bot: RoomsBot, chain_url: str, n: int, recipe: Recipe
) -> dict[str, Any]:
    """N entities registered on the chain to their rooms ready, with ``recipe``."""
    bot.rooms.recipe = recipe
    target = bot.store.count() + n  # the store holds earlier entities too
    cpu0 = cpu_seconds(hs.synapse.pid or 0)
    bot_cpu0 = time.process_time()
    t0 = time.perf_counter()
    registering = asyncio.create_task(register_all(chain_url, n))
    progress_at = t0
    while bot.store.count() < target:
        await asyncio.sleep(0.05)
        if time.perf_counter() - progress_at > 15:
            progress_at = time.perf_counter()
            print(
                f"  ... {recipe}: {bot.store.count() - target + n}/{n} entities ready "
                f"after {progress_at - t0:.0f} s",
                flush=True,
            )
    seconds = time.perf_counter() - t0
    synapse_cpu = cpu_seconds(hs.synapse.pid or 0) - cpu0
    process_cpu = time.process_time() - bot_cpu0
    dids = await registering
    # Outside the timing: the homeserver's directory agrees, for every entity.
    async with MatrixHttp(hs.base_url, bot.registration.as_token) as http:
        for did in dids:
            record = bot.store.get(did)
            assert record is not None, did
            assert (record.space is not None) == (recipe == "baseline"), record
            for ref in record.refs():
                got = await http.request(
                    "GET", f"/_matrix/client/v3/directory/room/{quote(ref.alias)}"
                )
                assert got["room_id"] == ref.room_id, ref
        first = bot.store.get(dids[0])
        assert first is not None
        events = await events_in(http, [r.room_id for r in first.refs()])
    return {
        "entities": n,
        "seconds": seconds,
        "entities_per_s": n / seconds,
        "events_per_entity": events,
        "synapse_cpu_ms_per_entity": synapse_cpu * 1000 / n,
        "bot_and_chain_cpu_ms_per_entity": process_cpu * 1000 / n,
        "dids": dids,
    }


async def bench_space_on_request(
    hs: TestHomeserver, bot: RoomsBot, dids: list[str]
) -> dict[str, Any]:
    """A client resolves ``#space.did-...`` of entities that have no space yet."""
    user = await hs.new_user("spaces")
    cpu0 = cpu_seconds(hs.synapse.pid or 0)
    t0 = time.perf_counter()
    async with MatrixHttp(hs.base_url, user.access_token) as http:
        for did in dids:
            alias = bot.rooms.alias(did, SPACE)
            got = await http.request("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")
            record = bot.store.get(did)
            assert record is not None and record.space is not None
            assert got["room_id"] == record.space.room_id
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds(hs.synapse.pid or 0) - cpu0
    async with MatrixHttp(hs.base_url, bot.registration.as_token) as http:
        record = bot.store.get(dids[0])
        assert record is not None and record.space is not None
        events = await events_in(http, [record.space.room_id])
    return {
        "space_on_request_ms": seconds * 1000 / len(dids),
        "space_on_request_synapse_cpu_ms": cpu * 1000 / len(dids),
        "space_events": events,
    }


async def run_recipe(
    work: Path, n: int, recipe: Recipe, extra: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One phase on a homeserver, devchain and bot of its own: N entities with ``recipe``
    (then, for ours, spaces on request). Fresh for each recipe, so that neither runs on a
    homeserver the other filled: Synapse's cost per room grows with its database.

    Returns the phase's figures and the run's other figures (memory; for ours, spaces)."""
    port = free_port()
    reg = write_registration(
        work / "registration.yaml", server_name="localhost", url=f"http://127.0.0.1:{port}"
    )
    hs = TestHomeserver(
        work / "synapse",
        extra_config={**extra, "app_service_config_files": [str(reg.path)]},
    )
    await hs.synapse.start()
    try:
        chain = DevChain(work / "chain", chain_id=f"bench-{uuid.uuid4().hex[:6]}")
        async with DevChainServer(chain, port=0) as server:
            bot = RoomsBot(
                homeserver_url=hs.base_url,
                registration=reg,
                store_path=work / "store.db",
                settings=RoomsBotSettings(port=port),
                chain_url=server.url,
            )
            await bot.start()
            try:
                # Warm up (first requests, caches) with a few entities, outside the timing.
                await register_all(server.url, 5)
                while bot.store.count() < 5:
                    await asyncio.sleep(0.05)
                phase = await bench_phase(hs, bot, server.url, n, recipe)
                others: dict[str, Any] = {}
                if recipe == "lean":
                    dids = phase["dids"][: min(n, 10)]
                    others.update(await bench_space_on_request(hs, bot, dids))
                others["bot_rss_mb"] = rss_mb(os.getpid())
                others["synapse_rss_mb"] = rss_mb(hs.synapse.pid or 0)
            finally:
                await bot.stop()
    finally:
        await hs.synapse.stop()
    return phase, others


async def main(quick: bool, smoke: bool = False, synapse_config: str = "") -> None:
    n = 5 if smoke else 100 if quick else 1000
    work = Path(tempfile.mkdtemp(prefix="bench-roomsbot-"))
    extra = json.loads(synapse_config) if synapse_config else {}
    if not isinstance(extra, dict):
        raise SystemExit("--synapse-config takes a JSON object")
    base, _ = await run_recipe(work / "baseline", n, "baseline", extra)
    print(f"baseline: {summary(base)}", flush=True)
    ours, others = await run_recipe(work / "lean", n, "lean", extra)
    print(f"ours:     {summary(ours)}", flush=True)
    result: dict[str, Any] = {
        "bench": "roomsbot",
        "entities": n,
        "seconds": ours["seconds"],
        "entities_per_s": ours["entities_per_s"],
        "events_per_entity": ours["events_per_entity"],
        "synapse_cpu_ms_per_entity": ours["synapse_cpu_ms_per_entity"],
        "bot_and_chain_cpu_ms_per_entity": ours["bot_and_chain_cpu_ms_per_entity"],
        "baseline_seconds": base["seconds"],
        "baseline_entities_per_s": base["entities_per_s"],
        "baseline_events_per_entity": base["events_per_entity"],
        "baseline_synapse_cpu_ms_per_entity": base["synapse_cpu_ms_per_entity"],
        "baseline_bot_and_chain_cpu_ms_per_entity": base["bot_and_chain_cpu_ms_per_entity"],
        "speedup": base["seconds"] / ours["seconds"],
        "cpu_ratio": ours["synapse_cpu_ms_per_entity"] / base["synapse_cpu_ms_per_entity"],
        **others,
        "target_s_per_1000": 120,
        "target_cpu_ms_per_entity": 120,
        "synapse_config": extra,
        **machine(),
    }
    print(
        f"ours/baseline: {result['speedup']:.2f}x faster, Synapse CPU x{result['cpu_ratio']:.2f}; "
        f"a space on request: {others['space_on_request_synapse_cpu_ms']:.0f} ms of Synapse "
        f"CPU, {others['space_events']} events"
    )
    emit(result)


def summary(r: dict[str, Any]) -> str:
    return (
        f"{r['entities']} entities ready in {r['seconds']:.1f} s "
        f"({r['entities_per_s']:.2f}/s); {r['events_per_entity']} events and "
        f"{r['synapse_cpu_ms_per_entity']:.0f} ms of Synapse CPU an entity "
        f"(bot and chain: {r['bot_and_chain_cpu_ms_per_entity']:.0f} ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 entities instead of 1,000")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument(
        "--synapse-config",
        default="",
        metavar="JSON",
        help="extra Synapse settings for this run's homeserver, e.g. "
        "'{\"federation_sender_instances\": []}' (what the embedded homeserver would save "
        "without federation); the default is the embedded homeserver as `datarooms up` runs it",
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.smoke, args.synapse_config))
