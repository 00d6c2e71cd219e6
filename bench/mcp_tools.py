"""MCP server: tool-call latency over streamable HTTP vs the same SDK work done directly.

Run from the repo root: python bench/mcp_tools.py [--quick | --smoke]

A real embedded Synapse; the MCP service (McpService, as `datarooms up` runs it) in this
process with one agent (write access), its own E2EE device and sync loop; a user who
owns an encrypted project room with 40 messages and records in it; the official `mcp`
client over HTTP with the agent's bearer token (one session, sequential calls).

1. read recent: the ``read_messages`` tool (limit 20) vs
   - ``direct_read_recent``: the SDK's ``client.messages.recent(room, 20)`` on a member's
     device without a background sync loop (the SDK path a script would use);
   - ``direct_read_timeline``: what the tool runs, on the agent's own device, without MCP
     (so read_recent - direct_read_timeline is the MCP + HTTP + JSON overhead).
2. put record: the ``put_record`` tool vs ``client.records.put`` on the agent's own device
   (same device, room and sync loop), interleaved, alternating which goes first.
3. get record: the ``get_record`` tool vs ``client.records.get`` (local index) on the
   agent's device: the pure overhead of a tool call.
4. (full run only) the SDK's ``messages.recent`` on a device whose background sync loop
   runs: it waits for the loop's next long-poll round (up to 30 s when the account is
   quiet), which is why the tool does not call it. 3 samples.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

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
from datarooms._logging import configure_logging
from datarooms.account import write_credentials
from datarooms.config import load_settings
from datarooms.homeserver.embedded import free_port
from datarooms.services.mcp import McpService, add_agent
from datarooms.services.mcp.config import agents_file
from datarooms.services.mcp.reading import read_timeline
from datarooms.services.platform import PlatformContext
from datarooms.testing import TestHomeserver

Call = Callable[[int], Awaitable[Any]]


def ms(seconds: float) -> float:
    return seconds * 1000


def stats(name: str, values_ms: list[float]) -> dict[str, float]:
    return {f"{name}_p50_ms": median(values_ms), f"{name}_p99_ms": percentile(values_ms, 99)}


async def setup_platform(hs: TestHomeserver, data_dir: Path) -> PlatformContext:
    data_dir.mkdir(parents=True)
    (data_dir / "datarooms.toml").write_text(
        f'[homeserver]\nmode = "external"\nurl = "{hs.base_url}"\n'
        f'registration_shared_secret = "{hs.synapse.registration_shared_secret}"\n'
    )
    settings = load_settings(data_dir=data_dir, env={})
    svc = await hs.new_user("svc", admin=True)
    creds = Credentials(hs.base_url, svc.user_id, svc.access_token, svc.device_id, svc.password)
    write_credentials(settings.credentials_file, creds)
    return PlatformContext(settings, hs.base_url, creds, None)


def check(result: Any) -> dict[str, Any]:
    if result.is_error:
        raise SystemExit(f"tool call failed: {result.content}")
    return dict(result.structured_content or {})


async def run(hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool = False) -> dict[str, Any]:
    n = 4 if smoke else 40 if quick else 300
    warmup = 1 if smoke else 5
    ctx = await setup_platform(hs, tmp / "data")
    name = f"bench-{uuid.uuid4().hex[:6]}"
    token = add_agent(agents_file(ctx.settings.data_dir), name, access="write", rooms=["*"])
    assert token is not None
    service = McpService(port=free_port())
    info = await service.start(ctx)
    url = str(info["url"])
    agent = service.runtimes[name].client
    owner_user = await hs.new_user("owner")
    owner = await DataroomsClient.open(
        Credentials(hs.base_url, owner_user.user_id, owner_user.access_token), tmp / "owner"
    )
    result: dict[str, Any] = {"n": n}
    try:
        room = (await owner.rooms.create("project", name="bench mcp")).room_id
        await owner.rooms.grant(room, agent.user_id, "write")
        await owner.sync_once()
        for i in range(40):
            if i % 2:
                await owner.messages.send(room, f"status update {i}")
            else:
                await owner.records.put(room, f"k{i % 5}", {"i": i})
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            create_mcp_http_client(headers=headers) as http,
            Client(streamable_http_client(url, http_client=http)) as mcp,
        ):
            check(await mcp.call_tool("join_room", {"room": room}))

            print("1/3 read recent (20 events) ...", flush=True)

            async def tool_read(_i: int) -> None:
                out = check(await mcp.call_tool("read_messages", {"room": room, "limit": 20}))
                assert len(out["events"]) == 20

            async def sdk_recent(_i: int) -> None:
                assert len(await owner.messages.recent(room, limit=20)) == 20

            async def agent_timeline(_i: int) -> None:
                events, _ = await read_timeline(agent, room, limit=20)
                assert len(events) == 20

            tool_reads, sdk_reads = await interleaved(tool_read, sdk_recent, n, warmup=warmup)
            _, timeline_reads = await interleaved(
                tool_read, agent_timeline, n // 2, warmup=min(2, warmup)
            )

            print("2/3 put record ...", flush=True)

            async def tool_put(i: int) -> None:
                check(
                    await mcp.call_tool(
                        "put_record",
                        {"room": room, "key": f"sensor-{i % 10}", "value": {"c": 20 + i % 7}},
                    )
                )

            async def sdk_put(i: int) -> None:
                await agent.records.put(room, f"sensor-{i % 10}", {"c": 20 + i % 7})

            tool_puts, sdk_puts = await interleaved(tool_put, sdk_put, n, warmup=warmup)

            print("3/3 get record (local index) ...", flush=True)

            async def tool_get(_i: int) -> None:
                check(await mcp.call_tool("get_record", {"room": room, "key": "sensor-1"}))

            async def sdk_get(_i: int) -> None:
                await agent.records.get(room, "sensor-1")

            tool_gets, sdk_gets = await interleaved(tool_get, sdk_get, n, warmup=warmup)

        result.update(stats("read_recent", tool_reads))
        result.update(stats("direct_read_recent", sdk_reads))
        result.update(stats("direct_read_timeline", timeline_reads))
        result.update(stats("put_record", tool_puts))
        result.update(stats("direct_put_record", sdk_puts))
        result.update(stats("get_record", tool_gets))
        result.update(stats("direct_get_record", sdk_gets))
        result["read_recent_ratio"] = (
            result["read_recent_p50_ms"] / result["direct_read_recent_p50_ms"]
        )
        result["put_record_ratio"] = (
            result["put_record_p50_ms"] / result["direct_put_record_p50_ms"]
        )
        result["mcp_overhead_read_ms"] = (
            result["read_recent_p50_ms"] - result["direct_read_timeline_p50_ms"]
        )
        result["mcp_overhead_put_ms"] = (
            result["put_record_p50_ms"] - result["direct_put_record_p50_ms"]
        )
        result["mcp_overhead_get_ms"] = (
            result["get_record_p50_ms"] - result["direct_get_record_p50_ms"]
        )
        if not quick and not smoke:
            print("4/4 SDK messages.recent with the sync loop running (3 samples) ...", flush=True)
            waits = []
            for _ in range(3):
                await asyncio.sleep(1)
                t0 = time.perf_counter()
                await asyncio.wait_for(agent.messages.recent(room, limit=20), 40)
                waits.append(ms(time.perf_counter() - t0))
            result["sdk_recent_with_sync_loop_ms"] = [round(w) for w in waits]
        result["rss_mb"] = rss_mb(os.getpid())
    finally:
        await service.stop()
        await owner.close()
    return result


def main() -> None:
    ap = bench_args(__doc__, "fewer samples")
    args = ap.parse_args()
    configure_logging("WARNING")
    r = with_homeserver("mcp", lambda hs, tmp: run(hs, tmp, args.quick, args.smoke))
    print(
        f"read recent (20 events): MCP tool p50 {r['read_recent_p50_ms']:.2f} ms "
        f"(p99 {r['read_recent_p99_ms']:.2f}) vs SDK messages.recent p50 "
        f"{r['direct_read_recent_p50_ms']:.2f} ms (ratio {r['read_recent_ratio']:.2f}); "
        f"same read on the agent's device without MCP p50 "
        f"{r['direct_read_timeline_p50_ms']:.2f} ms (MCP overhead "
        f"{r['mcp_overhead_read_ms']:.2f} ms)"
    )
    print(
        f"put record: MCP tool p50 {r['put_record_p50_ms']:.2f} ms (p99 "
        f"{r['put_record_p99_ms']:.2f}) vs SDK records.put p50 "
        f"{r['direct_put_record_p50_ms']:.2f} ms (ratio {r['put_record_ratio']:.2f}, "
        f"overhead {r['mcp_overhead_put_ms']:.2f} ms)"
    )
    print(
        f"get record: MCP tool p50 {r['get_record_p50_ms']:.2f} ms vs SDK records.get p50 "
        f"{r['direct_get_record_p50_ms']:.3f} ms (overhead {r['mcp_overhead_get_ms']:.2f} ms)"
    )
    if "sdk_recent_with_sync_loop_ms" in r:
        print(
            f"SDK messages.recent with the sync loop running: "
            f"{r['sdk_recent_with_sync_loop_ms']} ms"
        )
    print(f"{r['n']} samples each; RSS {r['rss_mb']:.0f} MB; runtime {r['runtime_s']:.0f} s")
    emit({"bench": "mcp", "quick": args.quick, "smoke": args.smoke, **r, **machine()})


if __name__ == "__main__":
    main()
