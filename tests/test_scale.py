"""The scale profile (issue 18): Synapse on PostgreSQL with workers, Redis and nginx.

Real processes, no mocks: nginx routes ``/sync`` to the sync worker, event sending to
the client worker and media to the media worker (its access log names the upstream of
each request; PostgreSQL's ``events.instance_name`` names the persister of each event);
records, telemetry and history sharing work through it; an event persister SIGKILLed
while records are written restarts, and not one record is lost or written twice.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.errors import ConfigError, PortInUseError, SynapseStartError
from datarooms.homeserver.postgres import PostgresCluster
from datarooms.homeserver.scale import ScaleSynapse
from datarooms.sdk.telemetry import Telemetry
from datarooms.testing import TestScaleHomeserver
from tests._rooms import shared_room
from tests._system import require_program
from tests._wait import until

OpenClient = Callable[[str], Awaitable[DataroomsClient]]

#: The session's one scale-profile homeserver (about 10 processes), shared with the core
#: of the suite on the scale profile (tests/test_scale_core.py): one xdist worker.
pytestmark = pytest.mark.xdist_group("scale-core")


@pytest.fixture(scope="session")
def scale_hs(request: pytest.FixtureRequest) -> TestScaleHomeserver:
    """The session's scale-profile homeserver: conftest.py's ``scale_core_hs`` (the
    ``homeserver`` fixture itself when the suite runs with DATAROOMS_TEST_PROFILE=scale)."""
    name = "homeserver" if os.environ.get("DATAROOMS_TEST_PROFILE") == "scale" else None
    hs = request.getfixturevalue(name) if name else request.getfixturevalue("scale_core_hs").hs
    assert isinstance(hs, TestScaleHomeserver)
    return hs


@pytest.fixture
async def open_scale(scale_hs: TestScaleHomeserver, tmp_path: Path) -> AsyncIterator[OpenClient]:
    opened: list[DataroomsClient] = []

    async def _open(prefix: str) -> DataroomsClient:
        user = await scale_hs.new_user(prefix)
        creds = Credentials(scale_hs.base_url, user.user_id, user.access_token)
        client = await DataroomsClient.open(creds, tmp_path / user.user_id)
        opened.append(client)
        return client

    yield _open
    for client in opened:
        await client.close()


def _db(scale: ScaleSynapse, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    conn_args = {
        k: v for k, v in scale.postgres.database_config()["args"].items() if k[:3] != "cp_"
    }
    with psycopg2.connect(**conn_args) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        rows: list[tuple[Any, ...]] = cur.fetchall()
    conn.close()
    return rows


_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+)" (?P<status>\d+) (?P<upstream>\S+)')


def _served_by(scale: ScaleSynapse, pattern: str) -> set[str | None]:
    """Which processes nginx sent the requests whose path matches ``pattern`` to."""
    out: set[str | None] = set()
    for line in scale.access_log.read_text().splitlines():
        m = _LINE.search(line)
        if m and re.search(pattern, m["uri"]):
            out.add(scale.topology.worker_of(m["upstream"].split(",")[-1].strip()))
    return out


async def test_workers_serve_records_files_telemetry_and_history(
    scale_hs: TestScaleHomeserver, open_scale: OpenClient, tmp_path: Path
) -> None:
    scale = scale_hs.scale
    alice, bob = await open_scale("alice"), await open_scale("bob")
    room = await shared_room(alice, bob)
    await alice.records.put(room, "temperature", {"c": 21.5})
    await alice.records.put(room, "temperature", {"c": 22.0})
    async with Telemetry(alice) as ta, Telemetry(bob) as tb:
        await ta.append(room, "temp", 21.5, ts=1_700_000_040_000)
        await ta.flush(timeout=60)
        await bob.sync_once()
        assert (await bob.records.get(room, "temperature")).value == {"c": 22.0}
        assert [s.value for s in await tb.query(room, "temp")] == [21.5]
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(100_000))
    ref = await alice.files.put(room, src)
    # History sharing: carol, granted later, reads what was written before her grant.
    carol = await open_scale("carol")
    await alice.rooms.grant(room, carol.user_id, "read")
    await carol.sync_once()
    await carol.rooms.join(room)
    await carol.fill_gaps(room)
    await carol.sync_once()
    assert (await carol.records.get(room, "temperature")).value == {"c": 22.0}
    out = tmp_path / "got"
    out.mkdir()
    assert (await carol.files.get(room, ref.event_id, out)).read_bytes() == src.read_bytes()

    # nginx sent each kind of request where workers.md says.
    assert _served_by(scale, r"/_matrix/client/v3/sync$") == {"sync1"}
    assert _served_by(scale, r"/rooms/[^/]+/send/") == {"client1"}
    assert _served_by(scale, r"/keys/(upload|query|claim)$") == {"client1"}
    assert _served_by(scale, r"^/_matrix/(media|client/v1/media)/") == {"media1"}
    assert _served_by(scale, r"^/_synapse/admin/v1/register$") == {"main"}
    # The events were persisted by the event persisters, never by main.
    writers = {row[0] for row in _db(scale, "SELECT DISTINCT instance_name FROM events")}
    assert writers and writers <= set(scale.topology.persisters)
    # No federation on the scale profile (yet): no federation sender runs, which would
    # work out every new event's destinations for nothing; every other process runs.
    assert not scale.topology.by_role("federation_sender")
    assert set(scale.synapse_pids()) == {"main", *(w.name for w in scale.topology.workers)}


async def test_event_persister_killed_mid_ingest_loses_and_duplicates_nothing(
    scale_hs: TestScaleHomeserver, open_scale: OpenClient
) -> None:
    scale = scale_hs.scale
    n = 240 if os.environ.get("DATAROOMS_FULL_TESTS") == "1" else 60
    alice, bob = await open_scale("alice"), await open_scale("bob")
    room = await shared_room(alice, bob)
    await alice.records.put(room, "first", 0)
    rows = _db(scale, "SELECT instance_name FROM events WHERE room_id = %s LIMIT 1", room)
    victim = rows[0][0]
    assert victim in scale.topology.persisters

    def encrypted() -> int:
        q = "SELECT count(*) FROM events WHERE room_id = %s AND type = 'm.room.encrypted'"
        return int(_db(scale, q, room)[0][0])

    before = encrypted()
    run = uuid.uuid4().hex
    done = 0
    gate = asyncio.Semaphore(6)

    async def put(i: int) -> None:
        nonlocal done
        async with gate:
            await alice.records.put(room, f"k{i}", {"i": i}, txn_id=f"ingest-{run}-{i}")
            done += 1

    puts = asyncio.gather(*(put(i) for i in range(n)))
    await until(lambda: done >= n // 4 or puts.done(), timeout=60, what="a quarter of the puts")
    restarts = scale.restarts.get(victim, 0)
    scale.kill_worker(victim)  # SIGKILL, puts in flight
    killed_at = done
    await asyncio.wait_for(puts, timeout=120)
    assert killed_at < n
    # The platform restarted it by itself (its supervisor).
    assert scale.restarts.get(victim, 0) == restarts + 1

    # Zero lost: every record reads back, once; zero duplicated: one event each.
    await bob.sync_once()
    for i in range(n):
        history = await bob.records.history(room, f"k{i}")
        assert [h.value for h in history] == [{"i": i}], i
    assert encrypted() - before == n


def test_config_selects_the_profile_and_checks_it(tmp_path: Path) -> None:
    from datarooms.config import load_settings

    s = load_settings(data_dir=tmp_path, env={"DATAROOMS_HOMESERVER_PROFILE": "scale"})
    assert s.homeserver.profile == "scale" and s.homeserver.event_persisters == 2
    assert load_settings(data_dir=tmp_path, env={}).homeserver.profile == "embedded"
    with pytest.raises(ConfigError, match="profile"):
        load_settings(data_dir=tmp_path, env={"DATAROOMS_HOMESERVER_PROFILE": "huge"})
    with pytest.raises(ConfigError, match="event_persisters must be between 1 and 16"):
        load_settings(
            data_dir=tmp_path,
            env={
                "DATAROOMS_HOMESERVER_PROFILE": "scale",
                "DATAROOMS_HOMESERVER_EVENT_PERSISTERS": "0",
            },
        )
    with pytest.raises(ConfigError, match="postgresql://"):
        load_settings(
            data_dir=tmp_path,
            env={
                "DATAROOMS_HOMESERVER_PROFILE": "scale",
                "DATAROOMS_HOMESERVER_POSTGRES_URL": "mysql://x",
            },
        )


async def test_a_worker_that_dies_at_start_stops_everything(tmp_path: Path) -> None:
    """Another program takes the sync worker's port while Synapse boots: the worker dies
    at start, the error names it with its log, and nothing of the profile is left running."""
    import socket

    require_program("redis-server", "redis-server")
    require_program("nginx", "nginx")
    require_program("pg_ctlcluster", "postgresql")

    scale = TestScaleHomeserver(tmp_path / "broken").scale
    sync = scale.worker("sync1")
    blocker = socket.socket()

    async def squat() -> None:
        await until(lambda: scale.running, timeout=60, what="synapse main spawned")
        blocker.bind((sync.host, sync.port))
        blocker.listen()

    squatter = asyncio.create_task(squat())
    try:
        with pytest.raises(
            SynapseStartError, match=r"(?s)Synapse sync1 exited.*Address already in use"
        ):
            await scale.start()
    finally:
        squatter.cancel()
        blocker.close()
    assert not scale.running and scale.synapse_pids() == {}
    assert not scale.postgres.running and not scale.redis.running
    assert isinstance(scale.postgres, PostgresCluster)
    scale.postgres.destroy()


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from datarooms.errors import MissingDependencyError
    from datarooms.homeserver import _proc

    monkeypatch.setattr(_proc.shutil, "which", lambda _name: None)
    with pytest.raises(MissingDependencyError, match="apt-get install -y redis-server"):
        _proc.require_program("redis-server", "redis-server")


async def test_an_internal_port_taken_is_named_and_nothing_starts(tmp_path: Path) -> None:
    import socket

    scale = TestScaleHomeserver(tmp_path / "taken").scale
    persister = scale.worker("persister1")
    with socket.socket() as squatter:
        squatter.bind((persister.host, persister.port))
        squatter.listen()
        with pytest.raises(PortInUseError, match="internal_port_base"):
            await scale.start()
    assert not scale.running and not scale.postgres.running and not scale.redis.running
