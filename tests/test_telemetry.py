"""Telemetry between devices on a real homeserver: write, read, backfill, live, refusals."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import threading
from pathlib import Path

import pytest

from datarooms import AccessDeniedError, Credentials, DataroomsClient, DataroomsError
from datarooms._transport.http import MatrixHttp
from datarooms.sdk.telemetry import (
    OutboxFullError,
    Sample,
    Telemetry,
    TelemetryConfig,
    TelemetryThread,
)
from datarooms.sdk.telemetry.encoding import SeriesKey, encode_batch
from datarooms.sdk.telemetry.schema import INLINE_MAX_BYTES
from tests._rooms import shared_room

T0 = 1_700_000_040_000  # a whole minute


async def test_samples_reach_another_device_exactly(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    rng = random.Random(11)
    async with Telemetry(alice) as ta, Telemetry(bob) as tb:
        await ta.append(room, "temp", 21.5, ts=T0, tags={"site": "a"})
        await ta.append_many(
            room,
            [
                Sample(T0 + 1, "temp", 22.25, {"site": "b"}),
                {"ts": T0 + 2, "metric": "temp", "value": 23, "tags": {"site": "a"}},
            ],
        )
        # From another thread, through the synchronous API.
        await asyncio.to_thread(ta.append_sync, room, "pressure", 1.013, ts=T0 + 3)
        with pytest.raises(DataroomsError, match="event loop's thread"):
            ta.append_sync(room, "pressure", 1.0)
        await ta.flush(timeout=60)
        # One batch just under the inline limit (30,000 compressed bytes) ...
        values = [rng.uniform(-1e6, 1e6) for _ in range(6000)]
        ts = [T0 + 10 + i for i in range(6000)]
        lo, hi = 1, 6000
        while lo < hi:
            mid = (lo + hi + 1) // 2
            size = len(encode_batch([(SeriesKey("noise"), ts[:mid], values[:mid])])[0])
            lo, hi = (mid, hi) if size <= INLINE_MAX_BYTES else (lo, mid - 1)
        near = [(ts[i], "noise", values[i]) for i in range(lo)]
        await ta.append_many(room, near)
        await ta.flush(timeout=60)
        # ... and 60,000 more: batches too big to go inline, sent as encrypted media.
        big = [(T0 + 5000 + i, "noise", rng.uniform(-1e6, 1e6)) for i in range(60_000)]
        await ta.append_many(room, big)
        await ta.flush(timeout=120)
        st = ta.status()
        assert st.unacked_samples == 0 and st.acked_samples == 60_004 + len(near)
        assert ta.stats.inline_batches >= 1 and ta.stats.media_batches >= 2

        rows = await tb.query(room, "temp")
        assert [(s.ts, s.value, dict(s.tags)) for s in rows] == [
            (T0, 21.5, {"site": "a"}),
            (T0 + 1, 22.25, {"site": "b"}),
            (T0 + 2, 23.0, {"site": "a"}),
        ]
        assert [s.value for s in await tb.query(room, "temp", tags={"site": "a"})] == [21.5, 23.0]
        assert [s.value for s in await tb.query(room, "pressure")] == [1.013]
        noise = await tb.query(room, "noise", limit=100_000)
        assert [(s.ts, s.value) for s in noise] == [(ts, v) for ts, _, v in near + big]
        buckets = await tb.aggregate(room, "temp", since=T0, until=T0 + 60_000, step=60_000)
        assert [(b.count, b.min, b.max, b.mean, b.last) for b in buckets] == [
            (3, 21.5, 23.0, (21.5 + 22.25 + 23) / 3, 23.0)
        ]
        assert {(i.metric, i.count) for i in await tb.series(room)} == {
            ("temp", 2),
            ("temp", 1),
            ("pressure", 1),
            ("noise", 60_000 + len(near)),
        }
        # The biggest inline event stays well inside Matrix's 65,536-byte limit.
        sizes = []
        async with bob.http() as http:
            for event_id, *_ in tb.index.batches(room):
                raw = await http.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{event_id}")
                sizes.append(len(json.dumps(raw, separators=(",", ":"))))
        assert 50_000 < max(sizes) < 60_000, sizes


async def test_live_subscription(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    async with Telemetry(alice, TelemetryConfig(flush_interval=0.1)) as ta, Telemetry(bob) as tb:
        got: list[Sample] = []

        async def listen() -> None:
            async for s in tb.subscribe(room, metric="rpm"):
                got.append(s)
                if len(got) == 5:
                    return

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.5)
        for i in range(5):
            await ta.append(room, "other", float(i))  # filtered out
            await ta.append(room, "rpm", float(i), ts=T0 + i, tags={"shaft": "1"})
        await asyncio.wait_for(task, 60)
        assert [(s.ts, s.value, dict(s.tags)) for s in got] == [
            (T0 + i, float(i), {"shaft": "1"}) for i in range(5)
        ]
        # The followed room is current without a catch-up round trip.
        assert len(await tb.query(room, "other", catch_up=False)) == 5


async def test_a_new_device_backfills_the_history(  # type: ignore[no-untyped-def]
    homeserver, open_client, tmp_path: Path
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    bob_user = await homeserver.new_user("bob")
    bob = await open_client(bob_user)
    room = await shared_room(alice, bob)
    recovery_key = await bob.keys.setup_recovery()
    async with Telemetry(alice, TelemetryConfig(max_batch_samples=2000)) as ta:
        await ta.append_many(room, [(T0 + i, f"m{i % 3}", i / 4) for i in range(20_000)])
        for i in range(60):  # many small batches: more than one page of history
            await ta.append(room, "tick", float(i), ts=T0 + 30_000 + i)
            await ta.flush(timeout=30)
    await bob.sync_once()  # Bob's device receives the room keys and backs them up
    await bob.keys.backup_pending()

    # Bob's new device, made after the writes: it can read once it has the keys.
    new = await DataroomsClient.open(
        Credentials(homeserver.base_url, bob_user.user_id, password=bob_user.password),
        tmp_path / "bob-new-device",
    )
    try:
        assert new.device_id != bob.device_id
        async with Telemetry(new) as tb:
            assert await tb.catch_up(room) == 0  # no keys yet: the batches wait
            assert tb.index.pending(room)
            await new.keys.restore(recovery_key)
            assert await tb.catch_up(room) == 20_060
            assert tb.index.pending(room) == []
            assert tb.index.count(room) == 20_060 and tb.index.batch_count(room) == 70
            assert [s.value for s in await tb.query(room, "tick", limit=100)] == [
                float(i) for i in range(60)
            ]
        # Its index is lost: it is rebuilt from the room, exactly.
        shutil.rmtree(tmp_path / "bob-new-device" / "telemetry")
        async with Telemetry(new) as tb:
            rows = await tb.query(room, "m1", limit=100_000)
            assert [s.value for s in rows] == [i / 4 for i in range(1, 20_000, 3)]
            assert tb.index.count(room) == 20_060
    finally:
        await new.close()


async def test_a_refused_room_keeps_its_samples(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "read")  # bob may read, not write
    config = TelemetryConfig(max_batch_samples=100, max_outbox_samples=300, when_full="raise")
    async with Telemetry(bob, config) as tb:
        await tb.append_many(room, [(T0 + i, "m", 1.0) for i in range(250)])
        with pytest.raises(AccessDeniedError, match="cannot be sent"):
            await tb.flush(timeout=60)
        st = tb.status()
        assert st.unacked_samples == 250 and room in st.blocked_rooms
        with pytest.raises(OutboxFullError, match="max_outbox_samples=300"):
            await tb.append_many(room, [(T0, "m", 1.0)] * 51)
        assert await tb.discard(room) == 250
        assert tb.status().unacked_samples == 0
        await tb.flush(timeout=10)  # nothing left to send


async def test_unsent_samples_are_sent_by_the_next_writer(  # type: ignore[no-untyped-def]
    alice_bob, homeserver, tmp_path: Path
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    # Appended, never started (e.g. the process stopped at once): durable in the outbox.
    tel = Telemetry(alice)
    await asyncio.to_thread(tel.append_many_sync, room, [(T0 + i, "m", 1.0) for i in range(10)])
    await tel.close()
    async with Telemetry(alice) as again:
        assert again.status().unacked_samples == 10
        await again.flush(timeout=60)
    async with Telemetry(bob) as tb:
        assert tb.index.count(room) == 0
        assert await tb.catch_up(room) == 10


async def test_bad_samples_are_refused_before_anything_is_stored(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    async with Telemetry(alice) as ta:
        with pytest.raises(DataroomsError, match="sample #1: a sample value must be finite"):
            await ta.append_many(room, [(T0, "m", 1.0), (T0, "m", float("inf"))])
        with pytest.raises(DataroomsError, match="not a Matrix room id"):
            await ta.append("not-a-room", "m", 1.0)
        assert ta.status().unacked_samples == 0


def test_telemetry_from_synchronous_code(homeserver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user = asyncio.run(homeserver.new_user("sync-writer"))
    creds = Credentials(homeserver.base_url, user.user_id, user.access_token)
    with TelemetryThread(creds, tmp_path / "device", TelemetryConfig(flush_interval=0.1)) as tel:
        room = tel.run(lambda c: c.rooms.create("device")).room_id

        def sensor(k: int) -> None:  # four sensor threads, one sample at a time
            for i in range(50):
                tel.append(room, "level", float(k * 100 + i), ts=T0 + k * 100 + i)

        threads = [threading.Thread(target=sensor, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tel.flush(timeout=60)
        assert tel.status().unacked_samples == 0
        rows = tel.query(room, "level", limit=1000)
        assert [s.value for s in rows] == [float(k * 100 + i) for k in range(4) for i in range(50)]
        buckets = tel.aggregate(room, "level", since=T0, until=T0 + 60_000, step=60_000)
        assert buckets[0].count == 200 and buckets[0].last == 349.0


async def test_rate_limits_are_honoured(  # type: ignore[no-untyped-def]
    homeserver, open_client, caplog
) -> None:
    admin = await homeserver.new_user("tlm-admin", admin=True)
    alice = await open_client(await homeserver.new_user("alice"))
    bob = await open_client(await homeserver.new_user("bob"))
    room = await shared_room(alice, bob)
    async with MatrixHttp(homeserver.base_url, admin.access_token) as http:
        await http.request(
            "POST",
            f"/_synapse/admin/v1/users/{alice.user_id}/override_ratelimit",
            json={"messages_per_second": 2, "burst_count": 2},
        )
    caplog.set_level(logging.INFO, logger="datarooms")
    config = TelemetryConfig(flush_interval=0.02, max_batch_samples=10)
    async with Telemetry(alice, config) as ta:
        await ta.append_many(room, [(T0 + i, "m", float(i)) for i in range(80)])
        await ta.flush(timeout=120)
        assert ta.stats.acked_batches == 8
    limited = [r for r in caplog.records if "rate limited" in r.getMessage()]
    assert limited, "the homeserver should have answered 429 at least once"
    assert all(getattr(r, "delay_s", 0) > 0 for r in limited)  # its retry_after_ms, obeyed
    async with Telemetry(bob) as tb:
        assert [s.value for s in await tb.query(room, "m")] == [float(i) for i in range(80)]
