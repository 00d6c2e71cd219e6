"""A homeserver with tight rate limits (Synapse's own shape, a public server's
settings): a storm of room creations, record puts, messages, file uploads and state
changes from one account hits 429 many times, and not one error reaches the caller;
each 429 was waited out as the server asked (retry_after_ms)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.testing import TestHomeserver

TIGHT = {
    "rc_message": {"per_second": 4, "burst_count": 4},
    "rc_room_creation": {"per_second": 1, "burst_count": 1},
    "rc_media_create": {"per_second": 2, "burst_count": 2},
}


@pytest.fixture(scope="module")
def tight_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHomeserver]:
    with TestHomeserver(tmp_path_factory.mktemp("tight-hs"), extra_config=TIGHT) as hs:
        yield hs


async def test_a_rate_limit_storm_surfaces_no_error(
    tight_hs: TestHomeserver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user = await tight_hs.new_user("storm")
    creds = Credentials(tight_hs.base_url, user.user_id, user.access_token)
    async with await DataroomsClient.open(creds, tmp_path / "dev") as c:
        rooms = await asyncio.gather(
            *(c.rooms.create("device", name=f"storm {i}") for i in range(4))
        )
        rid = rooms[0].room_id
        puts = await asyncio.gather(*(c.records.put(rid, f"k{i % 5}", i) for i in range(24)))
        sent = [await c.messages.send(rid, f"m{i}") for i in range(6)]
        blobs = [os.urandom(1000 + i) for i in range(4)]
        refs = await asyncio.gather(
            *(c.files.put(rid, b, filename=f"f{i}.bin") for i, b in enumerate(blobs))
        )
        await c.reviews.set_schedule(rid, 7)
        for i in range(3):
            await c.rooms.create("project", name=f"more {i}")
        assert len(puts) == 24 and len(sent) == 6
        assert [await c.files.read(rid, r.event_id) for r in refs] == blobs
        # Concurrent puts have no order among themselves: every one landed, once.
        for j in range(5):
            versions = await c.records.history(rid, f"k{j}")
            assert sorted(r.value for r in versions) == list(range(j, 24, 5))
    waited = [
        r for r in caplog.records if "429" in r.getMessage() or "rate limited" in r.getMessage()
    ]
    assert len(waited) >= 5, "the storm never hit the rate limits: the test proves nothing"
