"""Raw telemetry's retention: a two-day stream under a one-day policy is reduced to
per-minute rollups on the homeserver (raw batches redacted, rollups posted
encrypted) and in every device's index; a member who arrives afterwards gets the
rollups; aggregates over the old day are the same before and after."""

from __future__ import annotations

import time

from datarooms.events import TELEMETRY_ROLLUP
from datarooms.sdk.retention import DAY_MS, RetentionPolicy
from datarooms.testing import TestHomeserver

MIN = 60_000
HOUR = 60 * MIN


async def test_raw_telemetry_goes_rollups_stay(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("rt-alice"))
    bob = await open_client(await homeserver.new_user("rt-bob"))
    carol = await open_client(await homeserver.new_user("rt-carol"))
    room = (await alice.rooms.create("device", name="meter")).room_id
    await alice.rooms.grant(room, bob.user_id, "read")
    await bob.sync_once()
    await bob.rooms.join(room)
    now = int(time.time() * 1000)
    start = now - now % HOUR - 50 * HOUR
    old = [
        (start + i * MIN + j * 1000, "kw", float(i % 97 + j))
        for i in range(26 * 60)
        for j in (0, 20, 40)
    ]
    recent = [(start + 27 * HOUR + i * MIN, "kw", float(i)) for i in range(22 * 60)]
    await alice.telemetry.append_many(room, old)
    await alice.telemetry.flush(timeout=120)
    await alice.telemetry.append_many(room, recent)
    await alice.telemetry.flush(timeout=120)

    old_end = start + 26 * HOUR

    async def hourly(c):  # type: ignore[no-untyped-def]
        buckets = await c.telemetry.aggregate(room, "kw", since=start, until=old_end, step=HOUR)
        return [(b.count, b.min, b.max, round(b.mean, 6), b.last) for b in buckets]

    before = await hourly(bob)
    assert len(before) == 26 and all(b[0] == 180 for b in before)
    assert len(await bob.telemetry.query(room, "kw", limit=100_000)) == len(old) + len(recent)

    await alice.retention.set_policy(room, RetentionPolicy(telemetry_raw_days=1))
    await alice.telemetry.catch_up(room)
    dry = await alice.retention.cleanup(room, dry_run=True)
    batches = [i for i in dry.items if i.kind == "telemetry_batch"]
    assert batches and dry.telemetry_samples == len(old) and dry.redacted == 0
    done = await alice.retention.cleanup(room)
    assert done.redacted == len(batches) and done.rollup_events >= 1

    cutoff = now - DAY_MS
    cutoff -= cutoff % MIN
    for c in (alice, bob):
        raw = await c.telemetry.query(room, "kw", limit=100_000)
        assert raw and min(s.ts for s in raw) >= cutoff, c.user_id
        assert len(raw) == len(recent)
        assert await hourly(c) == before, c.user_id

    # The homeserver keeps no raw batch content older than the cutoff.
    async with alice.http() as http:
        for item in batches[:3]:
            raw_ev = await http.request(
                "GET", f"/_matrix/client/v3/rooms/{room}/event/{item.event_id}"
            )
            assert raw_ev["content"] == {}

    # Carol arrives afterwards (the grant shares the room's history keys): she gets the
    # rollups, and nothing raw of the old day.
    await alice.rooms.grant(room, carol.user_id, "read")
    await carol.sync_once()
    await carol.rooms.join(room)
    await carol.sync_once()
    assert await hourly(carol) == before
    assert len(await carol.telemetry.query(room, "kw", limit=100_000)) == len(recent)
    types = {e.type for e in await carol.messages.recent(room, limit=50)}
    assert TELEMETRY_ROLLUP in types

    # Legal hold stops the next one.
    await alice.retention.set_policy(room, RetentionPolicy(telemetry_raw_days=1, legal_hold=True))
    assert (await alice.retention.cleanup(room)).refused
