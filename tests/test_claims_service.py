"""The claims service: save into a collection → CID, query by collection + CID; the state
bot's OpenID authentication and access rules (members read, writers save)."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp

from datarooms.config import ClaimsSettings
from datarooms.sdk.ucan import (
    CLAIMS_BOT,
    ROOM_READ,
    ROOM_WRITE,
    STATE_BOT,
    Delegation,
    Principal,
    bearer,
    decode,
    decode_container,
    delegate,
    invoke,
)
from datarooms.services.claims import ClaimsBot
from datarooms.testing import TestHomeserver
from tests.test_statebot import openid_token, wait_until


async def _call(
    bot: ClaimsBot, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, bot.url + path, headers=headers, json=body) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_save_and_query_claims_with_openid_and_acl(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("verifier"))
    reader = await open_client(await homeserver.new_user("reader"))
    outsider = await open_client(await homeserver.new_user("outsider"))
    bot_client = await open_client(
        await homeserver.new_user("claimsbot"), f"claimsbot-{uuid.uuid4().hex[:6]}"
    )
    bot = ClaimsBot(bot_client, config=ClaimsSettings(port=0))
    await bot.start()
    try:
        room = (await alice.rooms.create("verification", name="claims service")).room_id
        await alice.rooms.grant(room, reader.user_id, "read")
        await reader.sync_once()
        await reader.rooms.join(room)
        await alice.rooms.grant(room, bot_client.user_id, "write")  # invite: it joins itself

        async def joined() -> bool:
            return bot_client.membership(room) == "join"

        await wait_until(joined, "the claims bot to join on invite")
        await alice.sync_once()
        await bot_client.sync_once()

        vc = alice.claims.sign("did:ixo:entity:svc", "InspectionPassed", {"score": 9})
        base = f"/v1/rooms/{quote(room)}/collections/inspections-1/claims"
        a_token = await openid_token(alice)
        status, body = await _call(bot, "POST", base, a_token, {"credential": vc})
        assert status == 200, body
        cid, body_event_id = body["cid"], body["event_id"]
        assert cid.startswith("bagaaiera")

        # A reader (joined, read access) queries it; the verdict comes with it.
        r_token = await openid_token(reader)
        status, body = await _call(bot, "GET", f"{base}/{cid}", r_token)
        assert status == 200, body
        assert body["credential"] == vc and body["verification"]["ok"] is True
        status, body = await _call(bot, "GET", base, r_token)
        assert status == 200 and [c["cid"] for c in body["claims"]] == [cid]
        # ... but may not save; a non-member may do neither; no token, no service.
        status, body = await _call(bot, "POST", base, r_token, {"credential": vc})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        o_token = await openid_token(outsider)
        status, body = await _call(bot, "GET", f"{base}/{cid}", o_token)
        assert status == 403
        status, body = await _call(bot, "GET", f"{base}/{cid}", None)
        assert status == 401
        status, body = await _call(bot, "GET", f"{base}/{cid}", "forged-token")
        assert status == 401
        # Bad input: a forged claim, an unknown CID, a malformed collection, another room.
        forged = dict(vc, credentialSubject={"id": "did:ixo:entity:svc", "score": 10})
        status, body = await _call(bot, "POST", base, a_token, {"credential": forged})
        assert status == 400 and "does not verify" in body["error"]
        status, body = await _call(bot, "GET", f"{base}/bagaaieranotthere", a_token)
        assert status == 404
        status, body = await _call(
            bot, "GET", f"/v1/rooms/{quote(room)}/collections/bad%20name/claims", a_token
        )
        assert status == 400
        status, body = await _call(
            bot, "GET", f"/v1/rooms/{quote('!nope:localhost')}/collections/c/claims", a_token
        )
        assert status == 404 and body["errcode"] == "DR_UNKNOWN_ROOM"
        # The claim is in the room, E2EE, and the issuer's own device finds it too; the
        # event says who the bot saved it for.
        await alice.sync_once()
        assert (await alice.claims.verify(room, cid, collection="inspections-1")).ok
        event = await alice.messages.event(room, body_event_id)
        assert event.content["saved_by"] == alice.user_id and event.sender == bot_client.user_id

        # UCAN invocations (docs/auth.md): alice delegates reading this room to an agent.
        status, doc = await _call(bot, "GET", "/.well-known/did.json", None)
        assert status == 200 and doc["id"].startswith("did:key:z6Mk")
        me, agent = Principal.generate(), Principal.generate()
        status, issued = await _call(
            bot, "POST", "/v1/ucan/delegate", a_token, {"audience": me.did}
        )
        assert status == 200, issued
        root = decode(decode_container(issued["delegation"])[0])
        assert isinstance(root, Delegation)
        hop = delegate(me, agent.did, ROOM_READ, subject=doc["id"], expires=int(time.time()) + 600)

        def token(cmd: str = ROOM_READ, target: str = room, resource: str = CLAIMS_BOT) -> str:
            inv = invoke(agent, cmd, {"with": resource, "room": target}, [root, hop])
            return bearer(inv, [root, hop])

        status, body = await _call(bot, "GET", f"{base}/{cid}", token())
        assert status == 200 and body["verification"]["ok"] is True, body
        status, body = await _call(bot, "POST", base, token(ROOM_WRITE), {"credential": vc})
        assert status == 403 and body["errcode"].startswith("DR_UCAN"), body
        status, body = await _call(bot, "GET", f"{base}/{cid}", token(target="!other:localhost"))
        assert (status, body["errcode"]) == (403, "DR_UCAN_WRONG_ROOM"), body
        status, body = await _call(bot, "GET", f"{base}/{cid}", token(resource=STATE_BOT))
        assert status == 403 and body["errcode"] in ("DR_UCAN_WRONG_AUDIENCE", "DR_UCAN_POLICY")
    finally:
        await bot.stop()


def test_claims_section_is_typed_and_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from datarooms.config import load_settings
    from datarooms.errors import ConfigError

    s = load_settings(
        data_dir=tmp_path,
        env={"DATAROOMS_CLAIMS_PORT": "0", "DATAROOMS_CLAIMS_ANCHOR_INTERVAL_SECONDS": "60"},
    )
    assert s.claims.port == 0 and s.claims.anchor_interval_seconds == 60.0
    assert ClaimsSettings().port == 8013 and ClaimsSettings().localpart == "claimsbot"
    with pytest.raises(ConfigError, match="anchor_interval_seconds"):
        load_settings(data_dir=tmp_path, env={"DATAROOMS_CLAIMS_ANCHOR_INTERVAL_SECONDS": "0.5"})
    with pytest.raises(ConfigError, match=r"claims\.port"):
        load_settings(data_dir=tmp_path, env={"DATAROOMS_CLAIMS_PORT": "70000"})
