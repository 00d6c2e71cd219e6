"""Room sizes: what was written is what `rooms.usage()` counts, on the writer and on
a reader that got it by sync; the homeserver's own event counts from its database."""

from __future__ import annotations

import json
import os
from pathlib import Path

from datarooms.homeserver.stats import sqlite_room_stats
from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli


async def test_usage_counts_what_was_written(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, alice_bob, tmp_path: Path
) -> None:
    alice, bob = alice_bob
    data = (await alice.rooms.create("device", name="pump")).room_id
    tele = (await alice.rooms.create("device", name="meter")).room_id
    for room in (data, tele):
        await alice.rooms.grant(room, bob.user_id, "read")
        await bob.sync_once()
        await bob.rooms.join(room)
    for v in range(3):
        await alice.records.put(data, "temp", {"c": v})
    await alice.records.put(data, "state", "on")
    blob = tmp_path / "report.bin"
    blob.write_bytes(os.urandom(123_456))
    ref = await alice.files.put(data, blob)
    await alice.files.put(data, b"small", filename="note.txt")
    await alice.telemetry.append_many(
        tele, [(1_700_000_000_000 + i, "kw", float(i)) for i in range(250)]
    )
    await alice.telemetry.flush(timeout=60)

    await bob.sync_once()
    assert len(await bob.telemetry.query(tele, "kw", limit=1000)) == 250
    for who in (alice, bob):
        await who.sync_once()
        by_room = {u.room_id: u for u in who.rooms.usage()}
        d = by_room[data]
        assert tele in by_room
        assert (d.keys, d.versions, d.files, d.file_bytes) == (2, 4, 2, 123_456 + 5), who.user_id
        assert d.members == 2 and d.kind == "device" and d.name == "pump"
        assert d.telemetry_samples == 0 and d.state_events > 0 and d.index_bytes > 0
        assert [f.name for f in who.files.list(data)] == ["report.bin", "note.txt"]
        assert d.server_events is None
    # Only the reader indexed the telemetry (the writer never read it back).
    assert {u.room_id: u for u in bob.rooms.usage()}[tele].telemetry_samples == 250
    assert {u.room_id: u for u in bob.rooms.usage()}[tele].telemetry_batches >= 1

    # The homeserver's view: every event it stores for the room, ciphertext bytes.
    server = sqlite_room_stats(homeserver.synapse.directory / "homeserver.db")
    assert server[data].events is not None and server[data].events >= 6 + 2
    assert server[data].bytes > 0
    rows = bob.rooms.usage({r: (s.events, s.bytes) for r, s in server.items()})
    top = {u.room_id: u for u in rows}[data]
    assert top.server_events == server[data].events
    assert top.total_bytes == top.file_bytes + server[data].bytes
    assert rows == sorted(rows, key=lambda u: (-u.total_bytes, u.room_id))

    # A redacted file is gone from the sizes of every device that sees the redaction.
    await alice.messages.redact(data, ref.event_id)
    await bob.sync_once()
    assert [f.name for f in bob.files.list(data)] == ["note.txt"]
    assert {u.room_id: u for u in bob.rooms.usage()}[data].file_bytes == 5


async def test_rooms_usage_from_the_cli(homeserver: TestHomeserver, tmp_path: Path) -> None:
    alice = await homeserver.new_user("use-alice")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=alice.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=alice.access_token,
    )
    data_dir = tmp_path / "cli"

    def run(*args: str) -> str:
        res = cli(*args, data_dir=data_dir, env=env)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return res.stdout

    room = run("room", "create", "project", "--name", "sized").split()[0]
    run("put", room, "k", "1")
    run("put", room, "k", "2")
    rows = [json.loads(line) for line in run("rooms", "usage", "--json").splitlines()]
    mine = next(r for r in rows if r["room_id"] == room)
    assert (mine["keys"], mine["versions"], mine["name"]) == (1, 2, "sized")
    # Not an admin of an SQLite Synapse: no server figures, and no failure either.
    assert mine["server_events"] is None
    table = run("room", "usage")
    assert "sized" in table and "record versions" in table
