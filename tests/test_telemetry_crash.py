"""Crash safety: a telemetry writer SIGKILLed at random moments loses and repeats nothing.

The moments are random but replayable: every choice (here and in the writer) comes
from ``DATAROOMS_TEST_SEED`` (printed; a fixed default), and each kill is at a point
of the writer's own progress (during its start-up, after its N-th acknowledged
append, with or without sends in flight), not after some wall time. 6 kills by
default, 12 with ``DATAROOMS_FULL_TESTS=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from nio import MegolmEvent, RoomMessagesError
from nio.api import MessageDirection

from datarooms import DataroomsClient
from datarooms.sdk.telemetry import TELEMETRY_BATCH, Telemetry
from tests._rooms import shared_room

WRITER = Path(__file__).resolve().parent / "telemetry_crash_writer.py"
KILLS = 12 if os.environ.get("DATAROOMS_FULL_TESTS") == "1" else 6
SEED = os.environ.get("DATAROOMS_TEST_SEED", "20201")
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


async def _until_in_log(
    proc: subprocess.Popen[bytes], log: Path, marker: str, what: str, timeout: float = 120
) -> None:
    """Wait for the writer to print ``marker`` (it must still be running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while marker not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"{what}: the writer exited: {log.read_text()[-3000:]}"
        assert loop.time() < deadline, f"{what}: no {marker} in time: {log.read_text()[-3000:]}"
        await asyncio.sleep(0.02)


async def test_killed_writer_loses_and_repeats_nothing(  # type: ignore[no-untyped-def]
    homeserver, open_client, tmp_path: Path
) -> None:
    seed = SEED
    print(f"test_telemetry_crash: DATAROOMS_TEST_SEED={seed} (set it to replay this run)")
    rng = random.Random(seed)
    # Where each run is killed (see tests/telemetry_crash_writer.py). The first is killed
    # right after an append, before anything could be sent: the next run must resend.
    plan = [f"acks:{rng.randint(60, 100)}:0"]
    others = rng.choices(["open", "started", "acks", "acks"], k=KILLS - 5)
    kinds = ["open", "started", "acks", "acks", *others]
    rng.shuffle(kinds)  # every kind of point at least once, 3 runs that append at least
    for kind in kinds:
        linger = rng.choice([0, rng.randint(1, 150)])
        plan.append(
            "open"
            if kind == "open"
            else f"started:{linger}"
            if kind == "started"
            else f"acks:{rng.randint(30, 80)}:{linger}"
        )
    print(f"test_telemetry_crash: kill points {plan}")
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
            [sys.executable, str(WRITER), str(config), str(run), seed, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )

    async with Telemetry(reader) as tr:
        tr.follow(room)  # a live reader throughout, as in production
        kills = 0
        for run, point in enumerate(plan, 1):
            proc = start(run, "--pause-at", point)
            log = tmp_path / f"run-{run}.log"
            marker = "OPENING" if point == "open" else "PAUSED"
            await _until_in_log(proc, log, marker, f"seed {seed} run {run} ({point})")
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            kills += 1
        final = start(KILLS + 1, "--finish")
        code = await asyncio.to_thread(final.wait, 180)
        log = (tmp_path / f"run-{KILLS + 1}.log").read_text()
        assert code == 0 and "FLUSHED" in log, f"seed {seed}: {log[-3000:]}"

        acked = _acknowledged(acks)
        assert kills == KILLS and len(acked) > 1000
        runs_with_acks = {int(line.split()[0]) for line in acks.read_text().splitlines()}
        appended = {r for r, p in enumerate(plan, 1) if p.startswith("acks")} | {KILLS + 1}
        assert runs_with_acks == appended, f"seed {seed}: runs that appended {runs_with_acks}"
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
