"""The homeserver restarts (and is down a while) mid-stream: the writer resumes on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.sdk.telemetry import Telemetry, TelemetryConfig
from datarooms.testing import TestHomeserver
from tests._rooms import shared_room
from tests._wait import until


@pytest.fixture(scope="module")
def own_homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHomeserver]:
    """A homeserver of this module's own: restarting it disturbs no other test."""
    with TestHomeserver(tmp_path_factory.mktemp("restart-hs")) as hs:
        yield hs


async def _open(hs: TestHomeserver, prefix: str, store: Path) -> DataroomsClient:
    user = await hs.new_user(prefix)
    return await DataroomsClient.open(
        Credentials(hs.base_url, user.user_id, user.access_token), store
    )


async def test_writer_survives_homeserver_restarts(
    own_homeserver: TestHomeserver, tmp_path: Path
) -> None:
    hs = own_homeserver
    alice = await _open(hs, "alice", tmp_path / "alice")
    bob = await _open(hs, "bob", tmp_path / "bob")
    try:
        room = await shared_room(alice, bob)
        config = TelemetryConfig(flush_interval=0.1, max_batch_samples=300)
        async with Telemetry(alice, config) as ta:
            produced = 0
            stop = asyncio.Event()

            async def produce() -> None:
                nonlocal produced
                while not stop.is_set():
                    batch = [(1_000 + produced + j, "flow", float(produced + j)) for j in range(50)]
                    await ta.append_many(room, batch)  # durable even while the server is down
                    produced += 50
                    await asyncio.sleep(0.02)

            producer = asyncio.create_task(produce())
            await until(lambda: ta.stats.acked_samples > 0, what="the first batches acknowledged")
            await hs.synapse.restart()  # a quick restart mid-stream
            acked = ta.stats.acked_samples
            await until(lambda: ta.stats.acked_samples > acked, what="sends after the restart")
            await hs.synapse.stop()  # and a longer outage
            down, retries = produced, ta.stats.retries
            await until(
                lambda: produced > down and ta.stats.retries >= retries + 4,  # backoff grew
                what="appends and failed sends while the homeserver is down",
            )
            assert produced > down  # appends go on while the homeserver is away
            assert ta.status().unacked_samples > 0
            await hs.synapse.start()
            acked = ta.stats.acked_samples
            await until(lambda: ta.stats.acked_samples > acked, what="sends after the outage")
            stop.set()
            await producer
            await ta.flush(timeout=120)  # no help needed: the writer resumed by itself
            assert ta.status().unacked_samples == 0
            assert ta.stats.retries > 0  # the outages really hit sends
            assert ta.stats.acked_samples == produced

        async with Telemetry(bob) as tb:
            await tb.catch_up(room)
            rows = await tb.query(room, "flow", limit=10**6, catch_up=False)
            assert [s.value for s in rows] == [float(i) for i in range(produced)]
    finally:
        await alice.close()
        await bob.close()
