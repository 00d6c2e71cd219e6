"""Authentication cost: UCAN chains vs Matrix OpenID tokens, and MCP calls with each.

Run from the repo root: python bench/auth.py [--quick | --smoke]

A real embedded Synapse. In one run, side by side:

1. verify: a 3-hop UCAN chain (service -> user -> agent -> sub-agent, a fresh invocation
   each time: the invoker signs one per request) checked by the service's validator
   (``ucan_verify``: delegations memoized by CID, as a running service has them;
   ``ucan_verify_cold``: a new validator each time, every signature checked), against an
   OpenID token checked by ``OpenIdVerifier`` with its cache (``openid_verify_cached``) and
   without (``openid_verify_uncached``: a round trip to Synapse's userinfo endpoint).
2. MCP: the ``get_record`` tool over streamable HTTP with the official ``mcp`` client,
   authenticated by a UCAN (a fresh invocation per HTTP request, 1-hop grant from
   ``agents grant``) vs by the agent's static bearer token; interleaved.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from _common import bench_args, emit, interleaved, machine, median, percentile, with_homeserver
from datarooms._logging import configure_logging
from datarooms.homeserver.embedded import free_port
from datarooms.sdk.ucan import (
    MCP_CALL,
    MCP_SERVER,
    ROOM_READ,
    STATE_BOT,
    InvocationAuth,
    Principal,
    Validator,
    bearer,
    delegate,
    invoke,
)
from datarooms.services.mcp import McpService, add_agent
from datarooms.services.mcp.config import agents_file
from datarooms.services.openid import OpenIdVerifier
from datarooms.testing import TestHomeserver
from mcp_tools import setup_platform


def chain() -> tuple[Principal, Principal, list[Any]]:
    now = int(time.time())
    bot, user, agent, sub = (Principal.generate() for _ in range(4))
    root = delegate(
        bot,
        user.did,
        "/datarooms",
        subject=bot.did,
        expires=now + 3600,
        policy=[["==", ".with", STATE_BOT]],
        meta={"matrix_user": "@u:localhost"},
    )
    mid = delegate(
        user,
        agent.did,
        "/datarooms/room",
        subject=bot.did,
        expires=now + 1800,
        policy=[["==", ".room", "!r:localhost"]],
    )
    leaf = delegate(agent, sub.did, ROOM_READ, subject=bot.did, expires=now + 600)
    return bot, sub, [root, mid, leaf]


def us_stats(name: str, values_s: list[float]) -> dict[str, float]:
    us = [v * 1e6 for v in values_s]
    return {f"{name}_p50_us": median(us), f"{name}_p99_us": percentile(us, 99)}


async def run(hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool) -> dict[str, Any]:
    n = 20 if smoke else 300 if quick else 3000
    n_http = 5 if smoke else 40 if quick else 300
    result: dict[str, Any] = {"n_verify": n, "n_http": n_http}

    print("1/2 verify ...", flush=True)
    bot, sub, proofs = chain()
    args = {"room": "!r:localhost", "with": STATE_BOT}
    tokens = [bearer(invoke(sub, ROOM_READ, args, proofs), proofs) for _ in range(2 * n)]
    warm = Validator(bot.did)
    warm.verify(tokens[-1])
    times: list[float] = []
    for t in tokens[:n]:
        t0 = time.perf_counter()
        warm.verify(t)
        times.append(time.perf_counter() - t0)
    result.update(us_stats("ucan_verify", times))
    times = []
    for t in tokens[n : 2 * n - 1]:
        v = Validator(bot.did)
        t0 = time.perf_counter()
        v.verify(t)
        times.append(time.perf_counter() - t0)
    result.update(us_stats("ucan_verify_cold", times))

    user = await hs.new_user("bench")
    openid = await _token(hs, user)
    cached = OpenIdVerifier({hs.server_name: hs.base_url}, default_server=hs.server_name)
    uncached = OpenIdVerifier(
        {hs.server_name: hs.base_url},
        default_server=hs.server_name,
        cache_seconds=0,
        verify_per_second=1e6,
        verify_burst=1_000_000,
    )
    try:
        await cached.verify(openid, None)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await cached.verify(openid, None)
            times.append(time.perf_counter() - t0)
        result.update(us_stats("openid_verify_cached", times))
        await uncached.verify(openid, None)
        times = []
        for _ in range(max(5, n // 10)):
            t0 = time.perf_counter()
            await uncached.verify(openid, None)
            times.append(time.perf_counter() - t0)
        ms = [v * 1000 for v in times]
        result["openid_verify_uncached_p50_ms"] = median(ms)
        result["openid_verify_uncached_p99_ms"] = percentile(ms, 99)
    finally:
        await cached.close()
        await uncached.close()
    result["ucan_vs_openid_cached_ratio"] = (
        result["ucan_verify_p50_us"] / result["openid_verify_cached_p50_us"]
    )
    result["ucan_vs_openid_uncached_ratio"] = (
        result["ucan_verify_p50_us"] / 1000 / result["openid_verify_uncached_p50_ms"]
    )

    print("2/2 MCP tool call: UCAN vs static bearer ...", flush=True)
    ctx = await setup_platform(hs, tmp / "data")
    name = f"bench-{uuid.uuid4().hex[:6]}"
    static = add_agent(agents_file(ctx.settings.data_dir), name, access="write", rooms=["*"])
    assert static is not None
    service = McpService(port=free_port())
    info = await service.start(ctx)
    url = str(info["url"])
    try:
        assert service.ucan is not None
        holder = Principal.generate()
        grant = service.ucan.grant_agent(name, holder.did, until=int(time.time()) + 3600)
        auth = InvocationAuth(holder, MCP_CALL, {"with": MCP_SERVER, "agent": name}, [grant])
        async with (
            create_mcp_http_client(auth=auth) as http_u,
            Client(streamable_http_client(url, http_client=http_u)) as mcp_u,
            create_mcp_http_client(headers={"Authorization": f"Bearer {static}"}) as http_b,
            Client(streamable_http_client(url, http_client=http_b)) as mcp_b,
        ):

            async def with_ucan(_i: int) -> None:
                res = await mcp_u.call_tool("list_rooms", {})
                assert not res.is_error, res.content

            async def with_bearer(_i: int) -> None:
                res = await mcp_b.call_tool("list_rooms", {})
                assert not res.is_error, res.content

            u, b = await interleaved(with_ucan, with_bearer, n_http, warmup=3)
        result["mcp_call_ucan_p50_ms"] = median(u)
        result["mcp_call_ucan_p99_ms"] = percentile(u, 99)
        result["mcp_call_bearer_p50_ms"] = median(b)
        result["mcp_call_bearer_p99_ms"] = percentile(b, 99)
        result["mcp_call_ucan_ratio"] = median(u) / median(b)
    finally:
        await service.stop()
    return result


async def _token(hs: TestHomeserver, user: Any) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{hs.base_url}/_matrix/client/v3/user/{user.user_id}/openid/request_token",
            json={},
            headers={"Authorization": f"Bearer {user.access_token}"},
        ) as r,
    ):
        return str((await r.json())["access_token"])


def main() -> None:
    ap = bench_args(__doc__, "300 verifications, 40 MCP calls each (< 60 s)")
    a = ap.parse_args()
    configure_logging("WARNING")
    result = with_homeserver("auth", lambda hs, tmp: run(hs, tmp, a.quick, a.smoke))
    result.update(machine())
    result["mode"] = "smoke" if a.smoke else "quick" if a.quick else "full"
    emit(result)


if __name__ == "__main__":
    main()
