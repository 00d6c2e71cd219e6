"""Federation: a record put on one homeserver, decrypted on another, against the same
server; and catch-up after the reader's homeserver was down.

Run from the repo root: python bench/federation.py [--quick | --smoke]

Two real Synapses federate over TLS with certificate verification on (a local CA, as
``datarooms up`` makes for organisations on one machine; datarooms.testing.TestFederation).

1. Latency: alice (org a) puts records one at a time into a data room that carol (another
   user of org a) and bob (org b) read, each with a long-polling sync loop. For each
   record: the time from calling ``records.put`` until the record is decrypted in the
   reader's local index. ``same_server_p50_ms`` is carol's median, ``cross_server_p50_ms``
   bob's, ``ratio`` = cross / same. (Full: 200 records; quick: 60; smoke: 10.)
2. Catch-up: org b's homeserver is stopped while alice keeps writing (2 records a second
   for 60 s; quick: 15 s; smoke: 3 s) into a room bob joined but alice never wrote to
   before (so the Megolm keys are owed to bob until b is back); then b starts again as
   the platform starts it (which tells its peers it is back), and alice stays online.
   ``catchup_s``: from b's homeserver being healthy until bob has decrypted every
   record; ``lost``: records bob never got; ``duplicated``: records he has twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in [p for p in sys.path if Path(p or ".").resolve() == _HERE]:
    sys.path.remove(_p)
sys.path.append(str(_HERE))

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from _common import bench_args, emit, machine, median, percentile  # noqa: E402
from datarooms import Credentials, DataroomsClient  # noqa: E402
from datarooms.testing import TestFederation, TestHomeserver  # noqa: E402


async def _open(hs: TestHomeserver, prefix: str, store: Path) -> DataroomsClient:
    user = await hs.new_user(prefix)
    return await DataroomsClient.open(
        Credentials(hs.base_url, user.user_id, user.access_token), store / user.user_id
    )


async def _join(client: DataroomsClient, room: str) -> None:
    for _ in range(600):
        await client.sync_once()
        if room in client.invites():
            break
        await asyncio.sleep(0.05)
    await client.rooms.join(room)
    await client.fill_gaps(room)


class Reader:
    """A long-polling sync loop that notes when each record ``n`` is first readable."""

    def __init__(self, client: DataroomsClient, room: str, key: str) -> None:
        self.client, self.room, self.key = client, room, key
        self.seen: dict[int, float] = {}
        self.task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.client.sync_once(timeout_ms=10_000)
            self.note()

    def note(self) -> None:
        now = time.monotonic()
        for rec in self.client.index.history(self.room, self.key):
            self.seen.setdefault(int(rec.value["n"]), now)

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def latency(orgs: TestFederation, store: Path, n: int) -> dict[str, float]:
    alice = await _open(orgs["a"], "alice", store)
    carol = await _open(orgs["a"], "carol", store)
    bob = await _open(orgs["b"], "bob", store)
    try:
        room = (await alice.rooms.create("device", servers=[orgs.server_names["b"]])).room_id
        for reader in (carol, bob):
            await alice.rooms.grant(room, reader.user_id, "read")
            await _join(reader, room)
        await alice.records.put(room, "warmup", {"n": -1})  # sessions shared before timing
        readers = {"same": Reader(carol, room, "t"), "cross": Reader(bob, room, "t")}
        for r in readers.values():
            r.start()
        sent: dict[int, float] = {}
        for i in range(n):
            sent[i] = time.monotonic()
            await alice.records.put(room, "t", {"n": i})
            deadline = time.monotonic() + 30
            while not all(i in r.seen for r in readers.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"record {i} not readable on both sides in 30 s")
                await asyncio.sleep(0.002)
        for r in readers.values():
            await r.stop()
        lat = {
            name: [(r.seen[i] - sent[i]) * 1000 for i in range(n)] for name, r in readers.items()
        }
        same, cross = median(lat["same"]), median(lat["cross"])
        return {
            "same_server_p50_ms": same,
            "cross_server_p50_ms": cross,
            "ratio": cross / same,
            "same_server_p90_ms": percentile(lat["same"], 90),
            "cross_server_p90_ms": percentile(lat["cross"], 90),
            "records": n,
        }
    finally:
        for c in (alice, carol, bob):
            await c.close()


async def catchup(orgs: TestFederation, store: Path, outage_s: float) -> dict[str, Any]:
    alice = await _open(orgs["a"], "alice2", store)
    bob = await _open(orgs["b"], "bob2", store)
    try:
        room = (await alice.rooms.create("device", servers=[orgs.server_names["b"]])).room_id
        await alice.rooms.grant(room, bob.user_id, "read")
        await _join(bob, room)
        await orgs.stop("b")
        written = 0
        t_end = time.monotonic() + outage_s
        while time.monotonic() < t_end:
            await alice.records.put(room, "r", {"n": written})
            written += 1
            await asyncio.sleep(0.5)
        await orgs["b"].synapse.start()
        healthy = time.monotonic()
        admin = await orgs["b"].new_user("wake", admin=True)
        from datarooms.homeserver.federation import wake_peers

        await wake_peers(orgs["b"].base_url, admin.access_token, orgs["b"].server_name)
        alice.start_sync()  # a writer that stays online pays the keys it owes bob
        deadline = healthy + 300
        got: list[int] = []
        while time.monotonic() < deadline:
            await bob.sync_once(timeout_ms=1000)
            await bob.fill_gaps(room)
            got = [int(r.value["n"]) for r in bob.index.history(room, "r")]
            if len(set(got)) >= written:
                break
        took = time.monotonic() - healthy
        return {
            "outage_s": outage_s,
            "written_during_outage": written,
            "catchup_s": took,
            "lost": written - len(set(got) & set(range(written))),
            "duplicated": len(got) - len(set(got)),
        }
    finally:
        await alice.stop_sync()
        await alice.close()
        await bob.close()


async def main() -> None:
    ap = bench_args(__doc__, "60 latency samples, a 15 s outage")
    args = ap.parse_args()
    n, outage = (10, 3.0) if args.smoke else (60, 15.0) if args.quick else (200, 60.0)
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-federation-"))
    try:
        orgs = TestFederation(tmp / "orgs", ["a", "b"])
        # Synapse's own retry schedule between peers, as `datarooms up` configures it for
        # organisations on one machine (5 s, doubling up to 30 s).
        for org in orgs.orgs.values():
            fed = org.synapse.federation
            assert fed is not None
            from dataclasses import replace

            org.synapse.federation = replace(fed, retry_interval="5s", retry_max_interval="30s")
        await asyncio.to_thread(orgs.__enter__)
        try:
            result: dict[str, Any] = {"bench": "federation", **machine()}
            result.update(await latency(orgs, tmp / "devices", n))
            print(
                f"put -> decrypted: same server p50 {result['same_server_p50_ms']:.1f} ms, "
                f"cross server p50 {result['cross_server_p50_ms']:.1f} ms "
                f"(ratio {result['ratio']:.2f})",
                flush=True,
            )
            result.update(await catchup(orgs, tmp / "devices", outage))
            print(
                f"catch-up after a {outage:.0f} s outage: {result['catchup_s']:.1f} s, "
                f"lost {result['lost']}, duplicated {result['duplicated']}",
                flush=True,
            )
        finally:
            await asyncio.to_thread(orgs.__exit__, None, None, None)
        emit(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
