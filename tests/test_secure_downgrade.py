"""A secure value cannot be pulled into the clear by one who may not read it (issue 11, item 4).

The attack: a member with only power (not on the key's read ACL) asks the state bot to
write ``{"value": {}, "secure": false}`` (or a merge) to a secure key; the bot decrypted
the value, merged the patch into it and wrote the result into clear room state, where the
writer and the homeserver read it. And a reference forged straight into room state, naming
another key's record, was resolved when the bot's index still named the bot as its sender.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from datarooms import AccessDeniedError, NotFoundError
from datarooms.services.statebot import StateBot, StateBotClient
from datarooms.testing import TestHomeserver
from tests.test_statebot import bot_room, openid_token, raw_call, raw_state, start_bot

STATE = "ixo.room.state"


@pytest.fixture
async def bot(homeserver: TestHomeserver, open_client: Any) -> AsyncIterator[StateBot]:
    b = await start_bot(homeserver, open_client)
    yield b
    await b.stop()


async def writers_at_50(owner: Any, room: str) -> None:
    """Let power 50 (``write`` access) send ``ixo.room.state``; ACLs still need 100."""
    path = f"/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"
    async with owner.http() as http:
        levels = await http.request("GET", path)
        levels.setdefault("events", {})[STATE] = 50
        await http.request("PUT", path, json=levels)


async def test_power_without_read_cannot_downgrade_or_merge_a_secure_key(
    homeserver: TestHomeserver, open_client: Any, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    mallory = await open_client(await homeserver.new_user("mallory"))
    room = await bot_room(alice, bot, (mallory, "write"))
    await writers_at_50(alice, room)
    secret = "s3cret-" + uuid.uuid4().hex
    async with StateBotClient.for_client(bot.url, alice) as a:
        await a.set(room, "credentials", {"api_key": secret}, secure=True)
        await a.set_acl(room, "credentials", read=[alice.user_id], write=[])
    await bot.client.sync_once()

    token = await openid_token(mallory)
    server = mallory.user_id.split(":", 1)[1]
    path = f"/v1/rooms/{room}/state/credentials"
    # Each way of carrying the secret value over into what Mallory can read.
    for body in (
        {"value": {}, "secure": False},
        {"value": {"x": 1}, "secure": False},
        {"value": {"x": 1}},  # a merge that stays secure, into a value she may not read
        {"value": 1, "path": "/x"},
        {"value": {"x": 1}, "mode": "replace", "path": "/y", "secure": False},
    ):
        status, answer = await raw_call(
            bot, "PUT", path, token=token, server=server, json_body=body
        )
        assert status == 403, (body, status, answer)
        assert answer["errcode"] == "M_FORBIDDEN"
        assert "may not merge into or downgrade" in answer["error"]
        content = await raw_state(alice, room, STATE, "credentials")
        assert "io.datarooms.secure" in content and secret not in json.dumps(content)

    # A blind replace of the whole value, kept secure, reveals nothing: power may do that.
    status, answer = await raw_call(
        bot, "PUT", path, token=token, server=server,
        json_body={"value": {"new": "value"}, "mode": "replace"},
    )  # fmt: skip
    assert status == 200, answer
    content = await raw_state(alice, room, STATE, "credentials")
    assert "io.datarooms.secure" in content and "new" not in json.dumps(content)
    status, _ = await raw_call(bot, "GET", path, token=token, server=server)
    assert status == 403

    # The same rule through client.state on Mallory's own device (she has the power).
    await mallory.sync_once()
    with pytest.raises(AccessDeniedError, match="may not merge into or downgrade"):
        await mallory.state.set(room, "credentials", {}, secure=False)
    with pytest.raises(AccessDeniedError, match="may not merge into or downgrade"):
        await mallory.state.merge(room, "credentials", {"x": 1})
    content = await raw_state(alice, room, STATE, "credentials")
    assert "io.datarooms.secure" in content

    # A reader (Alice) may still downgrade it on purpose.
    async with StateBotClient.for_client(bot.url, alice) as a:
        res = await a.set(room, "credentials", {"more": 1}, secure=False)
        assert not res.secure
    assert await raw_state(alice, room, STATE, "credentials") == {"new": "value", "more": 1}


async def test_a_reference_must_name_its_own_key_and_the_same_sender(
    homeserver: TestHomeserver, open_client: Any, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    mallory = await open_client(await homeserver.new_user("mallory"))
    room = await bot_room(alice, bot, (mallory, "write"))
    await writers_at_50(alice, room)
    secret = "s3cret-" + uuid.uuid4().hex
    async with StateBotClient.for_client(bot.url, alice) as a:
        res = await a.set(room, "credentials", {"api_key": secret}, secure=True)
        await a.set_acl(room, "credentials", read=[alice.user_id], write=[])
        await a.set(room, "public", {"hello": "world"})  # the bot sent this one
    await bot.client.sync_once()
    forged = {
        "io.datarooms.secure": {
            "v": 1,
            "record": "ixo.room.state/credentials",
            "event_id": res.record_event_id,
            "algorithm": "m.megolm.v1.aes-sha2",
        }
    }
    # Mallory writes the forged reference straight into room state, and at once (before
    # the bot's sync has seen it: its index still names the bot as the sender of "public")
    # asks the bot to downgrade "public", which has no ACL.
    async with mallory.http() as http:
        await http.request(
            "PUT", f"/_matrix/client/v3/rooms/{room}/state/{STATE}/public", json=forged
        )
    async with StateBotClient.for_client(bot.url, mallory) as m:
        with pytest.raises(NotFoundError):
            await m.set(room, "public", {}, secure=False)
        content = await raw_state(alice, room, STATE, "public")
        assert secret not in json.dumps(content)
        # And a read of the forged key, once the bot has synced, is refused too.
        await bot.client.sync_once()
        with pytest.raises(NotFoundError):
            await m.get(room, "public")
    # Through client.state: a reader's own device refuses the forged reference.
    await alice.sync_once()
    with pytest.raises(NotFoundError):
        await alice.state.get(room, "public")
