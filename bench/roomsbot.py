"""Rooms bot: from 1,000 entity registrations to 1,000 entities' rooms ready.

Run from the repo root: python bench/roomsbot.py [--quick | --smoke]

Everything is real: an embedded Synapse that loaded the bot's appservice registration,
the devchain, and the rooms bot watching it (the bot and the devchain share this
process, as under `datarooms up`).

1. ours: register N entities on the devchain (full 1,000, quick 100), as fast as the
   chain takes them, each with one controller; time from the first registration until
   every entity has its space and its entity room (the bot's store; then every alias
   is checked against the homeserver's directory, outside the timing).
   rooms_per_s counts rooms and spaces (2 per entity).
2. baseline, on a sample (full 30, quick 10): the naive path a plain client takes for
   the same layout: createRoom with a preset, then one request per state event
   (encryption, room info, entity info, power levels), a space the same way plus its
   child, and the invites; sequential, as a simple bot would; rate limits lifted (as
   the embedded homeserver's config does), or it would wait a minute a room (Synapse's default
   rc_room_creation: 0.016 rooms/s after a burst of 10; that rate is reported as
   default_limit_entities_per_s).

Also: events per entity (ours and naive), and Synapse's CPU time per entity: the
homeserver's CPU is what bounds this on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
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
from datarooms.sdk.rooms import ENCRYPTION, power_levels
from datarooms.services.roomsbot import ENTITY_EVENT, RoomsBot, RoomsBotSettings
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


async def bench_ours(hs: TestHomeserver, bot: RoomsBot, chain_url: str, n: int) -> dict[str, Any]:
    target = bot.store.count() + n  # the store holds the warm-up entities too
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
                f"  ... {bot.store.count()}/{n} entities ready after {progress_at - t0:.0f} s",
                flush=True,
            )
    seconds = time.perf_counter() - t0
    dids = await registering
    registered_s = None
    synapse_cpu = cpu_seconds(hs.synapse.pid or 0) - cpu0
    process_cpu = time.process_time() - bot_cpu0
    # Outside the timing: the homeserver's directory agrees, for every entity.
    async with MatrixHttp(hs.base_url, bot.registration.as_token) as http:
        for did in dids:
            record = bot.store.get(did)
            assert record is not None, did
            for ref in (record.rooms["entity"], record.space):
                got = await http.request(
                    "GET", f"/_matrix/client/v3/directory/room/{quote(ref.alias)}"
                )
                assert got["room_id"] == ref.room_id, ref
        record = bot.store.get(dids[0])
        assert record is not None
        events = 0
        for rid in (record.room_id, record.space.room_id):
            events += len(await http.request("GET", f"/_matrix/client/v3/rooms/{quote(rid)}/state"))
    return {
        "entities": n,
        "seconds": seconds,
        "rooms_per_s": 2 * n / seconds,
        "entities_per_s": n / seconds,
        "events_per_entity": events,
        "synapse_cpu_ms_per_entity": synapse_cpu * 1000 / n,
        "bot_and_chain_cpu_ms_per_entity": process_cpu * 1000 / n,
        "registered_in_s": registered_s,
    }


async def bench_naive(hs: TestHomeserver, n: int) -> dict[str, Any]:
    """The same layout, the way a plain client makes it: one request per state event."""
    user = await hs.new_user("naive")  # the embedded homeserver's rate limits are lifted
    ctl = f"@did-ixo-{CONTROLLER.rsplit(':', 1)[1]}:localhost"
    events = 0
    cpu0 = cpu_seconds(hs.synapse.pid or 0)
    t0 = time.perf_counter()
    async with MatrixHttp(hs.base_url, user.access_token) as http:

        async def create(body: dict[str, Any]) -> str:
            return str(
                (await http.request("POST", "/_matrix/client/v3/createRoom", json=body))["room_id"]
            )

        async def put(rid: str, etype: str, content: dict[str, Any], key: str = "") -> None:
            await http.request(
                "PUT",
                f"/_matrix/client/v3/rooms/{quote(rid)}/state/{etype}/{quote(key)}",
                json=content,
            )

        for i in range(n):
            did = f"did:ixo:entity:naive{uuid.uuid4().hex}"
            facts = {
                "did": did,
                "type": "asset/device",
                "controllers": [CONTROLLER],
                "source": "chain",
                "version": 1,
            }
            rid = await create(
                {
                    "preset": "private_chat",
                    "name": f"{did} · entity",
                    "topic": "Records, twin state and files.",
                    "room_alias_name": f"naive-{i}-{uuid.uuid4().hex[:6]}",
                }
            )
            await put(rid, "m.room.encryption", dict(ENCRYPTION))
            await put(rid, "io.datarooms.room", {"kind": "entity", "version": 1, "did": did})
            await put(rid, ENTITY_EVENT, facts)
            power = power_levels("entity", {ctl: 100})
            await put(rid, "m.room.power_levels", power)
            await http.request(
                "POST", f"/_matrix/client/v3/rooms/{quote(rid)}/invite", json={"user_id": ctl}
            )
            sid = await create(
                {
                    "preset": "private_chat",
                    "name": did,
                    "topic": "Its rooms.",
                    "creation_content": {"type": "m.space"},
                    "room_alias_name": f"naive-space-{i}-{uuid.uuid4().hex[:6]}",
                }
            )
            await put(sid, ENTITY_EVENT, facts)
            await put(sid, "m.room.power_levels", {**power, "events_default": 100})
            await put(sid, "m.space.child", {"via": ["localhost"]}, rid)
            await http.request(
                "POST", f"/_matrix/client/v3/rooms/{quote(sid)}/invite", json={"user_id": ctl}
            )
            if i == 0:
                for r in (rid, sid):
                    events += len(
                        await http.request("GET", f"/_matrix/client/v3/rooms/{quote(r)}/state")
                    )
                    # State PUTs replace earlier events of the same type: count the
                    # timeline too (every event the homeserver had to create).
                    msgs = await http.request(
                        "GET",
                        f"/_matrix/client/v3/rooms/{quote(r)}/messages",
                        params={"dir": "b", "limit": "100"},
                    )
                    events += len(msgs["chunk"]) - len(
                        await http.request("GET", f"/_matrix/client/v3/rooms/{quote(r)}/state")
                    )
    seconds = time.perf_counter() - t0
    return {
        "naive_entities": n,
        "naive_entities_per_s": n / seconds,
        "naive_events_per_entity": events,
        "naive_synapse_cpu_ms_per_entity": (cpu_seconds(hs.synapse.pid or 0) - cpu0) * 1000 / n,
    }


async def main(quick: bool, smoke: bool = False) -> None:
    n = 5 if smoke else 100 if quick else 1000
    sample = 1 if smoke else 10 if quick else 30
    work = Path(tempfile.mkdtemp(prefix="bench-roomsbot-"))
    port = free_port()
    reg = write_registration(
        work / "registration.yaml", server_name="localhost", url=f"http://127.0.0.1:{port}"
    )
    hs = TestHomeserver(
        work / "synapse", extra_config={"app_service_config_files": [str(reg.path)]}
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
                base = bot.store.count()
                ours = await bench_ours(hs, bot, server.url, n) if base == 5 else {}
                rss = rss_mb(os.getpid())
                synapse_rss = rss_mb(hs.synapse.pid or 0)
            finally:
                await bot.stop()
        naive = await bench_naive(hs, sample)
    finally:
        await hs.synapse.stop()
    default_limit = 0.016 / 2  # rc_room_creation, two rooms an entity
    result = {
        "bench": "roomsbot",
        **ours,
        **naive,
        "ratio": ours["entities_per_s"] / naive["naive_entities_per_s"],
        "default_limit_entities_per_s": default_limit,
        "target_s": 60,
        "bot_rss_mb": rss,
        "synapse_rss_mb": synapse_rss,
        **machine(),
    }
    result.pop("registered_in_s", None)
    print(
        f"ours:  {n} entities ({2 * n} rooms) ready in {ours['seconds']:.1f} s: "
        f"{ours['entities_per_s']:.2f} entities/s, {ours['rooms_per_s']:.2f} rooms/s; "
        f"{ours['events_per_entity']} events and "
        f"{ours['synapse_cpu_ms_per_entity']:.0f} ms of Synapse CPU an entity"
    )
    print(
        f"naive: {naive['naive_entities_per_s']:.2f} entities/s, "
        f"{naive['naive_events_per_entity']} events and "
        f"{naive['naive_synapse_cpu_ms_per_entity']:.0f} ms of Synapse CPU an entity; "
        f"ratio {result['ratio']:.2f}; Synapse's default room-creation limit would allow "
        f"{default_limit * 3600:.0f} entities an hour"
    )
    emit(result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 entities instead of 1,000")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.smoke))
