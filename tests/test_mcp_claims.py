"""MCP: an agent may list and verify claims with read access; issuing one signs with the
account's key, so it is a capability granted by name only, never by `access = "write"`."""

from __future__ import annotations

from pathlib import Path

from datarooms import DataroomsClient
from datarooms.services.mcp import add_agent
from datarooms.testing import TestHomeserver
from tests._mcp import agent_mxid, agent_name, agents_path, error, http_client, ok, platform_for


async def test_claim_tools_read_verify_and_explicit_issue(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, service, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    reader, writer, issuer = agent_name("cr"), agent_name("cw"), agent_name("ci")
    paths = agents_path(ctx)
    reader_token = add_agent(paths, reader, access="read", rooms=["*"])
    writer_token = add_agent(paths, writer, access="write", rooms=["*"])
    issuer_token = add_agent(
        paths,
        issuer,
        access="write",
        rooms=["*"],
        tools=["join_room", "issue_claim", "verify_claim"],
    )
    _, url = await service(ctx)

    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    room = (await alice.rooms.create("verification", name="claims")).room_id
    for name in (reader, writer, issuer):
        await alice.rooms.grant(room, agent_mxid(name, homeserver), "write")
    photo = await alice.files.put(room, b"site photo", filename="site.jpg")
    saved = await alice.claims.issue(
        room, "did:ixo:entity:mcp", "SiteVisited", {"ok": True}, evidence=[photo]
    )

    async with http_client(url, reader_token) as mcp:
        ok(await mcp.call_tool("join_room", {"room": room}))
        listed = ok(await mcp.call_tool("list_claims", {"room": room}))
        assert [c["cid"] for c in listed["claims"]] == [saved.cid]
        verdict = ok(await mcp.call_tool("verify_claim", {"room": room, "cid": saved.cid}))
        assert verdict["ok"] is True and verdict["issuer"] == alice.claims.issuer
        missing = ok(await mcp.call_tool("verify_claim", {"room": room, "cid": "bagaaieranope"}))
        assert missing["ok"] is False and missing["reason"] == "not_found"
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert {"list_claims", "verify_claim"} <= names and "issue_claim" not in names

    args = {
        "room": room,
        "subject_did": "did:ixo:entity:mcp",
        "claim_type": "AgentChecked",
        "data": {"score": 3},
        "evidence_files": [photo.event_id],
    }
    async with http_client(url, writer_token) as mcp:
        ok(await mcp.call_tool("join_room", {"room": room}))
        assert "issue_claim" not in {t.name for t in (await mcp.list_tools()).tools}
        msg = error(await mcp.call_tool("issue_claim", args))
        assert "tool:issue_claim" in msg and "explicitly" in msg

    async with http_client(url, issuer_token) as mcp:
        ok(await mcp.call_tool("join_room", {"room": room}))
        issued = ok(await mcp.call_tool("issue_claim", args))
        assert issued["issuer_did"].startswith("did:key:z6Mk")
        assert issued["evidence"][0]["event"] == photo.event_id
        verdict = ok(await mcp.call_tool("verify_claim", {"room": room, "cid": issued["cid"]}))
        assert verdict["ok"] is True
    await alice.sync_once()
    assert (await alice.claims.verify(room, issued["cid"])).ok
