"""The SDK's keyed state (``client.state``) against the real homeserver: JSON Pointer
reads and writes, ACLs, secure values, and one set of rules for every interface."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from datarooms import AccessDeniedError, DataroomsClient, NotFoundError
from datarooms.sdk.state import ACL_EVENT, STATE_EVENT, Acl, BadPathError, StateAccessError
from datarooms.services.mcp.config import McpSettings
from datarooms.services.mcp.policy import AgentPolicy, CapabilityDenied
from datarooms.services.mcp.runtime import AgentRuntime
from datarooms.services.mcp.tools import AgentTools
from datarooms.services.statebot import StateBotClient
from datarooms.testing import TestHomeserver
from tests.test_statebot import bot_room, raw_state, start_bot

OpenClient = Callable[..., Awaitable[DataroomsClient]]


async def _room_with(
    owner: DataroomsClient, *members: tuple[DataroomsClient, str], kind: str = "device"
) -> str:
    """``owner`` creates a data room; ``members`` are granted and have joined."""
    room = (await owner.rooms.create(kind, name="state test")).room_id
    for member, access in members:
        await owner.rooms.grant(room, member.user_id, access)  # type: ignore[arg-type]
        await member.sync_once()
        await member.rooms.join(room)
    await owner.sync_once()
    return room


async def _synced(client: DataroomsClient, room: str, etype: str, key: str) -> None:
    """Sync ``client`` until its index holds the state event (another device wrote it)."""
    for _ in range(50):
        if client.index.state(room, etype, key) is not None:
            return
        await client.sync_once()
    raise AssertionError(f"{client.user_id} never saw {etype} {key!r}")


async def test_pointer_get_set_merge(homeserver: TestHomeserver, open_client: OpenClient) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    room = await _room_with(alice)
    st = alice.state

    res = await st.set(room, "config", {"unit": "C", "limits": {"min": 0, "max": 40}})
    assert res.event_id.startswith("$") and not res.secure
    await st.set(room, "config", 45, path="/limits/max")
    await st.merge(room, "config", {"limits": {"min": None}, "tags": ["a"]})
    await st.set(room, "config", "b", path="/tags/-")
    await st.set(room, "config", {"x": 1}, path="/odd~1name")
    expected = {"unit": "C", "limits": {"max": 45}, "tags": ["a", "b"], "odd/name": {"x": 1}}
    # IXO's event, as the homeserver holds it, and the same value read back.
    assert await raw_state(alice, room, STATE_EVENT, "config") == expected
    assert (await st.get(room, "config")).value == expected
    assert (await st.get(room, "config", "/limits/max")).value == 45
    assert (await st.get(room, "config", "/tags/1")).value == "b"
    assert (await st.get(room, "config", "/odd~1name/x")).value == 1

    # Replace puts the value as given, at a path or for the whole key.
    await st.set(room, "config", {"max": 50}, path="/limits", mode="replace")
    assert (await st.get(room, "config", "/limits")).value == {"max": 50}
    await st.set(room, "config", {"only": True}, mode="replace")
    assert await raw_state(alice, room, STATE_EVENT, "config") == {"only": True}

    # A write made outside the SDK (an IXO client) is merged into, not overwritten.
    async with alice.http() as http:
        await http.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/state/{STATE_EVENT}/config",
            json={"only": True, "by": "ixo"},
        )
    await st.merge(room, "config", {"more": 1})
    assert await raw_state(alice, room, STATE_EVENT, "config") == {
        "only": True,
        "by": "ixo",
        "more": 1,
    }

    with pytest.raises(NotFoundError, match="no value at /nope"):
        await st.get(room, "config", "/nope")
    with pytest.raises(NotFoundError, match="no state key"):
        await st.get(room, "missing")
    with pytest.raises(BadPathError):
        await st.get(room, "config", "no-slash")
    with pytest.raises(BadPathError, match="not an object or array"):
        await st.set(room, "config", 1, path="/only/deeper")


async def test_acl_refuses_non_writers_and_readers_off_the_list(
    homeserver: TestHomeserver, open_client: OpenClient
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    bob = await open_client(await homeserver.new_user("bob"))
    carol = await open_client(await homeserver.new_user("carol"))
    room = await _room_with(alice, (bob, "write"), (carol, "read"))
    await alice.state.set(room, "pump", {"rpm": 1200})
    await carol.sync_once()
    # No ACL: every member reads; power decides writes (data rooms ask admin for state).
    assert (await carol.state.get(room, "pump", "/rpm")).value == 1200
    with pytest.raises(StateAccessError, match="may not write 'pump'") as refused:
        await carol.state.set(room, "pump", {"rpm": 0})
    assert refused.value.action == "write" and not refused.value.by_acl
    with pytest.raises(StateAccessError, match="may not change ACLs"):
        await carol.state.set_acl(room, "pump", read=[carol.user_id], write=[carol.user_id])

    _, acl = await alice.state.set_acl(room, "pump", read=[alice.user_id], write=[bob.user_id])
    assert acl == Acl((alice.user_id,), (bob.user_id,))
    assert await raw_state(alice, room, ACL_EVENT, "pump") == {
        "read": [alice.user_id],
        "write": [bob.user_id],
    }
    for c in (bob, carol):
        await _synced(c, room, ACL_EVENT, "pump")

    # Carol is on neither list: refused both ways, by the ACL.
    with pytest.raises(StateAccessError, match="may not read 'pump'") as refused:
        await carol.state.get(room, "pump")
    assert refused.value.action == "read" and refused.value.by_acl
    with pytest.raises(StateAccessError, match="may not write 'pump'") as refused:
        await carol.state.set(room, "pump", {"rpm": 0})
    assert refused.value.by_acl
    info = {k.key: k for k in carol.state.keys(room)}["pump"]
    assert info.has_acl and not info.readable and not info.writable
    # Bob is in the write list: he may read what he writes into ...
    assert (await bob.state.get(room, "pump", "/rpm")).value == 1200
    # ... but his own account lacks the power Matrix asks for the event: a clear refusal
    # before anything is sent (a bot with power writes for him, as_user=bob).
    with pytest.raises(AccessDeniedError, match="write list is not enough"):
        await bob.state.set(room, "pump", {"rpm": 900})
    res = await alice.state.set(room, "pump", {"rpm": 900}, as_user=bob.user_id)
    assert (await raw_state(alice, room, STATE_EVENT, "pump"))["rpm"] == 900 and res.event_id
    # Acting for Carol, the same account is refused: the rules follow the actor.
    with pytest.raises(StateAccessError, match=f"{carol.user_id} may not write"):
        await alice.state.set(room, "pump", {"rpm": 1}, as_user=carol.user_id)
    # An outsider may do nothing.
    mallory = await open_client(await homeserver.new_user("mallory"))
    with pytest.raises(AccessDeniedError, match="not a joined member"):
        await alice.state.get(room, "pump", as_user=mallory.user_id)
    with pytest.raises(NotFoundError, match="unknown to"):
        await mallory.state.get(room, "pump")


async def test_secure_value_never_appears_in_clear_room_state(
    homeserver: TestHomeserver, open_client: OpenClient
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    bob = await open_client(await homeserver.new_user("bob"))
    room = await _room_with(alice, (bob, "read"))
    secret = "s3cret-" + uuid.uuid4().hex
    res = await alice.state.set(room, "creds", {"api_key": secret, "user": "pump-7"}, secure=True)
    assert res.secure and res.record_event_id
    content = await raw_state(alice, room, STATE_EVENT, "creds")
    assert content == {
        "io.datarooms.secure": {
            "v": 1,
            "record": "ixo.room.state/creds",
            "event_id": res.record_event_id,
            "algorithm": "m.megolm.v1.aes-sha2",
        }
    }
    # A merge keeps it secure; the owner and a member's device read it decrypted.
    again = await alice.state.set(room, "creds", "pump-8", path="/user")
    assert again.secure
    got = await alice.state.get(room, "creds")
    assert got.secure and got.value == {"api_key": secret, "user": "pump-8"}
    await _synced(bob, room, STATE_EVENT, "creds")
    for _ in range(20):
        await bob.sync_once()
        if bob.index.state(room, STATE_EVENT, "creds") == await raw_state(
            alice, room, STATE_EVENT, "creds"
        ):
            break
    assert (await bob.state.get(room, "creds", "/api_key")).value == secret
    assert {k.key: k.secure for k in bob.state.keys(room)} == {"creds": True}
    # Nothing in the clear: no state event and nothing in the homeserver's database.
    assert secret not in json.dumps(await raw_state(alice, room, STATE_EVENT, "creds"))
    db = homeserver.synapse.database_path
    for path in (db, db.with_name(db.name + "-wal")):
        if path.exists():
            assert secret.encode() not in path.read_bytes()
    # A clear value may not pose as a reference.
    with pytest.raises(Exception, match="reserved"):
        await alice.state.set(room, "fake", {"io.datarooms.secure": {"record": "x"}})


def _agent_tools(client: DataroomsClient, access: str) -> AgentTools:
    policy = AgentPolicy(name="state-test", access=access, rooms=frozenset({"*"}))  # type: ignore[arg-type]
    return AgentTools(AgentRuntime(client, policy, McpSettings(), transport="test"))


async def _outcome(call: Awaitable[Any]) -> str:
    """``allowed``, or ``refused`` for a refusal by the rules."""
    try:
        await call
    except AccessDeniedError:
        return "refused"
    return "allowed"


async def test_state_bot_and_mcp_give_the_same_answer(
    homeserver: TestHomeserver, open_client: OpenClient
) -> None:
    """An admin not on a key's ACL, and a writer not on it, through both interfaces.

    The rule (the state bot's, now the SDK's for every interface): an ACL'd key is read
    by its lists only, whatever the power; it is written by its write list, or with the
    power the room asks for ``ixo.room.state`` (admin in data rooms).
    """
    bot = await start_bot(homeserver, open_client)
    try:
        alice = await open_client(await homeserver.new_user("alice"))  # room admin
        dave = await open_client(await homeserver.new_user("dave"))  # write access
        admin_agent = await open_client(await homeserver.new_user("agent-admin"))
        writer_agent = await open_client(await homeserver.new_user("agent-writer"))
        bob = await open_client(await homeserver.new_user("bob"))
        room = await bot_room(
            alice,
            bot,
            (dave, "write"),
            (admin_agent, "admin"),
            (writer_agent, "write"),
            (bob, "read"),
        )
        async with (
            StateBotClient.for_client(bot.url, alice) as as_alice,
            StateBotClient.for_client(bot.url, dave) as as_dave,
        ):
            await as_alice.set(room, "config", {"threshold": 5})
            await as_alice.set_acl(room, "config", read=[bob.user_id], write=[bob.user_id])
            for c in (admin_agent, writer_agent):
                await _synced(c, room, ACL_EVENT, "config")
            mcp_admin, mcp_writer = (
                _agent_tools(admin_agent, "write"),
                _agent_tools(writer_agent, "write"),
            )

            answers = {
                "bot admin read": await _outcome(as_alice.get(room, "config")),
                "mcp admin read": await _outcome(mcp_admin.get_state(room, "config")),
                "bot admin write": await _outcome(as_alice.set(room, "config", {"t": 1})),
                "mcp admin write": await _outcome(
                    mcp_admin.set_state(room, "config", 2, path="/t")
                ),
                "bot writer write": await _outcome(as_dave.set(room, "config", {"t": 3})),
                "mcp writer write": await _outcome(
                    mcp_writer.set_state(room, "config", 4, path="t")
                ),
                "bot writer read": await _outcome(as_dave.get(room, "config")),
                "mcp writer read": await _outcome(mcp_writer.get_state(room, "config")),
            }
        assert answers == {
            "bot admin read": "refused",
            "mcp admin read": "refused",
            "bot admin write": "allowed",
            "mcp admin write": "allowed",
            "bot writer write": "refused",
            "mcp writer write": "refused",
            "bot writer read": "refused",
            "mcp writer read": "refused",
        }
        # The MCP reports an ACL refusal as the capability the agent lacks.
        with pytest.raises(CapabilityDenied, match="acl:write:config"):
            await mcp_writer.set_state(room, "config", {"t": 5})
        with pytest.raises(CapabilityDenied, match="acl:read:config"):
            await mcp_admin.get_state(room, "config")
        # Both writes that were allowed landed, in the one value.
        value = await raw_state(alice, room, STATE_EVENT, "config")
        assert value["t"] == 2 and value["threshold"] == 5
    finally:
        await bot.stop()


async def test_state_bot_accepts_an_invite_by_itself(
    homeserver: TestHomeserver, open_client: OpenClient
) -> None:
    """With auto_join on, the bot joins a room it is invited to from a trusted server."""
    bot = await start_bot(homeserver, open_client)
    try:
        alice = await open_client(await homeserver.new_user("alice"))
        room = (await alice.rooms.create("device", name="auto join")).room_id
        await alice.rooms.grant(room, bot.client.user_id, "admin")
        for _ in range(100):
            if bot.client.rooms.is_joined(room):
                break
            await asyncio.sleep(0.1)
        assert bot.client.rooms.is_joined(room)
        async with StateBotClient.for_client(bot.url, alice) as api:
            await api.set(room, "k", {"v": 1})
            assert await api.get(room, "k", "/v") == 1
    finally:
        await bot.stop()
