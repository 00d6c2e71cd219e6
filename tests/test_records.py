"""Records: typed, versioned, encrypted, idempotent; read back from the local index."""

from __future__ import annotations

import pytest

from datarooms import AccessDeniedError, DataroomsClient, NotFoundError, ValidationError
from tests._rooms import shared_room as _shared_room


async def test_put_get_history_across_users(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await _shared_room(alice, bob)
    r1 = await alice.records.put(room, "temperature", {"c": 21.5})
    r2 = await alice.records.put(room, "temperature", {"c": 22.0})
    await alice.records.put(room, "status", "running")
    assert r1.version == 1 and r2.version == 2
    assert (await alice.records.get(room, "temperature")).value == {"c": 22.0}

    await bob.sync_once()
    got = await bob.records.get(room, "temperature")
    assert got.value == {"c": 22.0} and got.sender == alice.user_id and got.version == 2
    assert await bob.records.twin(room) == {"temperature": {"c": 22.0}, "status": "running"}
    hist = await bob.records.history(room, "temperature")
    assert [h.value for h in hist] == [{"c": 21.5}, {"c": 22.0}]
    assert [h.version for h in hist] == [1, 2]
    with pytest.raises(NotFoundError):
        await bob.records.get(room, "pressure")


async def test_retried_put_makes_one_version(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await _shared_room(alice, bob)
    first = await alice.records.put(room, "k", 1, txn_id="txn-fixed-1")
    again = await alice.records.put(room, "k", 1, txn_id="txn-fixed-1")
    assert first.event_id == again.event_id
    await bob.sync_once()
    assert len(await bob.records.history(room, "k")) == 1
    assert len(await alice.records.history(room, "k")) == 1


async def test_schema_validation_before_sending(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await _shared_room(alice, bob)
    schema = {
        "type": "object",
        "required": ["c"],
        "properties": {"c": {"type": "number", "minimum": -50, "maximum": 150}},
        "additionalProperties": False,
    }
    await alice.records.publish_schema(room, "reading", schema)
    await alice.records.put(room, "t", {"c": 20}, schema="reading")
    with pytest.raises(ValidationError, match="at c: 999 is greater than the maximum of 150"):
        await alice.records.put(room, "t", {"c": 999}, schema="reading")
    with pytest.raises(ValidationError, match="'c' is a required property"):
        await alice.records.put(room, "t", {"x": 1}, schema="reading")
    with pytest.raises(NotFoundError, match="no schema named 'nope'"):
        await alice.records.put(room, "t", {"c": 1}, schema="nope")
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        await alice.records.publish_schema(room, "bad", {"type": "not-a-type"})
    # Bob reads the schema from room state and validates the same way.
    await bob.sync_once()
    assert (await bob.records.schema(room, "reading")) == schema
    # Nothing invalid was sent: one version only.
    assert len(await alice.records.history(room, "t")) == 1


async def test_invalid_and_oversize_records_are_rejected(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, _ = alice_bob
    room = (await alice.rooms.create("project")).room_id
    with pytest.raises(ValidationError, match="non-empty"):
        await alice.records.put(room, "", 1)
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        await alice.records.put(room, "k", {1, 2})
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        await alice.records.put(room, "k", float("nan"))
    with pytest.raises(ValidationError, match="limit is 45056 bytes"):
        await alice.records.put(room, "big", "x" * 50_000)
    # Just under the limit goes through the homeserver (event < 64 KiB after encryption).
    rec = await alice.records.put(room, "big", "x" * 44_000)
    assert rec.event_id.startswith("$")
    assert alice.index.count(room) == 1


async def test_reader_cannot_write_and_outsider_cannot_read(  # type: ignore[no-untyped-def]
    alice_bob, homeserver, open_client
) -> None:
    alice, bob = alice_bob
    room = await _shared_room(alice, bob, "read")
    await alice.records.put(room, "secret", "only for members")
    with pytest.raises(AccessDeniedError):
        await bob.records.put(room, "x", 1)
    eve = await open_client(await homeserver.new_user("eve"))
    with pytest.raises(NotFoundError):
        await eve.records.put(room, "x", 1)
    with pytest.raises(Exception):  # noqa: B017 - not a member: the server refuses the join
        await eve.rooms.join(room)
    await eve.sync_once()
    assert eve.index.count(room) == 0


async def test_new_device_backfills_history(  # type: ignore[no-untyped-def]
    alice_bob, homeserver, open_client, tmp_path
) -> None:
    alice, bob = alice_bob
    room = await _shared_room(alice, bob)
    for i in range(150):  # more than one page of history, more than a sync's timeline
        await alice.records.put(room, f"k{i % 7}", i)
    await bob.sync_once()
    assert len(await bob.records.twin(room)) == 7
    # Bob's index is lost (his device and keys are kept): it is rebuilt from the server.
    await bob.close()
    (tmp_path / bob.user_id / "index.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / bob.user_id / f"index.db{suffix}").unlink(missing_ok=True)
    from datarooms import Credentials

    session = __import__("json").loads((tmp_path / bob.user_id / "session.json").read_text())
    bob2 = await DataroomsClient.open(
        Credentials(homeserver.base_url, bob.user_id, session["access_token"]),
        tmp_path / bob.user_id,
    )
    try:
        twin = await bob2.records.twin(room)
        assert twin == {f"k{j}": max(i for i in range(150) if i % 7 == j) for j in range(7)}
        assert bob2.index.count(room) == 150
    finally:
        await bob2.close()


def test_twin_cache_sees_local_and_other_process_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datarooms._store.index import LocalIndex, Record

    path = tmp_path / "index.db"
    a, b = LocalIndex(path), LocalIndex(path)  # b stands for another process on this device
    try:
        a.add_records([Record("!r", "k", 1, "$1", "@u:x", 10, "t1")])
        assert a.twin_values("!r") == {"k": 1}
        a.add_records([Record("!r", "k", 2, "$2", "@u:x", 20, "t2")])  # local write
        assert a.twin_values("!r") == {"k": 2}
        b.add_records([Record("!r", "k", 3, "$3", "@u:x", 30, "t3")])  # another connection
        assert a.twin_values("!r") == {"k": 3}
        got = a.twin_values("!r")
        got["k"] = "mutated by the caller"
        assert a.twin_values("!r") == {"k": 3}  # callers get copies
    finally:
        a.close()
        b.close()
