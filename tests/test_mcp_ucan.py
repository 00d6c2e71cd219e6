"""MCP agents over UCANs: `datarooms agents grant` delegates acting as an agent; the
official `mcp` client calls tools with a fresh invocation per request; a sub-delegation
works; revoking (CLI, platform-wide) takes effect without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from datarooms.homeserver.embedded import free_port
from datarooms.sdk.ucan import (
    MCP_CALL,
    MCP_SERVER,
    Delegation,
    InvocationAuth,
    Principal,
    decode,
    decode_container,
    delegate,
)
from datarooms.services.mcp import McpService, add_agent
from datarooms.services.mcp.policy import TOOLS
from datarooms.services.platform import Platform
from datarooms.testing import TestHomeserver
from tests._cli import cli as run_cli
from tests._mcp import agent_name, agents_path, http_client, ok, platform_for

#: What an agent with write access sees: every tool but those granted by name only.
DEFAULT_TOOLS = {name for name, spec in TOOLS.items() if not spec.explicit}


def cli(data_dir: Path, *args: str) -> tuple[int, str, str]:
    res = run_cli(*args, data_dir=data_dir)
    return res.returncode, res.stdout, res.stderr


async def test_agent_scope_from_a_ucan_grant_and_revocation_without_restart(
    homeserver: TestHomeserver, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    data_dir = ctx.settings.data_dir
    name = agent_name("ucan")
    static = add_agent(agents_path(ctx), name, access="read", rooms=["*"])
    assert static
    platform = Platform(ctx.settings, services=[McpService(port=free_port())])
    started = await platform.start()
    try:
        url = started.services["mcp"]["url"]
        holder, helper = Principal.generate(), Principal.generate()
        code, out, err = cli(
            data_dir, "agents", "grant", name, "--to", holder.did, "--until", "+1h"
        )
        assert code == 0, err
        grant = decode(decode_container(out.strip())[0])
        assert isinstance(grant, Delegation) and grant.meta == {"agent": name}
        assert abs((grant.exp or 0) - (time.time() + 3600)) < 60
        # The holder narrows it onwards to a helper, for 10 minutes.
        sub = delegate(
            holder, helper.did, MCP_CALL, subject=grant.iss, expires=int(time.time()) + 600
        )

        async def tools(signer: Principal, proofs: list[Delegation]) -> set[str]:
            auth = InvocationAuth(signer, MCP_CALL, {"with": MCP_SERVER, "agent": name}, proofs)
            async with (
                create_mcp_http_client(auth=auth) as http,
                Client(streamable_http_client(url, http_client=http)) as mcp,
            ):
                listed = {t.name for t in (await mcp.list_tools()).tools}
                ok(await mcp.call_tool("list_rooms", {}))
                return listed

        read_tools = {n for n, spec in TOOLS.items() if spec.access == "read" and not spec.explicit}
        assert await tools(holder, [grant]) == read_tools
        assert await tools(helper, [grant, sub]) == read_tools

        # A replayed or foreign token is refused with a precise 401/403.
        auth = InvocationAuth(holder, MCP_CALL, {"with": MCP_SERVER, "agent": name}, [grant])
        token = auth.token()
        async with aiohttp.ClientSession() as s:
            body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            }
            async with s.post(url, json=body, headers=headers) as r:
                assert r.status != 401
            async with s.post(url, json=body, headers=headers) as r:
                assert r.status == 401 and (await r.json())["errcode"] == "DR_UCAN_REPLAYED"
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            other = InvocationAuth(holder, MCP_CALL, {"with": MCP_SERVER, "agent": "x"}, [grant])
            headers["Authorization"] = f"Bearer {other.token()}"
            async with s.post(url, json=body, headers=headers) as r:
                assert r.status == 403 and (await r.json())["errcode"] == "DR_UCAN_POLICY"

        # The operator revokes the grant: the running server refuses both chains at once.
        code, out, err = cli(data_dir, "agents", "revoke", str(grant.cid))
        assert code == 0, err
        async with aiohttp.ClientSession() as s:
            for signer, proofs in ((holder, [grant]), (helper, [grant, sub])):
                auth = InvocationAuth(signer, MCP_CALL, {"with": MCP_SERVER, "agent": name}, proofs)
                headers["Authorization"] = f"Bearer {auth.token()}"
                async with s.post(url, json=body, headers=headers) as r:
                    assert r.status == 403 and (await r.json())["errcode"] == "DR_UCAN_REVOKED"
        # The agent's static bearer token stays.
        async with http_client(url, static) as mcp:
            assert {t.name for t in (await mcp.list_tools()).tools} == read_tools

        # An agent added while the platform runs works at once: static token and UCAN.
        added = agent_name("added")
        token = add_agent(agents_path(ctx), added, access="write", rooms=["*"])
        assert token
        async with http_client(url, token) as mcp:
            assert {t.name for t in (await mcp.list_tools()).tools} == DEFAULT_TOOLS
            assert ok(await mcp.call_tool("list_rooms", {}))["rooms"] == []
        code, out, err = cli(
            data_dir, "agents", "grant", added, "--to", holder.did, "--until", "+5m"
        )
        assert code == 0, err
        new_grant = decode(decode_container(out.strip())[0])
        assert isinstance(new_grant, Delegation)
        auth = InvocationAuth(holder, MCP_CALL, {"with": MCP_SERVER, "agent": added}, [new_grant])
        async with (
            create_mcp_http_client(auth=auth) as http,
            Client(streamable_http_client(url, http_client=http)) as mcp,
        ):
            assert {t.name for t in (await mcp.list_tools()).tools} == DEFAULT_TOOLS
    finally:
        await platform.stop()


async def test_an_agents_scope_is_what_its_chain_proves(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    data_dir = ctx.settings.data_dir
    name = agent_name("narrow")
    static = add_agent(agents_path(ctx), name, access="write", rooms=["*"])
    assert static
    platform = Platform(ctx.settings, services=[McpService(port=free_port())])
    started = await platform.start()
    try:
        url = started.services["mcp"]["url"]
        alice = await open_client(await homeserver.new_user("alice"))
        rooms = []
        for label in ("one", "two"):
            room = (await alice.rooms.create("project", name=label)).room_id
            await alice.rooms.grant(room, f"@agent-{name}:{homeserver.server_name}", "write")
            rooms.append(room)
        async with http_client(url, static) as mcp:
            for room in rooms:
                ok(await mcp.call_tool("join_room", {"room": room}))
            listed = ok(await mcp.call_tool("list_rooms", {}))["rooms"]
            assert {r["room_id"] for r in listed} == set(rooms)

        holder, helper = Principal.generate(), Principal.generate()
        code, out, err = cli(
            data_dir, "agents", "grant", name, "--to", holder.did, "--until", "+1h",
            "--access", "read", "--room", rooms[0], "--room", rooms[1],
        )  # fmt: skip
        assert code == 0, err
        grant = decode(decode_container(out.strip())[0])
        assert isinstance(grant, Delegation)
        # The holder narrows it to room one for the helper.
        sub = delegate(
            holder,
            helper.did,
            MCP_CALL,
            subject=grant.iss,
            policy=[["all", ".rooms", ["==", ".", rooms[0]]]],
            expires=int(time.time()) + 600,
        )

        def auth(signer: Principal, proofs: list[Delegation], **stated: object) -> InvocationAuth:
            args = {"with": MCP_SERVER, "agent": name, **stated}
            return InvocationAuth(signer, MCP_CALL, args, proofs)

        read_tools = {n for n, spec in TOOLS.items() if spec.access == "read" and not spec.explicit}
        narrow = auth(helper, [grant, sub], access="read", rooms=[rooms[0]])
        async with (
            create_mcp_http_client(auth=narrow) as http,
            Client(streamable_http_client(url, http_client=http)) as mcp,
        ):
            assert {t.name for t in (await mcp.list_tools()).tools} == read_tools
            listed = ok(await mcp.call_tool("list_rooms", {}))["rooms"]
            assert [r["room_id"] for r in listed] == [rooms[0]]
            denied = await mcp.call_tool("put_record", {"room": rooms[0], "key": "k", "value": 1})
            assert denied.is_error and "access:write" in str(denied.content)
            other = await mcp.call_tool("read_messages", {"room": rooms[1]})
            assert other.is_error
        # Stating more than the chain allows is refused before any call.
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        async with aiohttp.ClientSession() as s:
            for stated in (
                {"access": "write", "rooms": [rooms[0]]},  # the grant says read
                {"access": "read", "rooms": [rooms[1]]},  # the helper's link says room one
                {"access": "read"},  # rooms unstated: the policies cannot hold
            ):
                token = auth(helper, [grant, sub], **stated).token()
                headers = {
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json, text/event-stream",
                }
                async with s.post(url, json=body, headers=headers) as r:
                    assert r.status == 403, stated
                    assert (await r.json())["errcode"] == "DR_UCAN_POLICY", stated
        # The static token keeps the agent's whole policy.
        async with http_client(url, static) as mcp:
            assert {t.name for t in (await mcp.list_tools()).tools} == DEFAULT_TOOLS
    finally:
        await platform.stop()
