"""The MCP server over stdio, as an MCP client (Claude Desktop, an IDE) starts it:
`python -m datarooms.mcpserver --agent NAME` (the code path of `datarooms mcp`), driven by
the official `mcp` client against the real Synapse."""

from __future__ import annotations

import sys
from pathlib import Path

from mcp import Client, StdioServerParameters

from datarooms import DataroomsClient
from datarooms.services.mcp import add_agent
from datarooms.testing import TestHomeserver
from tests._mcp import (
    agent_mxid,
    agent_name,
    agents_path,
    audit_lines,
    error,
    ok,
    platform_for,
    trust_operators,
)

REPO = Path(__file__).resolve().parent.parent


async def test_agent_over_stdio_reads_writes_and_is_denied(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    name = agent_name("stdio")
    add_agent(agents_path(ctx), name, access="write", room_kinds=["project"], with_token=False)
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    trust_operators(agents_path(ctx), alice.user_id)  # her rooms' kinds count for the agent
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "datarooms.mcpserver",  # the shim users' MCP configs name
            "--data-dir",
            str(ctx.settings.data_dir),
            "--agent",
            name,
        ],
        cwd=str(REPO),
    )
    async with Client(params) as mcp:
        # The server registered the agent's account and opened its device on start.
        project = (await alice.rooms.create("project", name="plans")).room_id
        device = (await alice.rooms.create("device", name="sensor")).room_id
        for room in (project, device):
            await alice.rooms.grant(room, agent_mxid(name, homeserver), "write")
        await alice.sync_once()
        await alice.records.put(project, "budget", {"eur": 1200})

        assert ok(await mcp.call_tool("join_room", {"room": project}))["room_id"] == project
        got = ok(await mcp.call_tool("get_record", {"room": project, "key": "budget"}))
        assert got["value"] == {"eur": 1200}
        ok(await mcp.call_tool("put_record", {"room": project, "key": "approved", "value": True}))
        await alice.sync_once()
        rec = await alice.records.get(project, "approved")
        assert rec.value is True and rec.sender == agent_mxid(name, homeserver)

        msg = error(await mcp.call_tool("put_record", {"room": device, "key": "x", "value": 1}))
        assert f"room:{device}" in msg and "kinds project" in msg
        msg = error(await mcp.call_tool("put_record", {"room": project}))
        assert "key is required" in msg and "value is required" in msg
        # still serving
        assert ok(await mcp.call_tool("get_twin", {"room": project}))["state"] == {
            "budget": {"eur": 1200},
            "approved": True,
        }
    await alice.sync_once()
    assert alice.index.count(device) == 0

    records = [r for r in audit_lines(ctx) if r.get("agent") == name]
    assert all(r["transport"] == "stdio" for r in records)
    denied = [r for r in records if r["decision"] == "denied"]
    assert [(r["tool"], r["capability"], r["room"]) for r in denied] == [
        ("put_record", f"room:{device}", device)
    ]
