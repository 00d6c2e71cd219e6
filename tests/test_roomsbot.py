"""The rooms bot against a real Synapse that loaded its appservice registration.

The devchain is real too (in this process, over real HTTP and websockets); the bot
runs in this process as well, on the port its registration names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml

from datarooms._transport.http import MatrixHttp
from datarooms.chain import ENTITY_CREATED_EVENT, CometRpc, DevChainServer, emit_events_tx
from datarooms.errors import HomeserverError
from datarooms.homeserver.admin import RegisteredUser
from datarooms.homeserver.embedded import free_port
from datarooms.sdk.rooms import ENCRYPTION
from datarooms.services.roomsbot import ENTITY_EVENT, RoomsBot, RoomsBotSettings, write_registration
from datarooms.services.roomsbot.entity_rooms import entity_content
from datarooms.services.roomsbot.registration import load_registration
from datarooms.services.roomsbot.store import EntityFacts
from tests._roomsbot import (
    AppserviceHomeserver,
    fuzz,
    new_controller,
    openid_token,
    own_data_dir,
    register,
    resolve,
    running_devchain,
    state_of,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("appservice")]


@pytest.fixture
def ashs(appservice_hs: AppserviceHomeserver, tmp_path: Path) -> AppserviceHomeserver:
    """The session's appservice homeserver, with a data dir of this test's own."""
    return own_data_dir(appservice_hs, tmp_path / "ashs")


@dataclass
class Env:
    ashs: AppserviceHomeserver
    bot: RoomsBot
    chain: DevChainServer
    operator: RegisteredUser

    @property
    def hs(self) -> Any:
        return self.ashs.hs

    @property
    def url(self) -> str:
        return self.bot.url

    @property
    def as_token(self) -> str:
        return self.ashs.registration.as_token


@pytest.fixture
async def env(ashs: AppserviceHomeserver, tmp_path: Path) -> AsyncIterator[Env]:
    operator = await ashs.hs.new_user("operator")
    async with running_devchain(tmp_path / "chain", allow_raw_events=True) as chain:
        bot = RoomsBot(
            homeserver_url=ashs.hs.base_url,
            registration=ashs.registration,
            store_path=tmp_path / "store.db",
            settings=RoomsBotSettings(port=ashs.port, operators=operator.user_id),
            chain_url=chain.url,
        )
        await bot.start()
        try:
            yield Env(ashs, bot, chain, operator)
        finally:
            await bot.stop()


async def until(cond: Any, timeout: float = 60.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def call(
    method: str,
    url: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.request(method, url, json=json_body, headers=h) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


# -- rooms from the chain ------------------------------------------------------------


async def test_a_chain_entity_gets_an_encrypted_room_and_a_space_on_request(env: Env) -> None:
    ctl, ctl_did = await new_controller(env.ashs)
    [did] = await register(env.chain.url, controllers=[ctl_did], entity_type="asset/device")
    await until(lambda: env.bot.store.get(did) is not None, what="the entity's rooms")
    record = env.bot.store.get(did)
    assert record is not None and record.members == (ctl.user_id,)
    assert record.space is None  # made when someone asks for it, not for every entity

    room = await state_of(env.hs, env.as_token, record.room_id)
    assert room[("m.room.encryption", "")]["algorithm"] == ENCRYPTION["algorithm"]
    assert room[("m.room.join_rules", "")]["join_rule"] == "invite"
    assert room[("m.room.history_visibility", "")]["history_visibility"] == "shared"
    assert ("m.room.guest_access", "") not in room  # no guest access, and no event for it
    assert room[("io.datarooms.room", "")] == {"kind": "entity", "version": 1, "did": did}
    # The facts are in the create event's content (no event of their own until they change).
    assert (ENTITY_EVENT, "") not in room
    entity = room[("m.room.create", "")][ENTITY_EVENT]
    assert entity_content(room) == entity
    assert entity["did"] == did and entity["type"] == "asset/device"
    assert entity["controllers"] == [ctl_did] and entity["source"] == "chain"
    assert entity["chain_id"] == env.chain.chain.chain_id and entity["height"] >= 1
    assert room[("m.room.power_levels", "")]["users"][ctl.user_id] == 100
    assert room[("m.room.member", ctl.user_id)]["membership"] == "invite"
    assert room[("m.room.canonical_alias", "")]["alias"] == f"#{did.replace(':', '-')}:localhost"
    assert room[("m.room.name", "")]["name"] and ("m.room.topic", "") not in room
    # Every event the homeserver made for the entity: create, the bot's join, power
    # levels, join rule, history visibility, canonical alias, encryption, io.datarooms.room,
    # the name, the controller's invite (docs/roomsbot.md).
    async with MatrixHttp(env.hs.base_url, env.as_token) as http:
        timeline = await http.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(record.room_id)}/messages",
            params={"dir": "b", "limit": "50"},
        )
    assert len(timeline["chunk"]) == 10, [e["type"] for e in timeline["chunk"]]

    # A client asks for the space by its alias: the bot makes it then, listing the room.
    space_alias = f"#space.{did.replace(':', '-')}:localhost"
    space_id = await resolve(env.hs, ctl.access_token, space_alias)
    record = env.bot.store.get(did)
    assert record is not None and record.space is not None
    assert record.space.room_id == space_id and record.space.alias == space_alias
    space = await state_of(env.hs, env.as_token, record.space.room_id)
    assert space[("m.room.create", "")]["type"] == "m.space"
    assert ("m.space.child", record.room_id) in space
    assert space[("m.room.create", "")][ENTITY_EVENT]["did"] == did
    assert space[("m.room.power_levels", "")]["users"][ctl.user_id] == 100
    assert space[("m.room.member", ctl.user_id)]["membership"] == "invite"

    # The aliases resolve for anyone, and the controller really is an admin there.
    assert await resolve(env.hs, ctl.access_token, record.rooms["entity"].alias) == record.room_id
    assert await resolve(env.hs, ctl.access_token, record.space.alias) == record.space.room_id
    async with MatrixHttp(env.hs.base_url, ctl.access_token) as http:
        for rid in (record.room_id, record.space.room_id):
            await http.request("POST", f"/_matrix/client/v3/join/{quote(rid)}", json={})
        await http.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(record.room_id)}/state/m.room.topic/",
            json={"topic": "changed by the controller"},
        )


async def test_the_same_entity_twice_yields_the_same_rooms(env: Env, tmp_path: Path) -> None:
    _ctl, ctl_did = await new_controller(env.ashs)
    facts = EntityFacts("did:ixo:entity:" + "ab" * 16, "dao", (ctl_did,), "chain")
    first, created = await env.bot.rooms.ensure(facts, space=True)
    again, created_again = await env.bot.rooms.ensure(facts, space=True)
    assert created and not created_again and again == first and first.space is not None

    # A second bot with an empty store (a lost store, another replica) finds the rooms by
    # their aliases and creates nothing.
    other = RoomsBot(
        homeserver_url=env.hs.base_url,
        registration=env.ashs.registration,
        store_path=tmp_path / "other.db",
    )
    try:
        await other.rooms.prepare()
        found, created_by_other = await other.rooms.ensure(facts)
        assert found.space is None  # not asked for: not looked for either
        with_space, _ = await other.rooms.ensure(facts, space=True)
    finally:
        await other.http.close()
        other.store.close()
    assert not created_by_other and found.room_id == first.room_id
    assert with_space.space == first.space
    for kind in ("entity", "space"):
        assert other.metrics.rooms_created.labels(kind)._value.get() == 0
        assert other.metrics.rooms_recovered.labels(kind)._value.get() == 1


async def test_an_entity_created_on_request_is_completed_by_the_chain(env: Env) -> None:
    ctl, ctl_did = await new_controller(env.ashs)
    did = "did:ixo:entity:" + "cd" * 16
    # Someone made the entity's rooms on request (POST /rooms/source) before the chain
    # had it; an ordinary client finds them by alias.
    await env.bot.rooms.ensure(EntityFacts(did), space=True)
    user = await env.hs.new_user("client")
    room_id = await resolve(env.hs, user.access_token, f"#{did.replace(':', '-')}:localhost")
    record = env.bot.store.get(did)
    assert record is not None and record.room_id == room_id
    assert record.facts.source == "request" and record.members == ()
    facts = entity_content(await state_of(env.hs, env.as_token, room_id))
    assert facts is not None and facts["type"] is None

    # Then the chain reports the entity (a crafted IXO event for this DID): the controller
    # is invited with admin power and the facts are recorded, in the same rooms.
    event = {
        "type": ENTITY_CREATED_EVENT,
        "attributes": [
            {"key": "entity", "value": json.dumps({"id": did, "type": "protocol"})},
            {"key": "signer", "value": json.dumps(ctl_did)},
            {"key": "msg_index", "value": "0"},
        ],
    }
    async with CometRpc(env.chain.url) as rpc:
        await rpc.broadcast_tx_commit(emit_events_tx([event]))
    await until(
        lambda: (env.bot.store.get(did) or record).members == (ctl.user_id,),
        what="the update from the chain",
    )
    updated = env.bot.store.get(did)
    assert updated is not None and updated.room_id == room_id and updated.space is not None
    for rid in (room_id, updated.space.room_id):
        state = await state_of(env.hs, env.as_token, rid)
        assert state[(ENTITY_EVENT, "")]["type"] == "protocol"
        assert state[("m.room.power_levels", "")]["users"][ctl.user_id] == 100
        assert state[("m.room.member", ctl.user_id)]["membership"] == "invite"


async def test_an_alias_the_homeserver_lost_is_made_again(env: Env) -> None:
    did = "did:ixo:entity:" + "9a" * 16
    record, _ = await env.bot.rooms.ensure(EntityFacts(did), space=True)
    assert record.space is not None
    alias = record.rooms["entity"].alias
    async with MatrixHttp(env.hs.base_url, env.as_token) as http:
        await http.request("DELETE", f"/_matrix/client/v3/directory/room/{quote(alias)}")
    # The store still lists the room, but the homeserver asks: the bot checks again.
    user = await env.hs.new_user("client")
    room_id = await resolve(env.hs, user.access_token, alias)
    again = env.bot.store.get(did)
    assert again is not None and again.room_id == room_id != record.room_id
    assert again.space == record.space
    space = await state_of(env.hs, env.as_token, record.space.room_id)
    assert ("m.space.child", room_id) in space


def test_the_entity_event_is_documented() -> None:
    from jsonschema import Draft202012Validator

    from datarooms.services.roomsbot import ENTITY_EVENT_SCHEMA

    doc = Path(__file__).resolve().parent.parent / "docs" / "events" / f"{ENTITY_EVENT}.json"
    assert json.loads(doc.read_text()) == ENTITY_EVENT_SCHEMA
    validator = Draft202012Validator(ENTITY_EVENT_SCHEMA)
    facts = EntityFacts("did:ixo:entity:ab", "dao", ("did:ixo:ixo1c",), "chain", "c", 3, "H")
    assert validator.is_valid(facts.content())
    assert validator.is_valid(EntityFacts("did:ixo:entity:ab").content())


async def test_alias_queries_for_other_names_find_nothing(env: Env) -> None:
    user = await env.hs.new_user("client")
    for alias in (
        "#did-x:localhost",
        "#collaboration.did-ixo-entity-ee:localhost",
        "#did-ixo-entity-" + "e" * 300 + ":localhost",
    ):
        with pytest.raises(HomeserverError) as info:
            await resolve(env.hs, user.access_token, alias)
        assert info.value.status == 404, alias
    # The space alias of a new entity (registered on the chain) creates its rooms too.
    (did,) = await register(env.chain.url)
    space_id = await resolve(env.hs, user.access_token, f"#space.{did.replace(':', '-')}:localhost")
    record = env.bot.store.get(did)
    assert record is not None and record.space is not None and record.space.room_id == space_id


async def test_malformed_and_impossible_chain_entities_are_skipped(env: Env) -> None:
    too_long = "did:ixo:entity:" + "f" * 250
    events = [
        [{"type": ENTITY_CREATED_EVENT, "attributes": [{"key": "entity", "value": "{"}]}],
        [
            {
                "type": ENTITY_CREATED_EVENT,
                "attributes": [{"key": "entity", "value": json.dumps({"id": too_long})}],
            }
        ],
    ]
    async with CometRpc(env.chain.url) as rpc:
        for ev in events:
            await rpc.broadcast_tx_commit(emit_events_tx(ev))
    [good] = await register(env.chain.url)
    await until(lambda: env.bot.store.get(good) is not None, what="the good entity")
    await until(lambda: env.bot.store.skipped_count() == 2, what="both skips recorded")
    reasons = " | ".join(s.reason for s in env.bot.store.skipped())
    assert "not valid JSON" in reasons and "too long" in reasons


# -- the appservice API ------------------------------------------------------------------


async def test_transactions_are_idempotent_and_need_the_hs_token(env: Env) -> None:
    url = f"{env.url}/_matrix/app/v1/transactions/txn-1"
    body = {
        "events": [
            {
                "type": "m.room.message",
                "room_id": "!r:localhost",
                "sender": "@a:localhost",
                "content": {"body": "hi"},
            }
        ]
    }
    hs_token = env.ashs.registration.hs_token
    for _ in range(2):
        status, res = await call("PUT", url, token=hs_token, json_body=body)
        assert (status, res) == (200, {})
    m = env.bot.metrics
    assert m.as_transactions.labels("new")._value.get() == 1
    assert m.as_transactions.labels("duplicate")._value.get() == 1
    assert env.bot.store.txn_seen("txn-1")
    status, res = await call("PUT", url, json_body=body)
    assert status == 401 and res["errcode"] == "M_UNAUTHORIZED"
    status, res = await call("PUT", url, token="wrong", json_body=body)
    assert status == 403 and res["errcode"] == "M_FORBIDDEN"
    status, res = await call(
        "GET", f"{env.url}/_matrix/app/v1/rooms/%23did-ixo-x%3Alocalhost", token="wrong"
    )
    assert status == 403
    status, _ = await call(
        "GET",
        f"{env.url}/_matrix/app/v1/users/{quote(env.ashs.registration.user_id)}",
        token=hs_token,
    )
    assert status == 200
    status, res = await call(
        "GET", f"{env.url}/_matrix/app/v1/users/%40nobody%3Alocalhost", token=hs_token
    )
    assert status == 404 and res["errcode"] == "M_NOT_FOUND"


def test_the_registration_file(ashs: AppserviceHomeserver) -> None:
    reg = ashs.registration
    assert stat.S_IMODE(reg.path.stat().st_mode) == 0o600
    data = yaml.safe_load(reg.path.read_text())
    assert data["rate_limited"] is False
    assert all(ns["exclusive"] for kind in ("users", "aliases") for ns in data["namespaces"][kind])
    assert reg.alias_in_namespace("#did-ixo-entity-ab:localhost")
    assert reg.alias_in_namespace("#space.did-ixo-entity-ab:localhost")
    assert not reg.alias_in_namespace("#did-ixo-entity-ab:elsewhere.org")
    assert not reg.alias_in_namespace("#general:localhost")
    assert reg.user_in_namespace("@roomsbot-agent:localhost")
    assert not reg.user_in_namespace("@alice:localhost")
    assert reg.as_token not in repr(reg) and reg.hs_token not in repr(reg)
    # Rewriting keeps the tokens (a running homeserver still knows them).
    again = write_registration(reg.path, server_name="localhost", url=reg.url)
    assert (again.as_token, again.hs_token) == (reg.as_token, reg.hs_token)
    assert load_registration(reg.path) == again


async def test_synapse_refuses_the_namespace_to_ordinary_users(env: Env) -> None:
    user = await env.hs.new_user("squatter")
    async with MatrixHttp(env.hs.base_url, user.access_token) as http:
        with pytest.raises(HomeserverError) as info:
            await http.request(
                "POST",
                "/_matrix/client/v3/createRoom",
                json={"room_alias_name": "did-ixo-entity-squat"},
            )
    assert info.value.status == 400 and info.value.errcode == "M_EXCLUSIVE"


async def test_controller_names_belong_to_the_appservice(env: Env, tmp_path: Path) -> None:
    """Issue 11, item 9: a controller DID maps to ``@did-…`` by name, so whoever could
    register that name would get the entity rooms' admin invites. The registration
    reserves ``@did-…`` exclusively; a bot whose registration does not never invites."""
    reg = env.ashs.registration
    ctl, controller = await new_controller(env.ashs)  # made through the appservice
    ctl_uid = ctl.user_id
    assert reg.controllers_exclusive and reg.controller_in_namespace(ctl_uid)
    assert not reg.controller_in_namespace("@alice:localhost")
    assert not reg.controller_in_namespace(ctl_uid.replace("localhost", "elsewhere.org"))
    # Synapse refuses the name to anyone but the appservice, even to its admin API (and
    # so to open registration).
    with pytest.raises(HomeserverError) as info:
        await env.hs.new_user("did-ixo-ixo1squatter")
    assert info.value.errcode == "M_EXCLUSIVE"

    # An old registration (no @did- namespace): its bot invites no controller.
    data = yaml.safe_load(reg.path.read_text())
    data["namespaces"]["users"] = data["namespaces"]["users"][:1]
    old_path = tmp_path / "old-registration.yaml"
    old_path.write_text(yaml.safe_dump(data))
    old = load_registration(old_path)
    assert not old.controllers_exclusive and not old.controller_in_namespace(ctl_uid)
    bot = RoomsBot(
        homeserver_url=env.hs.base_url,
        registration=old,
        store_path=tmp_path / "old-store.db",
        settings=RoomsBotSettings(port=free_port()),
    )
    await bot.http.whoami()
    await bot.rooms.prepare()
    try:
        did = "did:ixo:entity:" + uuid.uuid4().hex
        record, _ = await bot.rooms.ensure(EntityFacts(did, None, (controller,), "chain"))
        assert record.members == ()
        state = await state_of(env.hs, env.as_token, record.room_id)
        assert ("m.room.member", ctl_uid) not in state
        assert ctl_uid not in state[("m.room.power_levels", "")]["users"]
    finally:
        await bot.stop()
    # The current registration's bot does invite it.
    record, _ = await env.bot.rooms.ensure(
        EntityFacts("did:ixo:entity:" + uuid.uuid4().hex, None, (controller,), "chain")
    )
    assert record.members == (ctl_uid,)


# -- the REST API ---------------------------------------------------------------------


async def test_rest_api(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ctl, ctl_did = await new_controller(env.ashs)
    stranger = await env.hs.new_user("stranger")
    token = await openid_token(env.hs, stranger)
    ctl_token = await openid_token(env.hs, ctl)
    op_token = await openid_token(env.hs, env.operator)
    did = "did:ixo:entity:" + "01" * 16

    status, res = await call("POST", f"{env.url}/rooms/source", json_body={"did": did})
    assert status == 401 and res["errcode"] == "M_MISSING_TOKEN", res
    status, res = await call(
        "POST", f"{env.url}/rooms/source", token="forged", json_body={"did": did}
    )
    assert status == 401 and res["errcode"] == "M_UNKNOWN_TOKEN"
    status, res = await call(
        "POST",
        f"{env.url}/rooms/source",
        token=token,
        json_body={"did": did},
        headers={"X-Matrix-Server-Name": "evil.example"},
    )
    # The same answer as the state bot's (one shared OpenID verifier).
    assert status == 401 and res["errcode"] == "DR_UNKNOWN_HOMESERVER"

    status, res = await call("GET", f"{env.url}/rooms/{did}", token=token)
    assert status == 404 and res["errcode"] == "M_NOT_FOUND"
    status, res = await call(
        "POST", f"{env.url}/rooms/source", token=token, json_body={"did": "not a did"}
    )
    assert status == 400 and res["errcode"] == "DR_INVALID"
    status, res = await call(
        "POST", f"{env.url}/rooms/source", token=token, json_body={"did": did, "surprise": 1}
    )
    assert status == 400 and res["errcode"] == "M_BAD_JSON"

    status, made = await call(
        "POST", f"{env.url}/rooms/source", token=token, json_body={"did": did}
    )
    assert status == 200 and made["created"] is True and made["did"] == did
    status, again = await call(
        "POST", f"{env.url}/rooms/source", token=token, json_body={"did": did}
    )
    assert status == 200 and again["created"] is False and again["room_id"] == made["room_id"]
    status, got = await call("GET", f"{env.url}/rooms/{did}", token=token)
    assert status == 200 and got["space"] == made["space"]
    status, ixo = await call("POST", f"{env.url}/room/source", token=token, json_body={"did": did})
    assert status == 200 and ixo == {"roomId": made["room_id"], "spaceId": made["space"]["room_id"]}

    # Inviting: not for strangers; for the entity's controllers and the operators.
    status, res = await call(
        "POST",
        f"{env.url}/rooms/source",
        token=token,
        json_body={"did": did, "user_id": stranger.user_id},
    )
    assert status == 403 and res["errcode"] == "DR_FORBIDDEN"
    status, res = await call(
        "POST",
        f"{env.url}/rooms/source",
        token=op_token,
        json_body={"did": did, "user_id": ctl.user_id},
    )
    assert status == 200, res
    state = await state_of(env.hs, env.as_token, made["room_id"])
    assert state[("m.room.member", ctl.user_id)]["membership"] == "invite"
    # The bot's own users can be joined (the bot acts as them).
    agent = "@roomsbot-agent1:localhost"
    status, res = await call(
        "POST",
        f"{env.url}/rooms/source",
        token=op_token,
        json_body={"did": did, "user_id": agent, "join": True},
    )
    assert status == 200, res
    for rid in (made["room_id"], made["space"]["room_id"]):
        state = await state_of(env.hs, env.as_token, rid)
        assert state[("m.room.member", agent)]["membership"] == "join"
    status, res = await call(
        "POST",
        f"{env.url}/rooms/source",
        token=op_token,
        json_body={"did": did, "user_id": ctl.user_id, "join": True},
    )
    assert status == 400 and "own users" in res["error"]

    # A controller (from the chain) may invite, too.
    chain_did = (await register(env.chain.url, controllers=[ctl_did]))[0]
    await until(lambda: env.bot.store.get(chain_did) is not None, what="the chain entity")
    status, res = await call(
        "POST",
        f"{env.url}/rooms/source",
        token=ctl_token,
        json_body={"did": chain_did, "user_id": stranger.user_id},
    )
    assert status == 200, res

    status, health = await call("GET", f"{env.url}/health")
    assert status == 200 and health["entities"] >= 2 and health["chain"]["connected"]
    status, metrics = await call("GET", f"{env.url}/metrics")
    assert status == 200 and "roomsbot_rooms_created_total" in metrics
    assert "roomsbot_chain_processed_height" in metrics
    status, spec = await call("GET", f"{env.url}/openapi.json")
    assert status == 200 and "/rooms/source" in spec["paths"]
    status, res = await call("GET", f"{env.url}/no/such/path")
    assert status == 404 and res["errcode"] == "M_UNRECOGNIZED"

    for secret in (
        token,
        ctl_token,
        op_token,
        env.ashs.registration.as_token,
        env.ashs.registration.hs_token,
    ):
        assert secret not in caplog.text


# -- fuzzing ----------------------------------------------------------------------------


async def test_fuzz_the_rest_api(env: Env) -> None:
    """schemathesis against the OpenAPI document: whatever it sends, never a 5xx."""
    user = await env.hs.new_user("fuzzer")
    token = await openid_token(env.hs, user)
    calls, failures = await asyncio.to_thread(fuzz, env.url, token)
    assert calls > 50
    assert not failures, "\n".join(failures[:20])


# -- the platform services ----------------------------------------------------------------


async def test_the_platform_services(ashs: AppserviceHomeserver) -> None:
    from datarooms.account import Credentials
    from datarooms.config import load_settings
    from datarooms.errors import AlreadyRunningError
    from datarooms.services.platform import PlatformContext
    from datarooms.services.roomsbot import (
        ChainSettings,
        DevchainService,
        RoomsBotService,
        appservice_synapse_config,
    )
    from datarooms.services.roomsbot.service import running_url

    settings = load_settings(data_dir=ashs.data_dir, env={})
    rb = RoomsBotSettings(port=ashs.port)
    # What the platform merges into Synapse's config before starting it: the same file.
    assert appservice_synapse_config(settings, rb) == {
        "app_service_config_files": [str(ashs.registration.path)]
    }
    cs = ChainSettings(port=0, chain_id="platform-test", block_interval=0.05)
    ctx = PlatformContext(
        settings, ashs.hs.base_url, Credentials(ashs.hs.base_url, "@datarooms:localhost"), None
    )
    devchain, roomsbot = DevchainService(cs), RoomsBotService(rb, cs)
    chain_info = await devchain.start(ctx)
    try:
        bot_info = await roomsbot.start(ctx)
        try:
            assert bot_info["chain"] == chain_info["rpc"] == running_url(settings, "devchain")
            assert running_url(settings, "roomsbot") == bot_info["url"]
            [did] = await register(chain_info["rpc"])
            assert roomsbot.bot is not None
            bot = roomsbot.bot
            await until(lambda: bot.store.get(did) is not None, what="the entity's rooms")
            with pytest.raises(AlreadyRunningError, match="already running"):
                await RoomsBotService(rb, cs).start(ctx)
        finally:
            await roomsbot.stop()
    finally:
        await devchain.stop()
    assert running_url(settings, "roomsbot") is None
    assert running_url(settings, "devchain") is None


# -- the request guard: authentication before the body ------------------------------------


async def test_a_huge_chunked_body_without_auth_is_refused_before_it_is_read(env: Env) -> None:
    """A chunked body has no Content-Length to check: the bot must answer 401 from the
    headers alone, not read (and parse) 150 MB first."""
    total, chunk = 150 * 2**20, b"x" * 2**20
    reader, writer = await asyncio.open_connection("127.0.0.1", env.ashs.port)
    writer.write(
        b"POST /rooms/source HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sent = 0

    async def pump() -> None:
        nonlocal sent
        try:
            while sent < total:
                writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                await writer.drain()
                sent += len(chunk)
        except (ConnectionError, OSError):
            pass  # the bot answered and closed the connection: what we want

    pumping = asyncio.create_task(pump())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 60)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        body = json.loads(await reader.readexactly(length))
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        writer.close()
    assert status_line.split()[1] == b"401", status_line
    assert body["errcode"] == "M_MISSING_TOKEN"
    assert sent < total // 2, f"the bot read {sent} bytes of an unauthenticated body"
    # The REST cap still holds for authenticated callers, whatever the framing.
    user = await env.hs.new_user("big")
    token = await openid_token(env.hs, user)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 2**20

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{env.url}/rooms/source",
            data=chunks(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 413 and (await r.json())["errcode"] == "M_TOO_LARGE"


# -- the SDK asks the rooms bot for entity rooms -------------------------------------------


async def test_the_sdk_asks_the_rooms_bot_for_entity_rooms(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datarooms import Credentials, DataroomsClient
    from datarooms.config import load_settings
    from datarooms.errors import AccessDeniedError
    from datarooms.ids import entity_alias
    from datarooms.services.scaffold import write_run_file

    did = "did:ixo:entity:" + "5d" * 16
    operator = await DataroomsClient.open(
        Credentials(env.hs.base_url, env.operator.user_id, env.operator.access_token),
        tmp_path / "operator",
    )
    stranger_user = await env.hs.new_user("stranger")
    stranger = await DataroomsClient.open(
        Credentials(env.hs.base_url, stranger_user.user_id, stranger_user.access_token),
        tmp_path / "stranger",
    )
    try:
        # No rooms bot found (no run file, no [roomsbot] url): the SDK makes the room
        # itself, and the homeserver refuses: the alias namespace is the bot's.
        monkeypatch.setenv("DATAROOMS_DATA_DIR", str(tmp_path / "data"))
        with pytest.raises(AccessDeniedError, match="rooms bot") as refused:
            await operator.rooms.create("entity", did=did, alias=True)
        assert refused.value.errcode == "M_EXCLUSIVE"

        # The platform's run file names the running bot: the SDK asks it.
        write_run_file(load_settings(), "roomsbot", {"url": env.url})
        room = await operator.rooms.create("entity", did=did, alias=True)
        record = env.bot.store.get(did)
        assert record is not None and room.room_id == record.room_id
        assert room.alias == entity_alias(did, "localhost") and room.did == did
        assert room.room_id in operator.nio.rooms  # joined
        assert await operator.rooms.resolve(room.alias) == room.room_id
        # As if they had made it: an admin, who writes records.
        state = await state_of(env.hs, env.as_token, room.room_id)
        assert state[("m.room.power_levels", "")]["users"][env.operator.user_id] == 100
        await operator.records.put(room.room_id, "config", {"unit": "C"})
        assert (await operator.records.get(room.room_id, "config")).value == {"unit": "C"}
        # Asking again finds the same room.
        again = await operator.rooms.create("entity", did=did, alias=True)
        assert again.room_id == room.room_id

        # The bot decides who may be added: not a stranger.
        with pytest.raises(AccessDeniedError, match="controllers"):
            await stranger.rooms.create("entity", did=did, alias=True)
        assert room.room_id not in stranger.nio.rooms
    finally:
        await operator.close()
        await stranger.close()


# -- the config file reaches the bot --------------------------------------------------------


async def test_the_config_files_roomsbot_port_is_where_the_bot_listens(
    ashs: AppserviceHomeserver, tmp_path: Path
) -> None:
    from datarooms.account import Credentials
    from datarooms.config import load_settings
    from datarooms.services.platform import PlatformContext
    from datarooms.services.roomsbot import RoomsBotService, appservice_synapse_config

    config = tmp_path / "datarooms.toml"
    config.write_text(f"[roomsbot]\nport = {ashs.port}\n\n[chain]\nwatch = false\n")
    settings = load_settings(data_dir=ashs.data_dir, config_file=config, env={})
    assert settings.roomsbot.port == ashs.port != 8011 and settings.chain.watch is False
    # The registration the platform writes before Synapse starts names that port ...
    assert appservice_synapse_config(settings) == {
        "app_service_config_files": [str(ashs.registration.path)]
    }
    assert load_registration(ashs.registration.path).port == ashs.port
    ctx = PlatformContext(
        settings, ashs.hs.base_url, Credentials(ashs.hs.base_url, "@datarooms:localhost"), None
    )
    service = RoomsBotService()  # no settings of its own: the platform's
    info = await service.start(ctx)
    try:
        # ... and the bot listens there.
        assert info["url"] == f"http://127.0.0.1:{ashs.port}"
        status, health = await call("GET", f"http://127.0.0.1:{ashs.port}/health")
        assert status == 200 and health["user_id"] == ashs.registration.user_id
        assert health["chain"] is None  # [chain] watch = false reached it too
    finally:
        await service.stop()
