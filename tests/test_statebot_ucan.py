"""The state bot takes UCAN invocations as bearer tokens beside OpenID tokens.

A user gets a root delegation from the bot with an OpenID token, delegates it to an
agent, which delegates to a sub-agent; every refusal is a precise 401/403 and no UCAN
is ever checked with the homeserver.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import dag_cbor
import pytest

from datarooms import DataroomsClient
from datarooms.sdk.ucan import (
    ROOM_READ,
    STATE_BOT,
    STATE_SET,
    Delegation,
    Principal,
    bearer,
    decode,
    decode_container,
    delegate,
    encode_container,
    invoke,
)
from datarooms.services.statebot import StateBot, StateBotClient
from datarooms.testing import TestHomeserver
from tests.test_statebot import bot_room, openid_token, start_bot

OpenClient = Callable[..., Awaitable[DataroomsClient]]


@pytest.fixture
async def bot(homeserver: TestHomeserver, open_client: OpenClient) -> AsyncIterator[StateBot]:
    b = await start_bot(homeserver, open_client)
    yield b
    await b.stop()


async def call(
    bot: StateBot, method: str, path: str, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, bot.url + path, headers=headers, **kw) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def state_path(room: str, key: str = "") -> str:
    return f"/v1/rooms/{quote(room, safe='')}/state" + (f"/{quote(key, safe='')}" if key else "")


async def test_three_hop_ucan_chain_at_the_state_bot(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    room = await bot_room(alice, bot)
    other_room = await bot_room(alice, bot)
    async with StateBotClient.for_client(bot.url, alice) as api:
        await api.set(room, "k", {"v": 1})

    # The bot's DID document names the audience.
    status, doc = await call(bot, "GET", "/.well-known/did.json")
    assert status == 200 and doc["id"] == bot.verifier.ucan.did  # type: ignore[union-attr]
    bot_did = doc["id"]

    # Alice (OpenID) gets a root delegation for her own key; a UCAN cannot get one.
    me, agent, sub = Principal.generate(), Principal.generate(), Principal.generate()
    status, issued = await call(
        bot,
        "POST",
        "/v1/ucan/delegate",
        await openid_token(alice),
        json={"audience": me.did, "cmd": "/datarooms", "expires_in": 3600},
    )
    assert status == 200, issued
    [root_env] = decode_container(issued["delegation"])
    root = decode(root_env)
    assert isinstance(root, Delegation)
    assert root.iss == bot_did and root.meta["matrix_user"] == alice.user_id

    now = int(time.time())
    middle = delegate(
        me,
        agent.did,
        "/datarooms",
        subject=bot_did,
        policy=[["==", ".room", room]],
        expires=now + 1800,
    )
    leaf = delegate(agent, sub.did, ROOM_READ, subject=bot_did, expires=now + 600)
    chain = [root, middle, leaf]

    def token(
        cmd: str = ROOM_READ,
        args_room: str = room,
        *,
        signer: Principal = sub,
        proofs: list[Delegation] = chain,
        **args: Any,
    ) -> str:
        inv = invoke(signer, cmd, {"room": args_room, "with": STATE_BOT, **args}, proofs)
        return bearer(inv, proofs)

    # The sub-agent reads alice's room; the agent writes in it.
    status, body = await call(bot, "GET", state_path(room), token())
    assert status == 200, body
    assert [k["key"] for k in body["keys"]] == ["k"]
    put = token(STATE_SET, signer=agent, proofs=[root, middle], key="k2")
    status, body = await call(bot, "PUT", state_path(room, "k2"), put, json={"value": {"x": 2}})
    assert status == 200, body
    async with StateBotClient.for_client(bot.url, alice) as api:
        assert await api.get(room, "k2") == {"x": 2}  # written as alice

    cache = (bot.verifier.cache_size, bot.verifier.rejected_cache_size)

    async def refused(
        method: str, path: str, tok: str, status: int, errcode: str, **kw: Any
    ) -> None:
        got, body = await call(bot, method, path, tok, **kw)
        assert (got, body.get("errcode")) == (status, errcode), body
        assert body["error"]

    # Replay.
    once = token()
    assert (await call(bot, "GET", state_path(room), once))[0] == 200
    await refused("GET", state_path(room), once, 401, "DR_UCAN_REPLAYED")
    # Another room: the policy says no, and a token for one room never works in another.
    await refused("GET", state_path(other_room), token(args_room=other_room), 403, "DR_UCAN_POLICY")
    await refused("GET", state_path(other_room), token(), 403, "DR_UCAN_WRONG_ROOM")
    # The sub-agent may only read.
    await refused(
        "PUT",
        state_path(room, "k"),
        token(STATE_SET, key="k"),
        403,
        "DR_UCAN_WIDENS",
        json={"value": 1},
    )
    # A read token on a write route.
    await refused(
        "PUT", state_path(room, "k"), token(), 403, "DR_UCAN_WRONG_COMMAND", json={"value": 1}
    )
    # Wrong audience: addressed to another service.
    inv = invoke(sub, ROOM_READ, {"room": room, "with": STATE_BOT}, chain, audience=agent.did)
    await refused("GET", state_path(room), bearer(inv, chain), 403, "DR_UCAN_WRONG_AUDIENCE")
    # Another running state bot (its own did:key) refuses this bot's token.
    other_bot = await start_bot(homeserver, open_client)
    try:
        assert other_bot.verifier.ucan is not None
        assert other_bot.verifier.ucan.did != bot_did
        got, body = await call(other_bot, "GET", state_path(room), token())
        assert (got, body["errcode"]) == (403, "DR_UCAN_WRONG_AUDIENCE"), body
    finally:
        await other_bot.stop()
    # Expired, not yet valid.
    old = invoke(sub, ROOM_READ, {"room": room, "with": STATE_BOT}, chain, now=now - 1000)
    await refused("GET", state_path(room), bearer(old, chain), 401, "DR_UCAN_EXPIRED")
    later = delegate(
        agent, sub.did, ROOM_READ, subject=bot_did, expires=now + 600, not_before=now + 300
    )
    await refused(
        "GET", state_path(room), token(proofs=[root, middle, later]), 401, "DR_UCAN_NOT_YET_VALID"
    )
    # Broken chain, widening chain.
    await refused("GET", state_path(room), token(proofs=[root, leaf]), 403, "DR_UCAN_BROKEN_CHAIN")
    wider = delegate(agent, sub.did, "/datarooms", subject=bot_did, expires=now + 99999)
    await refused(
        "GET", state_path(room), token(proofs=[root, middle, wider]), 403, "DR_UCAN_WIDENS"
    )
    # Bad signature, unknown DID method, oversized.
    signature, payload = dag_cbor.decode(invoke(sub, ROOM_READ, {"room": room}, chain).envelope)
    payload["ucan/inv@1.0.0-rc.1"]["args"] = {"room": room, "with": STATE_BOT, "x": 1}
    forged = encode_container([dag_cbor.encode([signature, payload]), *(d.envelope for d in chain)])
    await refused("GET", state_path(room), forged, 401, "DR_UCAN_BAD_SIGNATURE")
    payload["ucan/inv@1.0.0-rc.1"]["iss"] = "did:web:example.org"
    web = encode_container([dag_cbor.encode([signature, payload]), *(d.envelope for d in chain)])
    await refused("GET", state_path(room), web, 401, "DR_UCAN_UNKNOWN_DID_METHOD")
    await refused("GET", state_path(room), "C" + "A" * 9000, 401, "DR_UCAN_TOO_LARGE")
    # A UCAN cannot get itself a root delegation.
    await refused(
        "POST",
        "/v1/ucan/delegate",
        token(),
        403,
        "DR_UCAN_NOT_ALLOWED",
        json={"audience": sub.did},
    )

    # Alice revokes her delegation to the agent: the sub-agent's chain is cut.
    revocation = invoke(
        me, "/ucan/revoke", {"ucan": middle.cid}, [], subject=bot_did, audience=bot_did
    )
    status, body = await call(
        bot, "POST", "/ucan/revoke", data=bearer(revocation, [root, middle]).encode()
    )
    assert status == 200 and body == {"revoked": str(middle.cid)}, body
    await refused("GET", state_path(room), token(), 403, "DR_UCAN_REVOKED")

    # None of it reached the homeserver: no OpenID check was cached, accepted or rejected.
    assert (bot.verifier.cache_size, bot.verifier.rejected_cache_size) == cache
    # OpenID tokens still work beside UCANs.
    async with StateBotClient.for_client(bot.url, alice) as api:
        assert await api.get(room, "k") == {"v": 1}
