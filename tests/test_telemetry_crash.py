"""Crash safety: a telemetry writer SIGKILLed at random moments loses and repeats nothing."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nio import MegolmEvent, RoomMessagesError
from nio.api import MessageDirection

from datarooms import DataroomsClient
from datarooms.sdk.telemetry import TELEMETRY_BATCH, Telemetry
from tests._rooms import shared_room

WRITER = Path(__file__).resolve().parent / "telemetry_crash_writer.py"
KILLS = 12
PER_RUN = 1_000_000


def _acknowledged(path: Path) -> set[float]:
    acked: set[float] = set()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # cannot happen (one write per line), but never trust it
        run, first, last = map(int, parts)
        acked.update(float(run * PER_RUN + i) for i in range(first, last))
    return acked


async def _batch_events(client: DataroomsClient, room: str) -> dict[tuple[str, int], set[str]]:
    """Every batch event the homeserver holds in the room: (stream, seq) -> event ids."""
    found: dict[tuple[str, int], set[str]] = {}
    token = None
    while True:
        resp = await client.nio.room_messages(
            room, start=token, direction=MessageDirection.front, limit=100
        )
        assert not isinstance(resp, RoomMessagesError), resp
        for e in resp.chunk:
            assert not isinstance(e, MegolmEvent), "the reader must decrypt every batch"
            src: dict[str, Any] = e.source
            if src.get("type") == TELEMETRY_BATCH:
                key = (src["content"]["stream"], src["content"]["seq"])
                found.setdefault(key, set()).add(src["event_id"])
        if not resp.chunk or not resp.end:
            return found
        token = resp.end


async def test_killed_writer_loses_and_repeats_nothing(  # type: ignore[no-untyped-def]
    homeserver, open_client, tmp_path: Path
) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    writer_user = await homeserver.new_user("crash-writer")
    writer = await open_client(writer_user, "crash-writer")
    reader = await open_client(await homeserver.new_user("crash-reader"))
    room = await shared_room(writer, reader)
    await writer.close()  # from now on the device lives in the writer processes

    acks = tmp_path / "acks.txt"
    config = tmp_path / "writer.json"
    config.write_text(
        json.dumps(
            {
                "homeserver_url": homeserver.base_url,
                "user_id": writer_user.user_id,
                "access_token": writer_user.access_token,
                "store": str(tmp_path / "crash-writer"),
                "room": room,
                "acks": str(acks),
            }
        )
    )

    def start(run: int, *extra: str) -> subprocess.Popen[bytes]:
        out = (tmp_path / f"run-{run}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, str(WRITER), str(config), str(run), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )

    async with Telemetry(reader) as tr:
        tr.follow(room)  # a live reader throughout, as in production
        kills = 0
        for run in range(1, KILLS + 1):
            proc = start(run)
            await asyncio.sleep(rng.uniform(0.5, 3.5))  # during start-up, appends or sends
            assert proc.poll() is None, (tmp_path / f"run-{run}.log").read_text()[-3000:]
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            kills += 1
        final = start(KILLS + 1, "--finish")
        code = await asyncio.to_thread(final.wait, 180)
        log = (tmp_path / f"run-{KILLS + 1}.log").read_text()
        assert code == 0 and "FLUSHED" in log, f"seed {seed}: {log[-3000:]}"

        acked = _acknowledged(acks)
        assert kills >= 10 and len(acked) > 1000
        runs_with_acks = {int(line.split()[0]) for line in acks.read_text().splitlines()}
        assert len(runs_with_acks) >= 6, f"seed {seed}: too few runs got to append"
        # Some restarts found unsent samples a killed run left: the resend path ran.
        resumed = [
            r for r in range(2, KILLS + 2) if "RESUMING" in (tmp_path / f"run-{r}.log").read_text()
        ]
        assert resumed, f"seed {seed}: no run was killed with samples in flight"

        await tr.catch_up(room)
        rows = tr.index.samples(room, "crash", since=0, until=2**53, limit=10**8)
        values = [s.value for s in rows]
        assert len(values) == len(set(values)), f"seed {seed}: a sample arrived twice"
        missing = acked - set(values)
        assert not missing, f"seed {seed}: {len(missing)} acknowledged samples lost"
        # Samples appended but killed before their acknowledgement was written may be
        # there too, but only ones a writer really appended (value <-> timestamp).
        assert all(s.ts == 1_700_000_000_000 + int(s.value) for s in rows)

    # On the homeserver, every batch exists once: resends reused their transaction ids.
    events = await _batch_events(reader, room)
    assert events and all(len(ids) == 1 for ids in events.values()), f"seed {seed}"
    assert len({stream for stream, _ in events}) == 1  # one outbox, one stream, throughout
