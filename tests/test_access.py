"""Access control: grants map to power levels; revocation rotates the room key."""

from __future__ import annotations

import pytest
from nio import MegolmEvent
from nio.exceptions import EncryptionError

from datarooms import AccessDeniedError, DataroomsClient, ValidationError
from tests._rooms import shared_room


async def _raw_event(client: DataroomsClient, room: str, event_id: str) -> dict:  # type: ignore[type-arg]
    async with client.http() as http:
        return dict(await http.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{event_id}"))


async def test_revoked_user_cannot_read_later_writes(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "read")
    before = await alice.records.put(room, "k", "before revocation")
    await bob.sync_once()
    assert (await bob.records.get(room, "k")).value == "before revocation"

    await alice.rooms.revoke(room, bob.user_id)
    after = await alice.records.put(room, "k", "after revocation")

    raw_before = await _raw_event(alice, room, before.event_id)
    raw_after = await _raw_event(alice, room, after.event_id)
    assert raw_after["type"] == "m.room.encrypted"
    # A fresh Megolm session, which Bob's device never received.
    assert raw_after["content"]["session_id"] != raw_before["content"]["session_id"]
    await bob.sync_once()
    megolm = MegolmEvent.from_dict(raw_after)
    megolm.room_id = room
    with pytest.raises(EncryptionError):
        bob.nio.decrypt_event(megolm)
    # ... and the server no longer serves him the room.
    assert (await bob.records.get(room, "k")).value == "before revocation"
    members = {m.user_id for m in await alice.rooms.review(room)}
    assert bob.user_id not in members


async def test_grant_levels_and_review(alice_bob, homeserver, open_client) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write")
    await bob.records.put(room, "by-bob", 1)  # a writer can write
    carol = await open_client(await homeserver.new_user("carol"))
    await alice.rooms.grant(room, carol.user_id, "read")
    review = {m.user_id: m for m in await alice.rooms.review(room)}
    assert review[alice.user_id].access == "admin"
    assert review[bob.user_id].access == "write" and review[bob.user_id].membership == "join"
    assert review[carol.user_id].access == "read" and review[carol.user_id].membership == "invite"
    assert any(d.device_id == bob.device_id for d in review[bob.user_id].devices)
    assert review[bob.user_id].last_active_ts is not None
    # Downgrade Bob to read: he can no longer write.
    await alice.rooms.grant(room, bob.user_id, "read")
    await bob.sync_once()
    with pytest.raises(AccessDeniedError):
        await bob.records.put(room, "by-bob", 2)
    # A non-admin cannot grant.
    with pytest.raises(AccessDeniedError):
        await bob.rooms.grant(room, carol.user_id, "write")
    with pytest.raises(ValidationError):
        await alice.rooms.grant(room, "not-a-user", "read")
    with pytest.raises(ValidationError):
        await alice.rooms.grant(room, carol.user_id, "owner")  # type: ignore[arg-type]


async def test_room_kinds_and_entity_alias(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, _ = alice_bob
    did = f"did:ixo:entity:{alice.device_id.lower()}{id(alice):x}"
    room = await alice.rooms.create("entity", name="Pump", did=did, alias=True, purpose="twin")
    assert room.alias == "#" + did.replace(":", "-") + ":localhost"
    assert await alice.rooms.resolve(room.alias) == room.room_id
    info = alice.rooms.info(room.room_id)
    assert (info.kind, info.did, info.purpose) == ("entity", did, "twin")
    assert alice.nio.rooms[room.room_id].encrypted
    with pytest.raises(ValidationError, match="unknown room kind"):
        await alice.rooms.create("garage")
    with pytest.raises(ValidationError, match="needs the entity's DID"):
        await alice.rooms.create("entity")
    with pytest.raises(ValidationError, match="is not a DID"):
        await alice.rooms.create("entity", did="ixo:entity:1")
    with pytest.raises(ValidationError, match="alias for this room is taken"):
        await alice.rooms.create("entity", did=did, alias=True)


async def test_never_sends_in_the_clear(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, _ = alice_bob
    # With the sync loop running, create + put at once: the put must still be encrypted.
    alice.start_sync()
    room = await alice.rooms.create("project")
    rec = await alice.records.put(room.room_id, "k", "secret")
    raw = await _raw_event(alice, room.room_id, rec.event_id)
    assert raw["type"] == "m.room.encrypted"
    await alice.stop_sync()
    # A room that is not encrypted is refused outright.
    resp = await alice.nio.room_create(name="plain room")
    await alice.sync_once()
    with pytest.raises(AccessDeniedError, match="not end-to-end encrypted"):
        await alice.records.put(resp.room_id, "k", "would leak")
    with pytest.raises(AccessDeniedError, match="not end-to-end encrypted"):
        await alice.messages.send(resp.room_id, "would leak")


async def test_write_right_after_grant_reaches_the_invitee(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = (await alice.rooms.create("device")).room_id
    await alice.rooms.grant(room, bob.user_id, "read")
    await alice.records.put(room, "k", "written before any sync")  # no sync in between
    await bob.sync_once()
    await bob.rooms.join(room)
    assert (await bob.records.get(room, "k")).value == "written before any sync"
