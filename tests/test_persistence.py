"""Keys are data: a write's Megolm session is persisted before the write returns,
and a restarted device resumes from where it stopped with every key."""

from __future__ import annotations

import json
from pathlib import Path

from nio.store import SqliteStore

from datarooms import Credentials, DataroomsClient
from datarooms.testing import TestHomeserver
from tests._rooms import shared_room


async def test_session_is_on_disk_when_put_returns(  # type: ignore[no-untyped-def]
    alice_bob, tmp_path: Path
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    rec = await alice.records.put(room, "k", "v")
    async with alice.http() as http:
        raw = await http.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{rec.event_id}")
    session_id = raw["content"]["session_id"]
    sender_key = alice.nio.olm.account.identity_keys["curve25519"]

    # Read the crypto store from disk, as a restarted process would.
    session = json.loads((tmp_path / alice.user_id / "session.json").read_text())
    store = SqliteStore(
        alice.user_id,
        alice.device_id,
        str(tmp_path / alice.user_id / "crypto"),
        session["pickle_key"],
    )
    loaded = store.load_inbound_group_sessions()
    assert loaded.get(room, sender_key, session_id) is not None


async def test_restart_resumes_sync_and_keeps_keys(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, tmp_path: Path, alice_bob
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    await alice.records.put(room, "k", 1)
    await bob.sync_once()
    token_before = bob.index.sync_token
    gaps_before = bob.index.gaps(room)
    store = tmp_path / bob.user_id
    session = json.loads((store / "session.json").read_text())
    await bob.close()

    await alice.records.put(room, "k", 2)  # written while Bob is away
    bob2 = await DataroomsClient.open(
        Credentials(homeserver.base_url, bob.user_id, session["access_token"]), store
    )
    try:
        assert bob2.device_id == bob.device_id  # the same device, not a new one
        assert bob2.index.sync_token != token_before  # moved on from the saved position
        assert bob2.index.gaps(room) == gaps_before  # resumed: no new history to page in
        assert [r.value for r in await bob2.records.history(room, "k")] == [1, 2]
        # Old and new keys both work after the restart: rebuild the index from the server.
        await bob2.close()
        for name in ("index.db", "index.db-wal", "index.db-shm"):
            (store / name).unlink(missing_ok=True)
        bob3 = await DataroomsClient.open(
            Credentials(homeserver.base_url, bob.user_id, session["access_token"]), store
        )
        try:
            assert [r.value for r in await bob3.records.history(room, "k")] == [1, 2]
        finally:
            await bob3.close()
    finally:
        await bob2.close()
