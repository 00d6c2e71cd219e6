"""Collaborative documents over MCP (HTTP, the official client, the real Synapse): an agent
reads the document a user's device wrote, edits it (the edit merges with the user's
concurrent one), and is refused without write access or outside its rooms."""

from __future__ import annotations

from pathlib import Path

from datarooms import DataroomsClient
from datarooms.services.mcp import add_agent
from datarooms.testing import TestHomeserver
from tests._mcp import (
    agent_mxid,
    agent_name,
    agents_path,
    audit_lines,
    error,
    http_client,
    ok,
    platform_for,
    trust_operators,
)
from tests._wait import until


async def test_agent_reads_and_edits_a_document(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, service, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    path = agents_path(ctx)
    writer, reader = agent_name("docw"), agent_name("docr")
    tok = {
        writer: add_agent(path, writer, access="write", room_kinds=["collaboration"]),
        reader: add_agent(path, reader, access="read", room_kinds=["collaboration"]),
    }
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    trust_operators(path, alice.user_id)
    _, url = await service(ctx)
    room = (await alice.rooms.create("collaboration", name="runbook")).room_id
    other = (await alice.rooms.create("project", name="elsewhere")).room_id
    for agent in (writer, reader):
        await alice.rooms.grant(room, agent_mxid(agent, homeserver), "write")
    async with http_client(url, tok[writer]) as mcp:
        ok(await mcp.call_tool("join_room", {"room": room}))
    async with http_client(url, tok[reader]) as mcp:
        ok(await mcp.call_tool("join_room", {"room": room}))
    await alice.sync_once()
    doc = await alice.docs.open(room, batch_ms=0)
    doc.text("body").insert(0, "Step 1: check the pump.")
    doc.map("fields")["status"] = "draft"
    await doc.flush()

    async with http_client(url, tok[writer]) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert tools["read_document"].annotations.read_only_hint is True  # type: ignore[union-attr]
        got = ok(await mcp.call_tool("read_document", {"room": room}))
        assert got["content"] == {"body": "Step 1: check the pump.", "fields": {"status": "draft"}}
        # Alice edits the map while the agent edits the text and the map: all survive.
        doc.map("fields")["status"] = "review"
        await doc.flush()
        ok(
            await mcp.call_tool(
                "edit_document",
                {"room": room, "path": "body", "value": "Step 1: check the pump. Step 2: log it."},
            )
        )
        ok(
            await mcp.call_tool(
                "edit_document", {"room": room, "path": "fields/owner", "value": "agent"}
            )
        )
        bad = error(
            await mcp.call_tool("edit_document", {"room": room, "path": "body", "value": 5})
        )
        assert "string" in bad
        denied = error(await mcp.call_tool("read_document", {"room": other}))
        assert "DR_CAPABILITY" in denied or "capability" in denied

    await until(lambda: doc.to_json().get("fields", {}).get("owner") == "agent", what="agent edit")
    assert doc.to_json() == {
        "body": "Step 1: check the pump. Step 2: log it.",
        "fields": {"status": "review", "owner": "agent"},
    }

    async with http_client(url, tok[reader]) as mcp:
        assert "edit_document" not in {t.name for t in (await mcp.list_tools()).tools}
        refused = error(
            await mcp.call_tool("edit_document", {"room": room, "path": "body", "value": "x"})
        )
        assert "access:write" in refused
        read = ok(await mcp.call_tool("read_document", {"room": room}))
        assert read["content"]["fields"]["owner"] == "agent"
    assert any(line.get("tool") == "edit_document" for line in audit_lines(ctx))
