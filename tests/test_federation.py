"""Data rooms across organisations: homeservers that federate over TLS (verification on).

Four real Synapses, each an organisation with a loopback address of its own:

- ``a`` federates with a, b, c and d; ``c`` with a, b, c;
- ``b`` federates only with a and b (its allow-list leaves c out);
- ``d`` is rogue: its certificate comes from a CA no one trusts.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.errors import AccessDeniedError, DataroomsError
from datarooms.testing import TestFederation, TestHomeserver
from tests._wait import until
from tests.test_server_blind import _scan

pytestmark = pytest.mark.xdist_group("federation")
FULL = os.environ.get("DATAROOMS_FULL_TESTS") == "1"
T0 = 1_700_000_040_000


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestFederation]:
    from datarooms.homeserver.embedded import free_port
    from datarooms.services.roomsbot.registration import write_registration

    directory = tmp_path_factory.mktemp("federation")
    federation = TestFederation(
        directory,
        ["a", "b", "c", "d"],
        allow={"b": ["a"], "c": ["a", "b"], "a": ["b", "c", "d"], "d": ["a"]},
        rogue=("d",),
    )
    # Org a runs a rooms bot: its Synapse loads the bot's appservice registration.
    reg = write_registration(
        directory / "roomsbot" / "registration.yaml",
        server_name=federation.server_names["a"],
        url=f"http://127.0.0.1:{free_port()}",
    )
    federation["a"].synapse.extra_config["app_service_config_files"] = [str(reg.path)]
    federation.roomsbot_registration = reg  # type: ignore[attr-defined]
    with federation:
        yield federation


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator:  # type: ignore[type-arg]
    opened: list[DataroomsClient] = []

    async def _open(hs: TestHomeserver, prefix: str) -> DataroomsClient:
        user = await hs.new_user(prefix)
        creds = Credentials(hs.base_url, user.user_id, user.access_token)
        client = await DataroomsClient.open(creds, tmp_path / user.user_id)
        opened.append(client)
        return client

    yield _open
    for c in opened:
        await c.close()


async def _accept(client: DataroomsClient, room: str) -> None:
    async def invited() -> bool:
        await client.sync_once()
        return room in client.invites()

    await _until_async(invited, "the invite to cross the federation")
    await client.rooms.join(room)
    await client.fill_gaps(room)
    await client.sync_once()


async def _until_async(cond, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _sees(client: DataroomsClient, room: str, key: str, value: object) -> None:
    async def seen() -> bool:
        await client.sync_once()
        rec = client.index.latest(room, key)
        return rec is not None and rec.value == value

    await _until_async(seen, f"{client.user_id} to read {key}")


async def test_a_cross_org_data_room_end_to_end(orgs, device, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = await device(orgs["a"], "alice")
    bob = await device(orgs["b"], "bob")
    tag = uuid.uuid4().hex[:10]
    room = await alice.rooms.create("device", name="pump 7", servers=[orgs.server_names["b"]])
    rid = room.room_id
    acl = alice.rooms.server_acl(rid)
    assert acl is not None and acl.allows(orgs.server_names["b"])
    assert not acl.allows(orgs.server_names["c"])
    # Written before the grant: bob gets it through the key bundle, across servers.
    await alice.records.put(rid, "temperature", {"c": 21.5, "tag": tag})
    src = tmp_path / "report.txt"
    src.write_text(f"FED-FILE-{tag}\n" * 200)
    ref = await alice.files.put(rid, src)
    await alice.messages.send(rid, f"FED-MSG-{tag}")

    await alice.rooms.grant(rid, bob.user_id, "write")
    await _accept(bob, rid)
    assert (await bob.records.get(rid, "temperature")).value == {"c": 21.5, "tag": tag}
    assert f"FED-FILE-{tag}".encode() in await bob.files.read(rid, ref.event_id)
    texts = [e.content.get("body") for e in await bob.messages.recent(rid, limit=20)]
    assert f"FED-MSG-{tag}" in texts
    # ... and writes back.
    await bob.records.put(rid, "setpoint", {"c": 19.0})
    await _sees(alice, rid, "setpoint", {"c": 19.0})

    # The access review shows which servers hold a copy of the room.
    copies = {c.server_name: c for c in alice.rooms.servers(rid)}
    assert set(copies) == {orgs.server_names["a"], orgs.server_names["b"]}
    assert copies[orgs.server_names["b"]].members == (bob.user_id,)
    assert all(c.allowed for c in copies.values())

    # Revoke: bob's server no longer holds a member, and later writes are not his to read.
    await alice.rooms.revoke(rid, bob.user_id)
    await alice.records.put(rid, "after", {"secret": tag})
    await bob.sync_once()
    await asyncio.sleep(0.5)
    await bob.sync_once()
    assert bob.index.latest(rid, "after") is None
    assert {c.server_name for c in alice.rooms.servers(rid)} == {orgs.server_names["a"]}

    # No plaintext on either homeserver.
    markers = [f"FED-FILE-{tag}", f"FED-MSG-{tag}", tag]
    for name in ("a", "b"):
        hits = _scan(orgs[name], markers)
        assert hits == [], hits


async def test_a_server_outside_the_acl_cannot_join(orgs, device) -> None:  # type: ignore[no-untyped-def]
    alice = await device(orgs["a"], "alice")
    carol = await device(orgs["c"], "carol")
    rid = (await alice.rooms.create("device", servers=[orgs.server_names["b"]])).room_id
    # The SDK says so before asking anything of anyone ...
    with pytest.raises(AccessDeniedError, match="server ACL"):
        await alice.rooms.grant(rid, carol.user_id, "read")
    # ... and the homeservers enforce it when the SDK is bypassed: an invite sent anyway
    # cannot be accepted.
    async with alice.http() as http:
        await http.request(
            "POST", f"/_matrix/client/v3/rooms/{rid}/invite", json={"user_id": carol.user_id}
        )
    await _until_async(_invited(carol, rid), "carol's invite")
    with pytest.raises(DataroomsError):
        await carol.rooms.join(rid)
    assert carol.user_id not in {
        m.user_id for m in alice.rooms.members(rid) if m.membership == "join"
    }

    # Allowing the server lets carol in; denying it again removes her.
    await alice.rooms.allow_server(rid, orgs.server_names["c"])
    await alice.rooms.grant(rid, carol.user_id, "read")
    await _accept(carol, rid)

    async def carol_holds_a_copy() -> bool:
        await alice.sync_once()
        return orgs.server_names["c"] in {c.server_name for c in alice.rooms.servers(rid)}

    await _until_async(carol_holds_a_copy, "carol's join to reach alice")
    await alice.rooms.deny_server(rid, orgs.server_names["c"])
    acl = alice.rooms.server_acl(rid)
    assert acl is not None and not acl.allows(orgs.server_names["c"])
    assert orgs.server_names["c"] not in {c.server_name for c in alice.rooms.servers(rid)}


def _invited(client: DataroomsClient, room: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        await client.sync_once()
        return room in client.invites()

    return check


async def test_a_peer_off_the_allow_list_is_refused(orgs, device) -> None:  # type: ignore[no-untyped-def]
    carol = await device(orgs["c"], "carol")
    bob = await device(orgs["b"], "bob")
    rid = (await carol.rooms.create("device")).room_id
    with pytest.raises(DataroomsError, match="allow-list"):
        await carol.rooms.grant(rid, bob.user_id, "read")
    await bob.sync_once()
    assert rid not in bob.invites()


async def test_a_peer_with_an_untrusted_certificate_is_refused(orgs, device) -> None:  # type: ignore[no-untyped-def]
    alice = await device(orgs["a"], "alice")
    dave = await device(orgs["d"], "dave")
    rid = (await alice.rooms.create("device")).room_id
    with pytest.raises(DataroomsError, match="TLS certificate is not trusted"):
        await alice.rooms.grant(rid, dave.user_id, "read")
    await dave.sync_once()
    assert rid not in dave.invites()
    log = orgs["a"].synapse.log_path.read_text(errors="replace")
    assert "certificate verify failed" in log, "Synapse says why it refused the peer"


OUTAGE_RECORDS = 200 if FULL else 55  # 110 puts: two Megolm sessions (one rotation)


async def test_an_outage_of_the_readers_server_loses_nothing(orgs, device) -> None:  # type: ignore[no-untyped-def]
    """Org b's homeserver is down while org a writes records and telemetry; once it is back,
    b's reader has every record exactly once and every sample.

    The writer has never sent bob's device a key before the outage (no Olm session), and
    cannot reach b for one-time keys while it is down: the Megolm sessions it starts are
    owed to bob and sent to him (from their first index) once b is back."""
    from datarooms.sdk.telemetry import Telemetry

    alice = await device(orgs["a"], "alice")
    bob = await device(orgs["b"], "bob")
    rid = (await alice.rooms.create("device", servers=[orgs.server_names["b"]])).room_id
    await alice.rooms.grant(rid, bob.user_id, "read")
    await _accept(bob, rid)

    await orgs.stop("b")
    try:
        async with Telemetry(alice) as ta:
            for i in range(OUTAGE_RECORDS):
                await alice.records.put(rid, "reading", {"n": i})
                await alice.records.put(rid, f"k{i % 7}", {"n": i})
            await ta.append_many(rid, [(T0 + i, "temp", float(i)) for i in range(100)])
            await ta.flush(timeout=60)
        assert alice.keys.sharing.owes, "the session is owed to bob, whose server is down"
    finally:
        await orgs.start("b")
    alice.start_sync()  # the writer stays online: it pays what it owes once b is back

    async def caught_up() -> bool:
        await bob.sync_once()
        await bob.fill_gaps(rid)
        return bob.index.count(rid) >= alice.index.count(rid)

    try:
        await _until_async(caught_up, "b's reader to catch up after the outage", timeout=120)
    finally:
        await alice.stop_sync()
    assert not alice.keys.sharing.owes
    versions = bob.index.history(rid, "reading")
    assert [r.value["n"] for r in versions] == list(range(OUTAGE_RECORDS)), (
        "none lost or duplicated"
    )
    assert bob.index.count(rid) == alice.index.count(rid)
    async with Telemetry(bob) as tb:
        rows = await tb.query(rid, "temp", limit=1000)
    assert [s.value for s in rows] == [float(i) for i in range(100)]


async def test_the_state_bot_finds_callers_homeservers_by_discovery(orgs, device) -> None:  # type: ignore[no-untyped-def]
    """No URL map: the bot on org a verifies org b's caller with b's own homeserver, found by
    server discovery and reached over TLS verified against the local CA; a caller of a
    server outside the bot's federation policy is refused without a request to it."""
    import ssl

    from datarooms.errors import UnauthorizedError
    from datarooms.homeserver.federation import ServerResolver
    from datarooms.services.openid import FederationTrust
    from datarooms.services.statebot import StateBot, StateBotClient, StateBotConfig

    ctx = ssl.create_default_context(cafile=str(orgs.ca_file))
    policy = FederationTrust((orgs.server_names["b"],), ServerResolver(ssl_context=ctx), ctx)
    bot = StateBot(
        await device(orgs["a"], "statebot"), config=StateBotConfig(port=0), federation=policy
    )
    await bot.start()
    try:
        alice = await device(orgs["a"], "alice")
        bob = await device(orgs["b"], "bob")
        carol = await device(orgs["c"], "carol")
        rid = (await alice.rooms.create("device")).room_id
        await alice.rooms.grant(rid, bob.user_id, "admin")  # room state needs admin power
        await alice.rooms.grant(rid, carol.user_id, "admin")
        await alice.rooms.grant(rid, bot.client.user_id, "admin")
        await _accept(bob, rid)
        await _accept(carol, rid)
        async with StateBotClient.for_client(bot.url, alice) as api:
            assert await api.join(rid) == rid
        await until(lambda: bot.client.membership(rid) == "join", what="the bot's join")
        async with StateBotClient.for_client(bot.url, bob) as api:
            await api.set(rid, "config", {"mode": "eco"})
            assert await api.get(rid, "config") == {"mode": "eco"}
        async with StateBotClient.for_client(bot.url, carol) as api:
            with pytest.raises(UnauthorizedError, match="not one this service trusts"):
                await api.get(rid, "config")
        assert bot.verifier.cache_size == 2  # alice's and bob's tokens; carol's never asked
    finally:
        await bot.stop()


async def test_a_controller_on_another_homeserver_gets_its_entity_room(  # type: ignore[no-untyped-def]
    orgs, device, tmp_path: Path
) -> None:
    """Org a's rooms bot makes an entity's rooms when org b resolves the entity's alias (a
    federated directory query reaches a's appservice), and gives the entity's controller,
    whose account is on org b, admin access when it asks with a token from b."""
    import ssl

    from datarooms.chain.entity import controller_localpart
    from datarooms.config import ChainSettings, RoomsBotSettings
    from datarooms.homeserver.admin import register_user
    from datarooms.homeserver.federation import ServerResolver
    from datarooms.ids import entity_alias
    from datarooms.services.openid import FederationTrust
    from datarooms.services.roomsbot.bot import RoomsBot
    from tests._roomsbot import register, resolve, running_devchain

    b_name = orgs.server_names["b"]
    ctx = ssl.create_default_context(cafile=str(orgs.ca_file))
    controller_did = f"did:ixo:ixo1{uuid.uuid4().hex[:12]}"
    async with running_devchain(tmp_path / "chain") as chain:
        (did,) = await register(chain.url, controllers=[controller_did])
        bot = RoomsBot(
            homeserver_url=orgs["a"].base_url,
            registration=orgs.roomsbot_registration,
            store_path=tmp_path / "roomsbot.db",
            settings=RoomsBotSettings(controller_servers=b_name),
            chain_url=chain.url,
            chain=ChainSettings(watch=False),
            federation=FederationTrust((b_name,), ServerResolver(ssl_context=ctx), ctx),
        )
        await bot.start()
        try:
            # Org b asks its own homeserver for the alias; a's rooms bot makes the rooms.
            someone = await orgs["b"].new_user("someone")
            alias = entity_alias(did, orgs.server_names["a"])
            room_id = await resolve(orgs["b"], someone.access_token, alias)
            assert room_id.startswith("!")

            local = controller_localpart(controller_did)
            assert local is not None
            secret = orgs["b"].synapse.registration_shared_secret
            user = await register_user(orgs["b"].base_url, secret, local)
            ctrl = await DataroomsClient.open(
                Credentials(orgs["b"].base_url, user.user_id, user.access_token),
                tmp_path / "controller",
            )
            try:
                ctrl.rooms.roomsbot_url = bot.url
                room = await ctrl.rooms.create("entity", did=did, alias=True)
                assert room.room_id == room_id and room.alias == alias
                await ctrl.sync_once()
                assert ctrl.rooms.view(room_id).power(ctrl.user_id) == 100
                await ctrl.records.put(room_id, "owner-note", {"ok": True})

                # Anyone else on b is not the controller: refused.
                stranger = await device(orgs["b"], "stranger")
                stranger.rooms.roomsbot_url = bot.url
                with pytest.raises(AccessDeniedError, match="controllers"):
                    await stranger.rooms.create("entity", did=did, alias=True)
            finally:
                await ctrl.close()
        finally:
            await bot.stop()


async def test_matrix_js_sdk_on_another_server_reads_and_writes(orgs, device) -> None:  # type: ignore[no-untyped-def]
    """A client no one here wrote, on org b: matrix-js-sdk 43 (Rust crypto) joins our
    room on org a across the federation, decrypts the history we shared on grant, and
    writes a record that our SDK on org a decrypts."""
    from datarooms.events import RECORD
    from tests.interop.jsclient import JsClient, ensure_js_deps

    ensure_js_deps()
    alice = await device(orgs["a"], "alice")
    js_user = await orgs["b"].new_user("jsbob")
    rid = (await alice.rooms.create("collaboration", servers=[orgs.server_names["b"]])).room_id
    for i in range(5):
        await alice.records.put(rid, f"k{i}", {"i": i})
    async with JsClient(name="jsbob") as js:
        await js.login(orgs["b"].base_url, js_user.user_id, js_user.password)
        assert (await js.bootstrap_cross_signing(js_user.password))["ready"] is True
        await alice.rooms.grant(rid, js_user.user_id, "write")
        await js.accept_invite(rid)
        got = await js.history(rid, RECORD, 5, timeout=90)
        assert {e["content"]["key"] for e in got["events"]} == {f"k{i}" for i in range(5)}, got[
            "failures"
        ][:3]
        await js.send_event(rid, RECORD, {"key": "from-js", "value": {"ok": 1}, "txn": "js-1"})
        await _sees(alice, rid, "from-js", {"ok": 1})


async def test_a_policy_list_bans_a_federated_members_server(  # type: ignore[no-untyped-def]
    orgs, device, tmp_path: Path
) -> None:
    """Issue 16: a policy list's server rule shuts a federated server out of a data room:
    its member is banned and the room's server ACL denies the server."""
    from datarooms.ids import server_host
    from datarooms.sdk.automation.moderation import create_policy_list, put_rule, subscribe
    from tests._automation import room_with_bot, start_service

    _ctx, svc, _ = await start_service(orgs["a"], tmp_path / "auto")
    assert svc.bot is not None
    bot = svc.bot.client
    try:
        alice = await device(orgs["a"], "alice")
        bob = await device(orgs["b"], "bob")
        room = await room_with_bot(alice, svc)
        await alice.rooms.allow_server(room, orgs.server_names["b"])
        await alice.rooms.grant(room, bot.user_id, "admin")
        await alice.rooms.grant(room, bob.user_id, "write")
        await _accept(bob, room)
        policy = await create_policy_list(alice, "federation bans")
        await alice.nio.room_invite(policy, bot.user_id)
        b_host = server_host(orgs.server_names["b"])
        await put_rule(alice, policy, "server", b_host, "compromised")
        await subscribe(alice, room, [policy])
        await until(lambda: bot.rooms.view(room).membership(bob.user_id) == "ban", 60, "bob banned")
        await until(
            lambda: b_host in getattr(bot.rooms.server_acl(room), "deny", ()),
            30,
            "the ACL to deny b",
        )
        final = bot.rooms.server_acl(room)
        assert final is not None and not final.allows(orgs.server_names["b"])
        assert final.allows(orgs.server_names["a"])
    finally:
        await svc.stop()
