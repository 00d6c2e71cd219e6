"""State bot: authenticated queries and writes through the bot vs the homeserver directly.

Run from the repo root: python bench/statebot.py [--quick | --smoke]

Against a real embedded Synapse: a room owner (an SDK device) and the state bot
(its own account and E2EE device, serving its REST API in this process). The
key ``config`` holds a 30-member object in ``ixo.room.state``.

1. query, interleaved (alternating which goes first) after a warm-up:
   ``GET /v1/rooms/{room}/state/config`` on the bot with an OpenID token (cached
   after its first use; the bot checks membership and the ACL in its local
   index) vs ``GET /_matrix/client/v3/rooms/{room}/state/ixo.room.state/config``
   on the homeserver with the owner's access token: the baseline, a client
   reading state without the bot. Both over one keep-alive aiohttp session.
   Also a query at a JSON Pointer, a secure (encrypted) value, and the first
   query with a fresh token (verified with the homeserver).
2. set, interleaved: ``PUT`` through the bot (merge at a path: a read of the
   current value from the homeserver, the merge, the state event) vs ``PUT
   /state/ixo.room.state/config`` on the homeserver directly; and a secure set
   (an encrypted record plus the reference state event).
3. throughput: authenticated queries/s with 16 concurrent requests from a
   separate process (so the load generator does not share the bot's CPU time
   slice), for a few seconds; the same load on the homeserver's state endpoint.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from _common import (
    bench_args,
    emit,
    interleaved,
    machine,
    median,
    percentile,
    rss_mb,
    with_homeserver,
)
from datarooms import Credentials, DataroomsClient
from datarooms.services.statebot import StateBot, StateBotClient, StateBotConfig
from datarooms.testing import TestHomeserver

CONCURRENCY = 16


async def step(what: str, aw: Awaitable[Any], timeout: float = 120) -> Any:
    """Await a setup step; a stuck step ends the run with its name, not a silent hang."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise SystemExit(f"benchmark stuck for {timeout:.0f} s in: {what}") from None


def ms(seconds: float) -> float:
    return seconds * 1000


def stats(name: str, values_ms: list[float]) -> dict[str, float]:
    return {f"{name}_p50_ms": median(values_ms), f"{name}_p99_ms": percentile(values_ms, 99)}


# -- the load generator (a separate process) ------------------------------------------


def load(
    url: str, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[int, int, float]:
    """GET ``url`` with ``concurrency`` requests in flight for ``seconds``.

    Returns (ok, failed, elapsed seconds), timed here so process start-up is not counted.
    """
    return asyncio.run(_load(url, headers, seconds, concurrency))


async def _load(
    url: str, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[int, int, float]:
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(resp.status)

        await asyncio.gather(*(one() for _ in range(concurrency)))  # open the connections
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal ok, failed
            while time.perf_counter() < deadline:
                try:
                    await one()
                    ok += 1
                except Exception:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return ok, failed, elapsed


async def throughput(
    pool: ProcessPoolExecutor, url: str, headers: dict[str, str], seconds: float
) -> float:
    loop = asyncio.get_running_loop()
    ok, failed, elapsed = await loop.run_in_executor(pool, load, url, headers, seconds, CONCURRENCY)
    if failed:
        raise SystemExit(f"{failed} of {ok + failed} requests to {url} failed")
    return ok / elapsed


# -- the run ------------------------------------------------------------------------


async def run(hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool = False) -> dict[str, Any]:
    n = 5 if smoke else 100 if quick else 1000
    set_n = 4 if smoke else 40 if quick else 300
    load_s = 0.5 if smoke else 2.0 if quick else 8.0
    owner_user = await hs.new_user("owner")
    bot_user = await hs.new_user("statebot")
    owner = await step(
        "open the owner's device",
        DataroomsClient.open(
            Credentials(hs.base_url, owner_user.user_id, owner_user.access_token), tmp / "owner"
        ),
    )
    bot_client = await step(
        "open the bot's device",
        DataroomsClient.open(
            Credentials(hs.base_url, bot_user.user_id, bot_user.access_token), tmp / "bot"
        ),
    )
    bot = StateBot(bot_client, config=StateBotConfig(port=0), own_client=True)
    await step("start the bot", bot.start())
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    try:
        room = (await step("create the room", owner.rooms.create("device", name="bench"))).room_id
        await step("grant the bot", owner.rooms.grant(room, bot_client.user_id, "admin"))
        api = StateBotClient.for_client(bot.url, owner)
        await step("have the bot join", api.join(room))
        config = {f"field{i}": {"value": i, "unit": "C", "label": f"sensor {i}"} for i in range(30)}
        await step("set the first value", api.set(room, "config", config))
        await step(
            "set a secure value",
            api.set(room, "secret", {"api_key": "k" * 40, "user": "pump"}, secure=True),
        )
        token, server = await api.tokens.get()
        bot_headers = {"Authorization": f"Bearer {token}", "X-Matrix-Server-Name": server}
        hs_headers = {"Authorization": f"Bearer {owner.access_token}"}
        q_url = f"{bot.url}/v1/rooms/{room}/state/config"
        d_url = f"{hs.base_url}/_matrix/client/v3/rooms/{room}/state/ixo.room.state/config"

        async with aiohttp.ClientSession() as s:

            async def get(url: str, headers: dict[str, str]) -> Any:
                async with s.get(url, headers=headers) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise SystemExit(f"GET {url}: {resp.status} {body}")
                    return body

            async def put(url: str, headers: dict[str, str], body: Any) -> None:
                async with s.put(url, headers=headers, json=body) as resp:
                    if resp.status != 200:
                        raise SystemExit(f"PUT {url}: {resp.status} {await resp.text()}")
                    await resp.read()

            # Same answer both ways.
            assert (await get(q_url, bot_headers))["value"] == await get(d_url, hs_headers)

            print("1/3 queries: bot vs homeserver ...", flush=True)
            query, direct = await interleaved(
                lambda _i: get(q_url, bot_headers), lambda _i: get(d_url, hs_headers), n, 20
            )
            path_q: list[float] = []
            secure_q: list[float] = []
            for _ in range(n):
                t0 = time.perf_counter()
                await get(q_url + "?path=/field7/value", bot_headers)
                path_q.append(ms(time.perf_counter() - t0))
                t0 = time.perf_counter()
                await get(f"{bot.url}/v1/rooms/{room}/state/secret", bot_headers)
                secure_q.append(ms(time.perf_counter() - t0))
            fresh: list[float] = []
            for _ in range(max(10, n // 10)):
                api.tokens.invalidate()
                new_token, _srv = await api.tokens.get()
                t0 = time.perf_counter()
                await get(q_url, {**bot_headers, "Authorization": f"Bearer {new_token}"})
                fresh.append(ms(time.perf_counter() - t0))

            print("2/3 sets: bot vs homeserver ...", flush=True)
            set_url = f"{bot.url}/v1/rooms/{room}/state/config"
            d_set_url = f"{hs.base_url}/_matrix/client/v3/rooms/{room}/state/ixo.room.state/load"
            sets, direct_sets = await interleaved(
                lambda i: put(set_url, bot_headers, {"path": "/field3/value", "value": i}),
                lambda i: put(d_set_url, hs_headers, {**config, "seq": i}),
                set_n,
                5,
            )
            secure_sets: list[float] = []
            for i in range(max(10, set_n // 4)):
                t0 = time.perf_counter()
                await api.set(room, "secret", str(i), path="/user")
                secure_sets.append(ms(time.perf_counter() - t0))
            assert (await get(q_url + "?path=/field3/value", bot_headers))["value"] == set_n - 1

            print(
                f"3/3 throughput: {CONCURRENCY} concurrent queries for {load_s:.0f} s each ...",
                flush=True,
            )
            qps = await throughput(pool, q_url, bot_headers, load_s)
            direct_qps = await throughput(pool, d_url, hs_headers, load_s)
        await api.close()
        rss = rss_mb(os.getpid())
    finally:
        pool.shutdown()
        await bot.stop()
        await owner.close()
    q50, d50, s50, ds50 = median(query), median(direct), median(sets), median(direct_sets)
    return {
        **stats("query", query),
        **stats("direct_state", direct),
        "query_speedup": d50 / q50,
        **stats("query_path", path_q),
        **stats("secure_query", secure_q),
        **stats("auth_verify_query", fresh),
        **stats("set", sets),
        **stats("direct_set", direct_sets),
        "set_overhead_ratio": s50 / ds50,
        **stats("secure_set", secure_sets),
        "queries_per_s": qps,
        "direct_queries_per_s": direct_qps,
        "qps_ratio": qps / direct_qps,
        "query_n": n,
        "set_n": set_n,
        "concurrency": CONCURRENCY,
        "process_rss_mb": rss,
    }


def main() -> None:
    ap = bench_args(__doc__, "fewer samples, shorter load")
    args = ap.parse_args()
    r = with_homeserver("statebot", lambda hs, tmp: run(hs, tmp, args.quick, args.smoke))
    print(
        f"query (authenticated, ACL-checked, local index): p50 {r['query_p50_ms']:.2f} ms "
        f"(p99 {r['query_p99_ms']:.2f}) vs the homeserver's state endpoint p50 "
        f"{r['direct_state_p50_ms']:.2f} ms (p99 {r['direct_state_p99_ms']:.2f}): "
        f"{r['query_speedup']:.2f}x, over {r['query_n']} each"
    )
    print(
        f"query at a path p50 {r['query_path_p50_ms']:.2f} ms; secure value p50 "
        f"{r['secure_query_p50_ms']:.2f} ms; first query with a new token (verified) p50 "
        f"{r['auth_verify_query_p50_ms']:.2f} ms"
    )
    print(
        f"set (merge at a path) p50 {r['set_p50_ms']:.2f} ms (p99 {r['set_p99_ms']:.2f}) vs "
        f"direct state PUT p50 {r['direct_set_p50_ms']:.2f} ms: ratio "
        f"{r['set_overhead_ratio']:.2f}, over {r['set_n']} each; secure set p50 "
        f"{r['secure_set_p50_ms']:.2f} ms"
    )
    print(
        f"throughput ({r['concurrency']} concurrent): {r['queries_per_s']:.0f} authenticated "
        f"queries/s vs {r['direct_queries_per_s']:.0f}/s from the homeserver: "
        f"{r['qps_ratio']:.2f}x"
    )
    print(f"runtime {r['runtime_s']:.0f} s")
    emit({"bench": "statebot", "quick": args.quick, "smoke": args.smoke, **r, **machine()})


if __name__ == "__main__":
    main()
