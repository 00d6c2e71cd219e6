"""An agent reads an ACL-guarded state key by no route, and a malformed ACL grants nothing
(issue 11, item 8).

The attacks: ``read_messages(include_state=true)`` returned the ``ixo.room.state`` events
that ``get_state`` refused; and an ACL whose lists were malformed let the agent through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datarooms import DataroomsClient
from datarooms.services.mcp import add_agent
from datarooms.testing import TestHomeserver
from tests._mcp import agent_mxid, agent_name, agents_path, error, http_client, ok, platform_for

STATE, ACL = "ixo.room.state", "ixo.room.state.acl"


async def put_state(client: DataroomsClient, room: str, etype: str, key: str, content: Any) -> None:
    async with client.http() as http:
        await http.request(
            "PUT", f"/_matrix/client/v3/rooms/{room}/state/{etype}/{key}", json=content
        )


async def test_acl_guarded_state_stays_hidden_and_malformed_acls_fail_closed(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, service, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    name = agent_name("acl")
    token = add_agent(agents_path(ctx), name, access="read", rooms=["*"])
    _, url = await service(ctx)
    agent = agent_mxid(name, homeserver)

    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    room = (await alice.rooms.create("project", name="acl")).room_id
    await alice.rooms.grant(room, agent, "read")
    pin = "pin-8231"
    await put_state(alice, room, STATE, "locked", {"pin": pin})
    await put_state(alice, room, ACL, "locked", {"read": [alice.user_id], "write": []})
    # Malformed ACLs: lists that are not lists of user ids, even ones naming the agent.
    await put_state(alice, room, STATE, "odd", {"v": "odd-value"})
    await put_state(alice, room, ACL, "odd", {"read": agent, "write": [agent]})
    await put_state(alice, room, STATE, "mixed", {"v": "mixed-value"})
    await put_state(alice, room, ACL, "mixed", {"read": [agent, 7], "write": []})
    # A well-formed ACL naming the agent: readable (the control).
    await put_state(alice, room, STATE, "shared", {"v": "shared-value"})
    await put_state(alice, room, ACL, "shared", {"read": [agent], "write": []})

    async with http_client(url, token) as mcp:
        ok(await mcp.call_tool("join_room", {"room": room}))
        for key in ("locked", "odd", "mixed"):
            msg = error(await mcp.call_tool("get_state", {"room": room, "key": key}))
            assert f"acl:read:{key}" in msg, msg
        got = ok(await mcp.call_tool("get_state", {"room": room, "key": "shared"}))
        assert got["value"] == {"v": "shared-value"}

        page = ok(
            await mcp.call_tool(
                "read_messages", {"room": room, "include_state": True, "limit": 100}
            )
        )
        text = json.dumps(page)
        for hidden in (pin, "odd-value", "mixed-value"):
            assert hidden not in text
        withheld = {e["state_key"] for e in page["events"] if "withheld" in e}
        assert {"locked", "odd", "mixed"} <= withheld and "shared" not in withheld
        assert "shared-value" in text  # state the agent may read is still shown
