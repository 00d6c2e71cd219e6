"""The rooms bot takes UCAN invocations too, and only those addressed to it: a token
for one bot never works at another."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from datarooms.sdk.ucan import (
    ROOM_READ,
    ROOMS_BOT,
    STATE_BOT,
    Delegation,
    Principal,
    bearer,
    decode,
    decode_container,
    delegate,
    invoke,
)
from datarooms.services.roomsbot import RoomsBot, RoomsBotSettings
from tests._roomsbot import AppserviceHomeserver, openid_token, own_data_dir

#: On the session's appservice homeserver, with the other rooms-bot tests: one worker.
pytestmark = pytest.mark.xdist_group("appservice")


@pytest.fixture
async def bot(appservice_hs: AppserviceHomeserver, tmp_path: Path) -> AsyncIterator[RoomsBot]:
    ashs = own_data_dir(appservice_hs, tmp_path / "ashs")
    b = RoomsBot(
        homeserver_url=ashs.hs.base_url,
        registration=ashs.registration,
        store_path=tmp_path / "store.db",
        settings=RoomsBotSettings(port=ashs.port),
    )
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def call(method: str, url: str, token: str | None = None, **kw: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers, **kw) as r:
        return r.status, await r.json(content_type=None)


async def test_rooms_bot_takes_its_own_ucans_and_no_other_bots(
    appservice_hs: AppserviceHomeserver, bot: RoomsBot
) -> None:
    status, doc = await call("GET", bot.url + "/.well-known/did.json")
    assert status == 200 and doc["id"].startswith("did:key:z6Mk")
    bot_did = doc["id"]
    user = await appservice_hs.hs.new_user("alice")
    me, agent = Principal.generate(), Principal.generate()
    status, issued = await call(
        "POST",
        bot.url + "/v1/ucan/delegate",
        await openid_token(appservice_hs.hs, user),
        json={"audience": me.did},
    )
    assert status == 200, issued
    root = decode(decode_container(issued["delegation"])[0])
    assert isinstance(root, Delegation) and root.meta["matrix_user"] == user.user_id
    hop = delegate(me, agent.did, ROOM_READ, subject=bot_did, expires=int(time.time()) + 600)
    path = bot.url + "/rooms/did:ixo:entity:unknown"

    def token(resource: str = ROOMS_BOT, proofs: list[Delegation] = [root, hop]) -> str:  # noqa: B006
        inv = invoke(agent, ROOM_READ, {"with": resource}, proofs)
        return bearer(inv, proofs)

    # Authenticated (the entity has no rooms yet: 404, not 401/403).
    status, body = await call("GET", path, token())
    assert status == 404 and body["errcode"] != "DR_UCAN_WRONG_AUDIENCE", body
    # A chain rooted at the state bot's (another service's) DID: wrong audience here.
    state_bot, other = Principal.generate(), Principal.generate()
    now = int(time.time())
    s_root = delegate(state_bot, me.did, "/datarooms", subject=state_bot.did, expires=now + 600)
    s_hop = delegate(me, other.did, ROOM_READ, subject=state_bot.did, expires=now + 600)
    inv = invoke(other, ROOM_READ, {"with": STATE_BOT}, [s_root, s_hop])
    status, body = await call("GET", path, bearer(inv, [s_root, s_hop]))
    assert (status, body["errcode"]) == (403, "DR_UCAN_WRONG_AUDIENCE"), body
    # Our own chain, but the invocation says it is for the state bot: the root's policy
    # (the bot pins its resource, args.with, in every root it issues) refuses it.
    status, body = await call("GET", path, token(STATE_BOT))
    assert (status, body["errcode"]) == (403, "DR_UCAN_POLICY"), body
    # A write route with a read invocation.
    status, body = await call(
        "POST", bot.url + "/rooms/source", token(), json={"did": "did:ixo:entity:x"}
    )
    assert (status, body["errcode"]) == (403, "DR_UCAN_WRONG_COMMAND"), body
