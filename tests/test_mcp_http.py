"""The MCP server over streamable HTTP (McpService, as `datarooms up` runs it), driven by the
official `mcp` client, against the real Synapse: an agent reads what a user wrote and
writes what the user reads, all end-to-end encrypted; and is denied outside its
capabilities, before anything reaches the homeserver."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import EmbeddedResource, TextResourceContents

from datarooms import DataroomsClient
from datarooms.homeserver.embedded import free_port
from datarooms.services.mcp import McpService, add_agent, remove_agent, rotate_token
from datarooms.services.mcp.policy import TOOLS
from datarooms.services.mcp.server import timeline_uri, twin_uri
from datarooms.services.platform import Platform
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
    text,
    trust_operators,
)


@pytest.fixture
async def platforms():  # type: ignore[no-untyped-def]
    """Platforms a test started; stopped (services first) after it."""
    started: list[Platform] = []
    yield started
    for platform in started:
        await platform.stop()


async def test_agent_reads_and_writes_encrypted_data_over_http(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, platforms, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    name = agent_name("ops")
    alias = f"#mcp-{name}:{homeserver.server_name}"
    files = tmp_path / "agent-files"
    files.mkdir()
    token = add_agent(agents_path(ctx), name, access="write", rooms=[alias], files_dir=str(files))
    assert token
    # As `datarooms up` runs it: a platform service, started after the homeserver.
    platform = Platform(ctx.settings, services=[McpService(port=free_port())])
    started = await platform.start()
    platforms.append(platform)
    url = started.services["mcp"]["url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
    assert agent_mxid(name, homeserver) in started.services["mcp"]["agents"]

    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    room = (await alice.rooms.create("project", name="pumps", alias=f"mcp-{name}")).room_id
    await alice.rooms.grant(room, agent_mxid(name, homeserver), "write")
    await alice.sync_once()  # alice's device learns of the invitee: it gets the room key
    await alice.records.put(room, "temperature", {"c": 21.5})

    async with http_client(url, token) as mcp:
        listed = {t.name for t in (await mcp.list_tools()).tools}
        # Every tool but those granted by name only (issue_claim signs with the account's key).
        assert listed == {t for t, spec in TOOLS.items() if not spec.explicit}
        put_schema = next(t for t in (await mcp.list_tools()).tools if t.name == "put_record")
        assert set(put_schema.input_schema["required"]) == {"room", "key", "value"}

        assert ok(await mcp.call_tool("join_room", {"room": alias}))["room_id"] == room
        rooms = ok(await mcp.call_tool("list_rooms", {}))["rooms"]
        assert [r["room_id"] for r in rooms] == [room]
        assert rooms[0]["kind"] == "project" and rooms[0]["encrypted"] is True

        # The agent reads the user's encrypted record ...
        got = ok(await mcp.call_tool("get_record", {"room": alias, "key": "temperature"}))
        assert got["value"] == {"c": 21.5} and got["sender"] == alice.user_id
        # ... and writes one the user reads.
        put = ok(
            await mcp.call_tool(
                "put_record", {"room": room, "key": "status", "value": {"ok": True}}
            )
        )
        assert put["version"] == 1
        await alice.sync_once()
        mine = await alice.records.get(room, "status")
        assert mine.value == {"ok": True} and mine.sender == agent_mxid(name, homeserver)
        twin = ok(await mcp.call_tool("get_twin", {"room": room}))["state"]
        assert twin == {"temperature": {"c": 21.5}, "status": {"ok": True}}
        await alice.records.put(room, "temperature", {"c": 22.0})
        await alice.sync_once()
        # The agent's sync loop indexes alice's new version.
        for _ in range(100):
            hist = ok(await mcp.call_tool("record_history", {"room": room, "key": "temperature"}))
            if len(hist["versions"]) == 2:
                break
            await asyncio.sleep(0.1)
        assert [v["value"] for v in hist["versions"]] == [{"c": 21.5}, {"c": 22.0}]

        # Messages, both ways, encrypted; a live wait with a cursor.
        cursor = ok(await mcp.call_tool("wait_for_messages", {"timeout_seconds": 0}))["cursor"]
        sent = ok(
            await mcp.call_tool("send_message", {"room": room, "text": "hello from the agent"})
        )
        await alice.sync_once()
        recent = await alice.messages.recent(room, limit=5)
        by_id = {e.event_id: e for e in recent}
        assert by_id[sent["event_id"]].body == "hello from the agent"
        assert by_id[sent["event_id"]].encrypted
        asked = await alice.messages.send(room, "agent, what is the pressure?")
        waited = ok(
            await mcp.call_tool(
                "wait_for_messages", {"room": room, "after": cursor, "timeout_seconds": 30}
            )
        )
        assert [e["body"] for e in waited["events"] if e["type"] == "m.room.message"] == [
            "agent, what is the pressure?"
        ]
        assert waited["cursor"] != cursor and "missed" not in waited
        msg = error(await mcp.call_tool("wait_for_messages", {"after": "nonsense"}))
        assert "invalid cursor" in msg
        msgs = ok(await mcp.call_tool("read_messages", {"room": room, "limit": 5}))["events"]
        assert msgs[-1]["event_id"] == asked and msgs[-1]["encrypted"] is True
        ok(await mcp.call_tool("reply", {"room": room, "event_id": asked, "text": "2 bar"}))
        ok(await mcp.call_tool("react", {"room": room, "event_id": asked, "key": "👍"}))
        thread = ok(
            await mcp.call_tool(
                "send_message", {"room": room, "text": "details", "thread_root": asked}
            )
        )
        in_thread = ok(await mcp.call_tool("read_thread", {"room": room, "thread_root": asked}))
        assert [e["event_id"] for e in in_thread["events"]] == [asked, thread["event_id"]]
        window = ok(
            await mcp.call_tool(
                "read_messages", {"room": room, "since": msgs[-1]["time"], "limit": 50}
            )
        )["events"]
        assert window[0]["event_id"] == asked
        assert {e.get("reaction") for e in window} >= {"👍"}
        edit = ok(
            await mcp.call_tool(
                "edit_message",
                {"room": room, "event_id": sent["event_id"], "text": "hello (edited)"},
            )
        )
        gone = ok(
            await mcp.call_tool("redact_event", {"room": room, "event_id": thread["event_id"]})
        )
        await alice.sync_once()
        seen = {e.event_id: e for e in await alice.messages.recent(room, limit=10)}
        assert seen[edit["event_id"]].content["m.new_content"]["body"] == "hello (edited)"
        assert seen[gone["event_id"]].type == "m.room.redaction"

        info = ok(await mcp.call_tool("room_info", {"room": alias}))
        assert info["name"] == "pumps" and info["my_access"] == "write"
        people = ok(await mcp.call_tool("room_members", {"room": room}))["members"]
        assert {(m["user_id"], m["access"]) for m in people} == {
            (alice.user_id, "admin"),
            (agent_mxid(name, homeserver), "write"),
        }
        # Its rooms are listed by alias only: a new room would be outside them.
        msg = error(await mcp.call_tool("create_data_room", {"kind": "device"}))
        assert "room_kind:device" in msg

        # Files: upload from the allowed directory; download inline and to a path.
        (files / "report.txt").write_bytes(b"pump report\n" * 100)
        up = ok(await mcp.call_tool("upload_file", {"room": room, "path": "report.txt"}))
        assert await alice.files.read(room, up["event_id"]) == b"pump report\n" * 100
        blob = b"\x00\x01 data for the agent"
        ref = await alice.files.put(room, blob, filename="data.bin")
        inline = await mcp.call_tool("download_file", {"room": room, "event_id": ref.event_id})
        assert not inline.is_error, text(inline)
        res = next(c for c in inline.content if isinstance(c, EmbeddedResource)).resource
        assert base64.b64decode(res.blob) == blob  # type: ignore[union-attr]
        saved = await mcp.call_tool(
            "download_file", {"room": room, "event_id": ref.event_id, "save_as": "in/data.bin"}
        )
        assert not saved.is_error, text(saved)
        assert (files / "in" / "data.bin").read_bytes() == blob

        # Resources: the agent's rooms, a twin, a timeline.
        uris = {str(r.uri) for r in (await mcp.list_resources()).resources}
        assert {"datarooms://rooms", twin_uri(room), timeline_uri(room)} <= uris
        twin_res = (await mcp.read_resource(twin_uri(room))).contents[0]
        assert isinstance(twin_res, TextResourceContents)
        assert json.loads(twin_res.text)["state"]["status"] == {"ok": True}
        tl = (await mcp.read_resource(timeline_uri(room))).contents[0]
        assert isinstance(tl, TextResourceContents)
        assert any(e["event_id"] == asked for e in json.loads(tl.text)["events"])

    records = [r for r in audit_lines(ctx) if r.get("agent") == name]
    assert {r["tool"] for r in records} >= {"put_record", "get_record", "send_message"}
    assert [r["capability"] for r in records if r["decision"] == "denied"] == ["room_kind:device"]
    assert any(r["room"] == room and r["tool"] == "put_record" for r in records)
    log_text = (ctx.settings.data_dir / "logs" / "mcp-audit.jsonl").read_text()
    for secret in ("hello from the agent", "pressure", "pump report", "data.bin", token):
        assert secret not in log_text


async def test_each_kind_of_denial_never_reaches_the_homeserver(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, service, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    path = agents_path(ctx)
    reader, limited, nofiles, jailed = (agent_name(p) for p in ("rd", "lim", "nof", "jail"))
    (tmp_path / "jail").mkdir()
    tok = {
        reader: add_agent(path, reader, access="read", room_kinds=["device"]),
        limited: add_agent(
            path, limited, access="write", rooms=["*"], tools=["get_record", "join_room"]
        ),
        nofiles: add_agent(path, nofiles, access="write", rooms=["*"]),
        jailed: add_agent(
            path, jailed, access="write", rooms=["*"], files_dir=str(tmp_path / "jail")
        ),
    }
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    trust_operators(path, alice.user_id)  # her rooms' kinds count for the agents
    svc, url = await service(ctx)

    device = (await alice.rooms.create("device", name="sensor")).room_id
    project = (await alice.rooms.create("project", name="plans")).room_id
    for agent in (reader, limited, nofiles, jailed):
        await alice.rooms.grant(device, agent_mxid(agent, homeserver), "write")
    await alice.rooms.grant(project, agent_mxid(reader, homeserver), "read")
    await alice.sync_once()  # alice's device learns of the invitees: they get the room key
    await alice.records.put(device, "level", 3)

    async def timeline() -> list[str]:  # what members wrote (joins aside)
        await alice.sync_once()
        return [
            e.event_id for e in await alice.messages.recent(device, limit=50) if e.state_key is None
        ]

    before = await timeline()

    async with http_client(url, tok[reader]) as mcp:
        ok(await mcp.call_tool("join_room", {"room": device}))
        assert ok(await mcp.call_tool("get_record", {"room": device, "key": "level"}))["value"] == 3
        # read access: no write tools listed, and calling one is denied by name
        listed = {t.name for t in (await mcp.list_tools()).tools}
        assert "put_record" not in listed and "get_record" in listed
        msg = error(
            await mcp.call_tool("put_record", {"room": device, "key": "level", "value": 99})
        )
        assert "DR_CAPABILITY" in msg and "access:write" in msg
        # a room outside its kinds: denied by room id, alias, and on join
        msg = error(await mcp.call_tool("get_record", {"room": project, "key": "x"}))
        assert f"room:{project}" in msg and "kinds device" in msg
        msg = error(await mcp.call_tool("read_messages", {"room": "#nowhere:localhost"}))
        assert "room:#nowhere:localhost" in msg
        msg = error(await mcp.call_tool("join_room", {"room": project}))
        assert f"room:{project}" in msg and "a project room" in msg
        await alice.sync_once()
        assert agent_mxid(reader, homeserver) not in alice.nio.rooms[project].users  # it left
        # resources follow the same rules
        with pytest.raises(Exception, match="room:"):
            await mcp.read_resource(twin_uri(project))

    async with http_client(url, tok[limited]) as mcp:
        assert {t.name for t in (await mcp.list_tools()).tools} == {"get_record", "join_room"}
        ok(await mcp.call_tool("join_room", {"room": device}))
        msg = error(await mcp.call_tool("send_message", {"room": device, "text": "hi"}))
        assert "tool:send_message" in msg and "tools list" in msg

    async with http_client(url, tok[nofiles]) as mcp:
        ok(await mcp.call_tool("join_room", {"room": device}))
        msg = error(await mcp.call_tool("upload_file", {"room": device, "path": "a.txt"}))
        assert "files_dir" in msg and "none is configured" in msg
        # Bad arguments: clear errors, and the server keeps serving.
        msg = error(await mcp.call_tool("put_record", {"room": device, "value": 1}))
        assert "DR_INVALID" in msg and "key is required" in msg
        msg = error(await mcp.call_tool("read_messages", {"room": device, "limit": "lots"}))
        assert "limit: Input should be a valid integer" in msg
        msg = error(await mcp.call_tool("get_record", {"room": 42, "key": "level"}))
        assert "room: Input should be a valid string" in msg
        msg = error(await mcp.call_tool("get_record", {"room": "level", "key": "level"}))
        assert "room must be a room id" in msg
        msg = error(await mcp.call_tool("get_record", {"room": "!nope:localhost", "key": "k"}))
        assert "DR_NOT_FOUND" in msg and "is not in room !nope:localhost" in msg
        msg = error(
            await mcp.call_tool("get_record", {"rom": device, "room": device, "key": "level"})
        )
        assert "unknown argument(s) rom" in msg
        msg = error(await mcp.call_tool("no_such_tool", {}))
        assert "Unknown tool" in msg
        msg = error(await mcp.call_tool("get_record", {"room": device, "key": "missing"}))
        assert "DR_NOT_FOUND" in msg
        assert ok(await mcp.call_tool("get_record", {"room": device, "key": "level"}))["value"] == 3

        # Rooms it creates (its scope is "*"): a data room and a conversation.
        made = ok(await mcp.call_tool("create_data_room", {"kind": "device", "name": "probe"}))
        assert made["kind"] == "device" and made["encrypted"] is True, made
        ok(await mcp.call_tool("put_record", {"room": made["room_id"], "key": "k", "value": 1}))
        wire = ok(await mcp.call_tool("read_messages", {"room": made["room_id"]}))["events"]
        assert [(e["type"], e["encrypted"]) for e in wire] == [("io.datarooms.record", True)]
        # Keyed room state with IXO's semantics, in a room the agent created (it is admin).
        own = ok(await mcp.call_tool("create_room", {"name": "agent notes"}))["room_id"]
        ok(
            await mcp.call_tool(
                "invite_user", {"room": own, "user_id": alice.user_id, "access": "read"}
            )
        )
        ok(
            await mcp.call_tool(
                "set_state", {"room": own, "key": "config", "value": {"threshold": 5}}
            )
        )
        ok(
            await mcp.call_tool(
                "set_state", {"room": own, "key": "config", "path": "unit", "value": "bar"}
            )
        )
        got = ok(await mcp.call_tool("get_state", {"room": own, "key": "config"}))["value"]
        assert got == {"threshold": 5, "unit": "bar"}
        assert (
            ok(
                await mcp.call_tool(
                    "get_state", {"room": own, "key": "config", "path": "threshold"}
                )
            )["value"]
            == 5
        )
        # An ACL on the key (as IXO's state bot keeps) is honoured for reads and writes.
        agent_client = svc.runtimes[nofiles].client
        await agent_client.nio.room_put_state(
            own,
            "ixo.room.state.acl",
            {"read": [alice.user_id], "write": [alice.user_id]},
            "config",
        )
        for _ in range(100):
            if agent_client.index.state(own, "ixo.room.state.acl", "config"):
                break
            await asyncio.sleep(0.1)
        # The rules are the SDK's, as the state bot applies them: the agent (room admin)
        # is in neither list, so it may not read; it still writes with its power.
        assert "acl:read:config" in error(
            await mcp.call_tool("get_state", {"room": own, "key": "config"})
        )
        ok(
            await mcp.call_tool(
                "set_state", {"room": own, "key": "config", "value": {"threshold": 0}}
            )
        )
        # In alice's device room only admins may set state: Matrix refuses, clearly.
        msg = error(
            await mcp.call_tool("set_state", {"room": device, "key": "k", "value": {"a": 1}})
        )
        assert "DR_FORBIDDEN" in msg
        assert ok(await mcp.call_tool("leave_room", {"room": made["room_id"]}))["left"]

    async with http_client(url, tok[jailed]) as mcp:
        ok(await mcp.call_tool("join_room", {"room": device}))
        msg = error(
            await mcp.call_tool("upload_file", {"room": device, "path": "../../etc/passwd"})
        )
        assert "files_dir" in msg and "outside" in msg
        msg = error(
            await mcp.call_tool(
                "download_file", {"room": device, "event_id": before[-1], "save_as": "/etc/x"}
            )
        )
        assert "files_dir" in msg and "outside" in msg

    # No bearer token, or a wrong one: 401 in the Matrix error style.
    async with create_mcp_http_client() as raw:
        resp = await raw.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert resp.status_code == 401 and resp.json()["errcode"] == "M_MISSING_TOKEN"
        resp = await raw.post(url, json={}, headers={"Authorization": "Bearer drmcp_wrong"})
        assert resp.status_code == 401 and resp.json()["errcode"] == "M_UNKNOWN_TOKEN"

    # Nothing denied reached the room: same last event for the user, no new records.
    assert await timeline() == before
    assert alice.index.count(device) == 1
    assert svc.runtimes[reader].client.index.count(device) == 1

    denied = [r for r in audit_lines(ctx) if r.get("decision") == "denied"]
    caps = {(r["agent"], r["capability"]) for r in denied}
    assert (reader, "access:write") in caps
    assert (reader, f"room:{project}") in caps
    assert (limited, "tool:send_message") in caps
    assert (nofiles, "files_dir") in caps and (jailed, "files_dir") in caps
    assert ("-", "bearer_token") in caps
    assert all(r["outcome"] == "error" for r in denied)

    # Token rotation and removal apply without a restart.
    new = rotate_token(path, limited)
    remove_agent(path, nofiles)

    async def refused(token: str) -> bool:
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as raw:
            return (await raw.post(url, json={})).status_code == 401

    for _ in range(100):  # the file is re-read at most once a second: wait for that
        if await refused(tok[limited]):
            break
        await asyncio.sleep(0.05)
    assert await refused(tok[limited])
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {tok[nofiles]}"}) as raw:
        assert (await raw.post(url, json={})).status_code == 401
    async with http_client(url, new) as mcp:
        assert ok(await mcp.call_tool("get_record", {"room": device, "key": "level"}))["value"] == 3
