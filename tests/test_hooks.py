"""The SDK's typed sync hooks, against the real Synapse.

A subscriber sees its own invite, join and kick, other users' joins, room state
(already in the index when an in-transaction hook runs), decrypted timeline
events and to-device events (decrypted room keys, without their secret, and
cleartext ones). A failing in-transaction hook rolls the batch back: the sync
position does not move, and the retried batch loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.sdk.hooks import (
    HookError,
    Hooks,
    MembershipChanged,
    Phase,
    RoomEventReceived,
    StateChanged,
    ToDeviceReceived,
)
from datarooms.testing import TestHomeserver

TIMEOUT = 30.0


async def _until(client: DataroomsClient, check: Any, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out waiting for a hook event"
        await client.sync_once()


class Seen:
    """Everything a client's hooks publish, in both phases."""

    def __init__(self, client: DataroomsClient) -> None:
        self.after: list[Any] = []
        self.during: list[Any] = []
        #: What the index said about a state event while its in-transaction hook ran.
        self.index_during: dict[tuple[str, str, str], Any] = {}
        for phase, into in ((Phase.AFTER, self.after), (Phase.TRANSACTION, self.during)):
            client.hooks.on(MembershipChanged, into.append, phase=phase)
            client.hooks.on(StateChanged, into.append, phase=phase)
            client.hooks.on(RoomEventReceived, into.append, phase=phase)
            client.hooks.on(ToDeviceReceived, into.append, phase=phase)

        def state_in_index(change: StateChanged) -> None:
            key = (change.room_id, change.event_type, change.state_key)
            self.index_during[key] = client.index.state(*key)

        client.hooks.on(StateChanged, state_in_index, phase=Phase.TRANSACTION)

    def of(self, kind: type, **fields: Any) -> list[Any]:
        return [
            e
            for e in self.after
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())
        ]


async def _to_device(
    sender: DataroomsClient, user: str, device: str, etype: str, content: Any
) -> None:
    async with sender.http() as http:
        await http.request(
            "PUT",
            f"/_matrix/client/v3/sendToDevice/{etype}/{secrets.token_hex(8)}",
            json={"messages": {user: {device: content}}},
        )


async def test_subscriber_sees_membership_state_events_and_to_device(  # type: ignore[no-untyped-def]
    alice_bob, homeserver: TestHomeserver
) -> None:
    alice, bob = alice_bob
    seen = Seen(bob)
    alice_seen = Seen(alice)
    room = (await alice.rooms.create("device", name="hooks")).room_id

    # Invited: our own invite, from the invite section, with the inviter.
    await alice.rooms.grant(room, bob.user_id, "write")
    await _until(bob, lambda: seen.of(MembershipChanged, room_id=room, membership="invite"))
    [invite] = seen.of(MembershipChanged, room_id=room, membership="invite")
    assert invite.own and invite.user_id == bob.user_id and invite.sender == alice.user_id
    assert bob.membership(room) == "invite" and bob.invites() == {room: alice.user_id}

    # The invite outlives a restart of the device (an incremental sync does not repeat it).
    bob_store = bob.store_dir
    await bob.close()
    bob = await DataroomsClient.open(
        Credentials(homeserver.base_url, bob.user_id, bob.access_token), bob_store
    )
    try:
        assert bob.invites() == {room: alice.user_id} and bob.membership(room) == "invite"
        seen = Seen(bob)
        await _subscriber_sees_the_rest(alice, bob, alice_seen, seen, room)
    finally:
        await bob.close()


async def _subscriber_sees_the_rest(
    alice: DataroomsClient, bob: DataroomsClient, alice_seen: Seen, seen: Seen, room: str
) -> None:
    # Joined: our own join; the inviter sees another user's join.
    await bob.rooms.join(room)
    assert seen.of(MembershipChanged, room_id=room, user_id=bob.user_id, membership="join")
    assert bob.membership(room) == "join" and room in bob.joined_rooms()
    assert bob.invites() == {}
    await _until(
        alice,
        lambda: alice_seen.of(
            MembershipChanged, room_id=room, user_id=bob.user_id, membership="join", own=False
        ),
    )

    # A state change: published once it is in the index (even inside the transaction).
    async with alice.http() as http:
        await http.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/state/ixo.room.state/colour",
            json={"value": "teal"},
        )
    await _until(bob, lambda: seen.of(StateChanged, room_id=room, event_type="ixo.room.state"))
    [change] = seen.of(StateChanged, room_id=room, event_type="ixo.room.state")
    assert change.state_key == "colour" and change.content == {"value": "teal"}
    assert change.sender == alice.user_id
    assert seen.index_during[(room, "ixo.room.state", "colour")] == {"value": "teal"}

    # A decrypted event, and the room key that came with it (without its secret).
    await alice.records.put(room, "temperature", 21.5)
    await _until(
        bob,
        lambda: [
            e for e in seen.of(RoomEventReceived) if e.event.content.get("key") == "temperature"
        ],
    )
    [got] = [e for e in seen.of(RoomEventReceived) if e.event.content.get("key") == "temperature"]
    assert got.room_id == room and got.event.encrypted and got.event.decrypted
    assert got.event.content["value"] == 21.5 and not got.late
    keys = seen.of(ToDeviceReceived, type="m.room_key", sender=alice.user_id)
    assert keys and all(k.encrypted for k in keys)
    assert all("session_key" not in k.content for k in keys)
    assert any(k.content.get("room_id") == room for k in keys)

    # A to-device event in the clear.
    await _to_device(alice, bob.user_id, bob.device_id, "org.example.ping", {"n": 7})
    await _until(bob, lambda: seen.of(ToDeviceReceived, type="org.example.ping"))
    [ping] = seen.of(ToDeviceReceived, type="org.example.ping")
    assert ping.sender == alice.user_id and ping.content == {"n": 7} and not ping.encrypted

    # Kicked: our own leave, from the leave section; the room is no longer joined.
    await alice.rooms.revoke(room, bob.user_id)
    await _until(bob, lambda: seen.of(MembershipChanged, room_id=room, membership="leave"))
    [left] = seen.of(MembershipChanged, room_id=room, membership="leave")
    assert left.own and left.sender == alice.user_id
    assert bob.membership(room) == "leave" and room not in bob.joined_rooms()

    # Both phases saw the same events, in the same order.
    assert seen.during == seen.after


async def test_failing_transaction_hook_retries_the_batch_and_loses_nothing(  # type: ignore[no-untyped-def]
    alice_bob, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = alice_bob
    room = (await alice.rooms.create("device", name="retry")).room_id
    await alice.rooms.grant(room, bob.user_id, "read")
    await bob.sync_once()
    await bob.rooms.join(room)
    await alice.sync_once()

    failures = 0
    during: list[str] = []

    def flaky(hook: RoomEventReceived) -> None:
        nonlocal failures
        if hook.event.content.get("key") == "reading":
            during.append(hook.event.event_id)
            if failures < 2:
                failures += 1
                raise RuntimeError("the bookkeeping store is down")

    after: list[Any] = []
    keys_during: list[ToDeviceReceived] = []
    bob.hooks.on(ToDeviceReceived, keys_during.append, phase=Phase.TRANSACTION)
    bob.hooks.on(RoomEventReceived, flaky, phase=Phase.TRANSACTION)
    bob.hooks.on(RoomEventReceived, after.append)
    bob.hooks.on(ToDeviceReceived, after.append)

    record = await alice.records.put(room, "reading", {"v": 1})
    position = bob.index.sync_token
    with caplog.at_level(logging.ERROR, logger="datarooms.sdk.hooks"):
        with pytest.raises(HookError) as err:
            await bob.sync_once()
    assert "flaky" in str(err.value) and "will be retried" in str(err.value)
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    # Rolled back: neither the record nor the position was persisted; no after hook ran.
    assert bob.index.sync_token == position
    assert bob.index.latest(room, "reading") is None
    assert not [e for e in after if isinstance(e, RoomEventReceived)]
    # The room key came in that same batch (and nio has consumed its Olm message).
    assert any(k.type == "m.room_key" and k.content.get("room_id") == room for k in keys_during)

    # The background loop retries the same batch (with back-off) until the hook passes.
    bob.start_sync()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while bob.index.latest(room, "reading") is None:
        assert loop.time() < deadline, "the batch was never retried"
        await asyncio.sleep(0.05)
    await bob.stop_sync()
    assert failures == 2 and during == [record.event_id] * 3
    latest = bob.index.latest(room, "reading")
    assert latest is not None and latest.value == {"v": 1}
    assert bob.index.sync_token != position
    # Delivered once to the after hooks, decrypted; the room key too, though nio
    # had consumed its Olm message in the first, rolled-back round.
    readings = [
        e for e in after if isinstance(e, RoomEventReceived) and e.event.event_id == record.event_id
    ]
    assert len(readings) == 1 and readings[0].event.decrypted
    room_keys = [e for e in after if isinstance(e, ToDeviceReceived) and e.type == "m.room_key"]
    assert any(k.content.get("room_id") == room for k in room_keys)


async def test_failing_after_hook_is_logged_and_the_loop_goes_on(  # type: ignore[no-untyped-def]
    alice_bob, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = alice_bob
    room = (await alice.rooms.create("device", name="after")).room_id
    await alice.rooms.grant(room, bob.user_id, "read")
    await bob.sync_once()
    await bob.rooms.join(room)

    def broken(hook: RoomEventReceived) -> None:
        raise RuntimeError("broken subscriber")

    got: list[str] = []

    async def works(hook: RoomEventReceived) -> None:
        if hook.event.content.get("key"):
            got.append(hook.event.content["key"])

    bob.hooks.on(RoomEventReceived, broken)
    bob.hooks.on(RoomEventReceived, works)
    bob.start_sync()
    with caplog.at_level(logging.ERROR, logger="datarooms.sdk.hooks"):
        for key in ("one", "two"):
            await alice.records.put(room, key, 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while got != ["one", "two"]:
            assert loop.time() < deadline, f"the loop stopped delivering: {got}"
            await asyncio.sleep(0.05)
    assert any("broken" in str(getattr(r, "hook", "")) for r in caplog.records)
    assert bob.index.latest(room, "two") is not None


def test_transaction_hooks_must_be_synchronous() -> None:
    async def handler(event: StateChanged) -> None:
        return None

    with pytest.raises(TypeError, match="synchronous"):
        Hooks().on(StateChanged, handler, phase=Phase.TRANSACTION)


async def test_hook_can_write_the_index_inside_the_sync_transaction(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client
) -> None:
    """An in-transaction hook's own index writes commit or roll back with the batch."""
    carol = await open_client(await homeserver.new_user("carol"))
    room = (await carol.rooms.create("device", name="book")).room_id
    calls = 0

    def bookkeeping(change: StateChanged) -> None:
        nonlocal calls
        if change.event_type != "org.example.thing":
            return
        calls += 1
        carol.index.set_meta("example.last_thing", str(change.content["n"]))
        if calls == 1:
            raise RuntimeError("fails after writing")

    carol.hooks.on(StateChanged, bookkeeping, phase=Phase.TRANSACTION)
    async with carol.http() as http:
        await http.request(
            "PUT", f"/_matrix/client/v3/rooms/{room}/state/org.example.thing/", json={"n": 3}
        )
    with pytest.raises(HookError):
        await carol.sync_once()
    assert carol.index.get_meta("example.last_thing") is None  # rolled back with the batch
    await carol.sync_once()
    assert carol.index.get_meta("example.last_thing") == "3"
    assert carol.index.state(room, "org.example.thing") == {"n": 3}


async def test_state_bot_follows_invites_and_kicks_through_hooks(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client
) -> None:
    """The state bot joins on the invite hook, and stops answering once kicked: its
    membership comes from the SDK (followed in the sync transaction), not from nio."""
    from datarooms.services.statebot import StateBot, StateBotConfig

    owner = await open_client(await homeserver.new_user("owner"))
    bot_client = await open_client(await homeserver.new_user("statebot"), "statebot-hooks")
    bot = StateBot(bot_client, config=StateBotConfig(port=0))
    await bot.start()
    try:
        room = (await owner.rooms.create("device", name="bot hooks")).room_id
        await owner.rooms.grant(room, bot_client.user_id, "admin")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while room not in bot.handler.joined_rooms():
            assert loop.time() < deadline, "the bot did not join on the invite"
            await asyncio.sleep(0.05)
        assert bot_client.membership(room) == "join"
        await owner.rooms.revoke(room, bot_client.user_id)
        deadline = loop.time() + TIMEOUT
        while room in bot.handler.joined_rooms():
            assert loop.time() < deadline, "the bot did not notice the kick"
            await asyncio.sleep(0.05)
        assert bot_client.membership(room) == "leave"
        assert room in bot_client.nio.rooms  # nio alone would still call it joined
    finally:
        await bot.stop()
