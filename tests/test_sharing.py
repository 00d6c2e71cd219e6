"""History sharing on grant (MSC4268 key bundles), between our own SDK clients.

Real Synapse, no mocks: a grantee on a fresh device reads history written before
the grant; ``joined`` visibility shares nothing; bad bundles import nothing; one
outbound Megolm session serves many processes of one device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datarooms import Credentials, DataroomsClient
from datarooms.testing import TestHomeserver

FULL = os.environ.get("DATAROOMS_FULL_TESTS") == "1"
N = 1000 if FULL else 120  # > 100: more than one Megolm session


async def _set_visibility(client: DataroomsClient, room: str, visibility: str) -> None:
    async with client.http() as http:
        await http.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/",
            json={"history_visibility": visibility},
        )
    await client.sync_once()


def _sessions(client: DataroomsClient, room: str) -> set[str]:
    olm = client.nio.olm
    assert olm is not None
    return {s.id for s in olm.inbound_group_store if s.room_id == room}


async def _grant_and_join(owner: DataroomsClient, grantee: DataroomsClient, room: str) -> None:
    await owner.rooms.grant(room, grantee.user_id, "read")
    await grantee.sync_once()
    await grantee.rooms.join(room)
    await grantee.fill_gaps(room)
    await grantee.sync_once()


async def test_grantee_reads_history_written_before_the_grant(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = (await alice.rooms.create("device", name="history")).room_id
    for i in range(N):
        await alice.records.put(room, f"k{i}", {"i": i})
    await alice.messages.send(room, "a message before the grant")
    assert len(_sessions(alice, room)) >= 2
    await _grant_and_join(alice, bob, room)
    got = {i for i in range(N) if bob.index.latest(room, f"k{i}") is not None}
    assert got == set(range(N))
    assert (await bob.records.get(room, f"k{N - 1}")).value == {"i": N - 1}
    assert _sessions(bob, room) == _sessions(alice, room)
    # What bob imported is shareable again by bob (a bundle re-shares it).
    assert bob.index.shared_sessions(room) >= _sessions(alice, room)


async def test_joined_visibility_shares_nothing(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = (await alice.rooms.create("device", name="joined only")).room_id
    await _set_visibility(alice, room, "joined")
    await alice.records.put(room, "secret", "before bob")
    assert alice.index.shared_sessions(room) == set()
    assert await alice.keys.sharing.share_history(room, bob.user_id) == 0
    await _grant_and_join(alice, bob, room)
    assert bob.index.latest(room, "secret") is None
    assert _sessions(bob, room) == set()


async def test_visibility_change_rotates_the_session(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, _bob = alice_bob
    room = (await alice.rooms.create("device", name="flip")).room_id
    await alice.records.put(room, "a", 1)
    first = _sessions(alice, room)
    assert alice.index.shared_sessions(room) == first
    await _set_visibility(alice, room, "joined")
    await alice.records.put(room, "b", 2)
    second = _sessions(alice, room) - first
    assert len(second) == 1
    assert not (second & alice.index.shared_sessions(room))
    bundle = alice.keys.sharing.build_bundle(room)
    assert [k["session_id"] for k in bundle["room_keys"]] == sorted(first)
    assert [w["session_id"] for w in bundle["withheld"]] == sorted(second)
    assert bundle["withheld"][0]["code"] == "m.history_not_shared"


async def test_one_session_across_processes(homeserver: TestHomeserver, tmp_path: Path) -> None:
    user = await homeserver.new_user("putter")
    creds = Credentials(homeserver.base_url, user.user_id, user.access_token)
    store = tmp_path / "store"
    async with await DataroomsClient.open(creds, store) as c:
        room = (await c.rooms.create("device", name="cli")).room_id
    for i in range(5):  # five processes of one device, one after the other
        async with await DataroomsClient.open(creds, store) as c:
            await c.records.put(room, f"k{i}", i)
    async with await DataroomsClient.open(creds, store) as c:
        assert len(_sessions(c, room)) == 1
        for i in range(5):
            assert (await c.records.get(room, f"k{i}")).value == i


async def test_bundles_that_must_be_rejected(alice_bob, homeserver, open_client) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    mallory = await open_client(await homeserver.new_user("mallory"))
    room = (await alice.rooms.create("device", name="target")).room_id
    await alice.records.put(room, "k", "v")
    other = (await mallory.rooms.create("device", name="mallory's")).room_id
    await mallory.records.put(other, "x", "y")
    # Mallory (not the inviter) sends bob a bundle for alice's room: kept, never used.
    await mallory.rooms.grant(other, bob.user_id, "read")  # a real bundle for her room
    await bob.sync_once()
    sent = bob.index.bundle(other, mallory.user_id)
    assert sent is not None
    forged = json.loads(sent)
    forged["content"]["room_id"] = room
    bob.index.put_bundle(room, mallory.user_id, json.dumps(forged), 0)
    # Alice invites; her own bundle is tampered with on the way (hash mismatch).
    await alice.rooms.grant(room, bob.user_id, "read")
    await bob.sync_once()
    real = json.loads(bob.index.bundle(room, alice.user_id) or "{}")
    real["content"]["file"]["hashes"]["sha256"] = "A" * 43
    bob.index.put_bundle(room, alice.user_id, json.dumps(real), 0)
    await bob.rooms.join(room)
    await bob.fill_gaps(room)
    assert bob.index.latest(room, "k") is None
    assert _sessions(bob, room) == set()
    assert bob.index.bundle(room, alice.user_id) is None  # one shot, as the peers
    # A bundle whose keys are for another room imports nothing of them.
    await bob.rooms.join(other)
    assert _sessions(bob, room) == set()
    assert _sessions(bob, other) == _sessions(mallory, other)


async def test_cli_puts_share_one_session_and_room_grant_shares_history(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    from tests._cli import clean_env, cli

    owner = await homeserver.new_user("cli-owner")
    bob = await open_client(await homeserver.new_user("cli-reader"))
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=owner.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=owner.access_token,
    )
    data_dir = tmp_path / "cli"

    def run(*args: str) -> str:
        res = cli(*args, data_dir=data_dir, env=env)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return res.stdout

    room = run("room", "create", "device", "--name", "cli history").split()[0]
    for i in range(5):  # five processes
        run("put", room, f"k{i}", str(i))
    run("room", "grant", room, bob.user_id, "read")  # after the writes: history is shared
    await bob.sync_once()
    await bob.rooms.join(room)
    await bob.fill_gaps(room)
    for i in range(5):
        assert (await bob.records.get(room, f"k{i}")).value == i
    async with bob.http() as http:
        page = await http.request(
            "GET", f"/_matrix/client/v3/rooms/{room}/messages", params={"dir": "b", "limit": "50"}
        )
    chunk = page["chunk"]
    sessions = {e["content"]["session_id"] for e in chunk if e["type"] == "m.room.encrypted"}
    assert len(sessions) == 1


async def test_bundle_from_a_device_its_owner_did_not_cross_sign_is_rejected(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    bob = await open_client(await homeserver.new_user("bob"))
    user = await homeserver.new_user("unsigned")
    solo = await DataroomsClient.open(
        Credentials(homeserver.base_url, user.user_id, user.access_token),
        tmp_path / "solo",
        cross_sign=False,
    )
    try:
        room = (await solo.rooms.create("device", name="unsigned sender")).room_id
        await solo.records.put(room, "k", "v")
        await solo.rooms.grant(room, bob.user_id, "read")
        await bob.sync_once()
        assert bob.index.bundle(room, solo.user_id) is not None  # it came
        await bob.rooms.join(room)
        await bob.fill_gaps(room)
        assert _sessions(bob, room) == set()  # and was refused
        assert bob.index.latest(room, "k") is None
    finally:
        await solo.close()


async def test_a_bundle_more_than_24_hours_after_the_join_is_not_used(alice_bob) -> None:  # type: ignore[no-untyped-def]
    import time

    alice, bob = alice_bob
    room = (await alice.rooms.create("device", name="stale")).room_id
    await alice.records.put(room, "k", "v")
    await alice.rooms.grant(room, bob.user_id, "read")
    await bob.sync_once()
    assert bob.index.bundle(room, alice.user_id) is not None
    day_ago = int(time.time() * 1000) - 25 * 3600 * 1000
    bob.index.set_join(room, alice.user_id, day_ago)
    assert await bob.keys.sharing.accept(room) == 0
    assert _sessions(bob, room) == set()
    assert bob.index.pending_joins() == {}


def test_keyed_store_keeps_the_copy_that_decrypts_from_earlier() -> None:
    import vodozemac
    from nio.crypto.sessions import InboundGroupSession

    from datarooms.sdk.keys.olm import KeyedGroupSessionStore

    outbound = vodozemac.GroupSession()
    full = InboundGroupSession(outbound.session_key.to_base64(), "ed", "curve", "!r:x")
    for _ in range(3):
        outbound.encrypt(b"x")
    later = InboundGroupSession.import_session(full.export_session(3), "ed", "curve", "!r:x")
    store = KeyedGroupSessionStore()
    assert store.add(later) is True
    assert store.add(full) is True  # better: replaces
    assert store.add(later) is False  # worse: ignored
    assert store.get("!r:x", "curve", full.id) is full
    assert store.room_sessions("!r:x") == [full] and store.count() == 1


async def test_a_device_without_the_keys_shares_them_from_the_backup(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    owner = await homeserver.new_user("owner")
    laptop = await open_client(owner, "laptop")
    bob = await open_client(await homeserver.new_user("bob"))
    recovery_key = await laptop.keys.setup_recovery()
    room = (await laptop.rooms.create("device", name="backed up")).room_id
    for i in range(3):
        await laptop.records.put(room, f"k{i}", i)
    # A second device of the owner, with the backup unlocked but nothing restored.
    phone = await DataroomsClient.open(
        Credentials(homeserver.base_url, owner.user_id, password=owner.password),
        tmp_path / "phone",
    )
    try:
        await phone.keys.unlock(recovery_key)
        await phone.fill_gaps(room)
        assert phone.index.pending_in_room(room) > 0
        await phone.rooms.grant(room, bob.user_id, "read")
        await bob.sync_once()
        await bob.rooms.join(room)
        await bob.fill_gaps(room)
        for i in range(3):
            assert (await bob.records.get(room, f"k{i}")).value == i
    finally:
        await phone.close()


async def test_a_session_never_steps_back_to_an_index_it_used(alice_bob) -> None:  # type: ignore[no-untyped-def]
    """The persisted session must not replace one this process advanced without the SDK
    (here nio's own room_send on the same device): the reader would see the same message
    index twice and refuse the second event as a replay."""
    alice, bob = alice_bob
    room = (await alice.rooms.create("project", name="index")).room_id
    await _grant_and_join(alice, bob, room)
    await alice.records.put(room, "a", 1)
    raw = await alice.nio.room_send(
        room, "m.room.message", {"msgtype": "m.text", "body": "raw"}, ignore_unverified_devices=True
    )
    assert getattr(raw, "event_id", None), raw
    await alice.records.put(room, "b", 2)
    await bob.sync_once()
    assert (await bob.records.get(room, "a")).value == 1
    assert (await bob.records.get(room, "b")).value == 2


async def test_regrant_after_revoke_shares_only_what_visibility_allowed(alice_bob) -> None:  # type: ignore[no-untyped-def]
    """Revoked, then granted again: the bundle carries what was written while the room's
    history was shareable (also while bob was out), never a `joined`-visibility session."""
    alice, bob = alice_bob
    room = (await alice.rooms.create("project", name="regrant")).room_id
    await alice.records.put(room, "before", 1)
    await _grant_and_join(alice, bob, room)
    assert (await bob.records.get(room, "before")).value == 1

    await alice.rooms.revoke(room, bob.user_id)
    await alice.records.put(room, "while-out", 2)  # shared visibility: a member may read it
    await _set_visibility(alice, room, "joined")
    await alice.records.put(room, "joined-only", 3)  # never shareable
    await _set_visibility(alice, room, "shared")
    await alice.records.put(room, "after", 4)

    # Bob does not sync between the kick and the new invite: both come in one sync.
    await _grant_and_join(alice, bob, room)
    assert bob.index.pending_joins() == {}, "the bundle of the new invite was used"
    assert (await bob.records.get(room, "while-out")).value == 2
    assert (await bob.records.get(room, "after")).value == 4
    assert bob.index.latest(room, "joined-only") is None, "a joined-visibility key was shared"
