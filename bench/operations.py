"""Operating a platform: backup and restore throughput of a whole data dir.

Run from the repo root: python bench/operations.py [--quick | --smoke]

Starts a real embedded platform (`datarooms up`, services=none) on a temp data
dir, fills it with encrypted files through the SDK until the data dir holds the
target size (full: 1 GB; quick: 128 MB; smoke: 8 MB), then, side by side in one
run:

- backup_mb_s: `services.backup.backup` of the running platform (SQLite copied
  online, tar, age-encrypted to an X25519 recipient, fsynced), MB of data dir / s;
  baseline tar_mb_s: GNU `tar -cf` of the same data dir (no snapshot, no encryption).
- restore_mb_s: `services.backup.restore` of that archive into a new dir (decrypt,
  extract, SHA-256 check of every file against the manifest); baseline
  untar_mb_s: `tar -xf` of the plain tar.

- usage_1000_rooms_s: `rooms.usage()` over 1,000 rooms (quick: 100; smoke: 5; each
  with a record), with the homeserver's own figures read from its SQLite database;
  baseline admin_rooms_s: listing the same rooms with Synapse's admin API
  (`/_synapse/admin/v1/rooms`, paged), which counts members and state only.

- cleanup_samples_per_s: a retention cleanup (1-day raw policy) of a room holding
  1M raw samples three days old (quick: 100k; smoke: 5k), indexed on the device:
  rollup events posted, raw batches redacted, raw samples pruned, samples/s;
  reclaimed_mb: the device index's pages freed for reuse; baseline
  prune_only_samples_per_s: only deleting the same rows from a copy of the index
  (what a local-only cleanup would cost).
- storm_*: a flood against a Synapse with its default rate limits (an external
  homeserver as shipped: 0.2 messages/s after a burst of 10): `storm_messages`
  record puts (full: 40; quick: 20; smoke: 12) sent as fast as the SDK will, 8 at a
  time; storm_errors must be 0 (every 429 waited out), storm_429s counts the
  waits, storm_puts_per_s against the server's own limit (storm_limit_per_s).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import bench_args, emit, machine, median
from datarooms.homeserver.embedded import free_port

DATAROOMS = str(Path(sys.executable).parent / "datarooms")


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


async def usage_times(
    data_dir: Path, rooms: int, rounds: int
) -> tuple[int, list[float], list[float]]:
    """Make ``rooms`` rooms, then time rooms.usage() and the admin API's room list."""
    from datarooms import Credentials, DataroomsClient
    from datarooms.account import read_credentials
    from datarooms.config import load_settings
    from datarooms.homeserver.stats import sqlite_room_stats
    from datarooms.services.platform import live_homeserver_url

    settings = load_settings(data_dir=data_dir, env={})
    stored = read_credentials(settings.credentials_file)
    assert stored is not None
    creds = Credentials(live_homeserver_url(settings), stored.user_id, password=stored.password)
    ours: list[float] = []
    admin: list[float] = []
    async with await DataroomsClient.open(creds, data_dir / "devices" / "bench-filler") as client:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                room = await client.rooms.create("device", name=f"room {i}")
                await client.records.put(room.room_id, "k", i)

        have = len(client.joined_rooms())
        await asyncio.gather(*(one(i) for i in range(max(0, rooms - have))))
        await client.sync_once()
        n = len(client.joined_rooms())
        db = settings.synapse_dir / "homeserver.db"
        for _ in range(rounds):
            t0 = time.perf_counter()
            server = {r: (x.events, x.bytes) for r, x in sqlite_room_stats(db).items()}
            rows = client.rooms.usage(server)
            ours.append(time.perf_counter() - t0)
            assert len(rows) >= n
            t0 = time.perf_counter()
            listed = 0
            async with client.http() as http:
                start: str | None = "0"
                while start is not None:
                    page = await http.request(
                        "GET", f"/_synapse/admin/v1/rooms?limit=500&from={start}"
                    )
                    listed += len(page.get("rooms", []))
                    nxt = page.get("next_batch")
                    start = str(nxt) if nxt is not None else None
            admin.append(time.perf_counter() - t0)
            assert listed >= n
    return n, ours, admin


#: Synapse's own defaults for what the storm hits (docs: rc_message, rc_room_creation).
SYNAPSE_DEFAULT_LIMITS = {
    "rc_message": {"per_second": 0.2, "burst_count": 10},
    "rc_room_creation": {"per_second": 0.05, "burst_count": 3},
}


def storm(tmp: Path, n: int) -> dict[str, float]:
    import logging

    from datarooms import Credentials, DataroomsClient
    from datarooms.testing import TestHomeserver

    waits: list[str] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if "429" in msg or "rate limited" in msg:
                waits.append(msg)

    handler = Count()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    errors = 0
    try:
        with TestHomeserver(tmp / "storm-hs", extra_config=SYNAPSE_DEFAULT_LIMITS) as hs:

            async def go() -> float:
                nonlocal errors
                user = await hs.new_user("storm")
                creds = Credentials(hs.base_url, user.user_id, user.access_token)
                async with await DataroomsClient.open(creds, tmp / "storm-dev") as c:
                    room = (await c.rooms.create("device", name="storm")).room_id
                    sem = asyncio.Semaphore(8)

                    async def one(i: int) -> None:
                        nonlocal errors
                        async with sem:
                            try:
                                await c.records.put(room, f"k{i % 7}", i)
                            except Exception as exc:
                                errors += 1
                                print(f"storm: put {i} failed: {exc!r}"[:300], flush=True)

                    t0 = time.perf_counter()
                    await asyncio.gather(*(one(i) for i in range(n)))
                    return time.perf_counter() - t0

            took = asyncio.run(go())
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    return {"took": took, "errors": float(errors), "waits": float(len(waits))}


async def cleanup_times(data_dir: Path, samples: int) -> dict[str, float]:
    import sqlite3

    from datarooms import Credentials, DataroomsClient
    from datarooms.account import read_credentials
    from datarooms.config import load_settings
    from datarooms.sdk.retention import RetentionPolicy
    from datarooms.services.platform import live_homeserver_url

    settings = load_settings(data_dir=data_dir, env={})
    stored = read_credentials(settings.credentials_file)
    assert stored is not None
    creds = Credentials(live_homeserver_url(settings), stored.user_id, password=stored.password)
    async with await DataroomsClient.open(creds, data_dir / "devices" / "bench-cleaner") as c:
        room = (await c.rooms.create("device", name="old telemetry")).room_id
        t0 = int(time.time() * 1000) - 3 * 86_400_000
        step = max(1, 86_400_000 // samples)  # spread over one day, three days ago
        for lo in range(0, samples, 50_000):
            await c.telemetry.append_many(
                room,
                [
                    (t0 + i * step, "kw", float(i % 1000))
                    for i in range(lo, min(samples, lo + 50_000))
                ],
            )
        await c.telemetry.flush(timeout=600)
        await c.telemetry.catch_up(room)
        index_path = c.telemetry.directory / "index.db"
        copy = data_dir.parent / "index-copy.db"
        src = sqlite3.connect(index_path)
        dst = sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        t = time.perf_counter()
        dst.execute("DELETE FROM samples WHERE ts < ?", (t0 + 86_400_000,))
        dst.commit()
        prune_only = time.perf_counter() - t
        dst.close()
        copy.unlink()
        await c.retention.set_policy(room, RetentionPolicy(telemetry_raw_days=1))
        t = time.perf_counter()
        report = await c.retention.cleanup(room)
        took = time.perf_counter() - t
        db = sqlite3.connect(index_path)
        free = (
            db.execute("PRAGMA freelist_count").fetchone()[0]
            * db.execute("PRAGMA page_size").fetchone()[0]
        )
        db.close()
    return {
        "samples": float(report.telemetry_samples),
        "batches": float(report.redacted),
        "rollup_events": float(report.rollup_events),
        "cleanup_s": took,
        "prune_only_s": prune_only,
        "reclaimed_mb": free / 1e6,
    }


async def fill(data_dir: Path, target: int, chunk: int) -> int:
    from datarooms import Credentials, DataroomsClient
    from datarooms.account import read_credentials
    from datarooms.config import load_settings
    from datarooms.services.platform import live_homeserver_url

    settings = load_settings(data_dir=data_dir, env={})
    stored = read_credentials(settings.credentials_file)
    assert stored is not None
    creds = Credentials(live_homeserver_url(settings), stored.user_id, password=stored.password)
    n = 0
    async with await DataroomsClient.open(creds, data_dir / "devices" / "bench-filler") as client:
        room = await client.rooms.create("project", name="bulk")
        for i in range(20):
            await client.records.put(room.room_id, f"k{i}", {"i": i})
        while du_bytes(data_dir) < target:
            src = data_dir.parent / "payload.bin"
            src.write_bytes(os.urandom(chunk))
            await client.files.put(room.room_id, src, filename=f"blob-{n}.bin")
            n += 1
        src.unlink(missing_ok=True)
    return n


def main() -> None:
    ap = bench_args(__doc__, "128 MB instead of 1 GB")
    args = ap.parse_args()
    target_mb = 8 if args.smoke else 128 if args.quick else 1024
    rounds = 1 if args.smoke else 3
    chunk = (1 if args.smoke else 16) << 20
    usage_rooms = 5 if args.smoke else 100 if args.quick else 1000
    cleanup_samples = 5_000 if args.smoke else 100_000 if args.quick else 1_000_000
    storm_n = 12 if args.smoke else 20 if args.quick else 40
    tmp = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    data_dir = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAROOMS_")}
    env["DATAROOMS_SERVICES"] = "none"
    up = subprocess.Popen(
        [DATAROOMS, "--data-dir", str(data_dir), "up", "--port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    times: dict[str, list[float]] = {"backup": [], "tar": [], "restore": [], "untar": []}
    try:
        deadline = time.monotonic() + 180
        while not (data_dir / "run" / "state.json").exists():
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("datarooms up did not start")
            time.sleep(0.05)
        files = asyncio.run(fill(data_dir, target_mb << 20, chunk))
        size = du_bytes(data_dir)
        print(f"data dir: {size / 1e6:.0f} MB ({files} files)", flush=True)

        n_rooms, usage_ours, usage_admin = asyncio.run(usage_times(data_dir, usage_rooms, rounds))
        print(
            f"usage of {n_rooms} rooms: {median(usage_ours):.3f} s "
            f"(admin room list {median(usage_admin):.3f} s)",
            flush=True,
        )
        cl = asyncio.run(cleanup_times(data_dir, cleanup_samples))
        print(
            f"cleanup of {cl['samples']:.0f} raw samples ({cl['batches']:.0f} batches, "
            f"{cl['rollup_events']:.0f} rollup events): {cl['cleanup_s']:.2f} s; "
            f"deleting the rows alone {cl['prune_only_s']:.2f} s; "
            f"{cl['reclaimed_mb']:.1f} MB freed",
            flush=True,
        )
        st = storm(tmp, storm_n)
        print(
            f"storm: {storm_n} puts against Synapse's default limits in {st['took']:.1f} s, "
            f"{st['waits']:.0f} waits on 429, {st['errors']:.0f} errors",
            flush=True,
        )
        size = du_bytes(data_dir)

        from pyrage import x25519

        from datarooms.config import load_settings
        from datarooms.services.backup import backup, restore

        settings = load_settings(data_dir=data_dir, env={})
        identity = x25519.Identity.generate()
        for i in range(rounds):  # interleaved: noise hits both alike
            out = tmp / f"b{i}.tar.age"
            t0 = time.perf_counter()
            backup(settings, out, recipients=[str(identity.to_public())])
            times["backup"].append(time.perf_counter() - t0)
            plain = tmp / f"p{i}.tar"
            t0 = time.perf_counter()
            subprocess.run(
                ["tar", "-cf", str(plain), "--exclude=./run", "-C", str(data_dir), "."], check=True
            )
            times["tar"].append(time.perf_counter() - t0)
            target = tmp / f"restored-{i}"
            t0 = time.perf_counter()
            restore(out, target, identities=[str(identity)])
            times["restore"].append(time.perf_counter() - t0)
            untarred = tmp / f"untarred-{i}"
            untarred.mkdir()
            t0 = time.perf_counter()
            subprocess.run(["tar", "-xf", str(plain), "-C", str(untarred)], check=True)
            times["untar"].append(time.perf_counter() - t0)
            for p in (out, plain):
                p.unlink()
            shutil.rmtree(target)
            shutil.rmtree(untarred)
            print(
                f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                flush=True,
            )
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        finally:
            up.kill()
            shutil.rmtree(tmp, ignore_errors=True)
    mb = size / 1e6
    rate = {k: mb / median(v) for k, v in times.items()}
    print(
        f"{mb:.0f} MB data dir, medians of {rounds}: backup {rate['backup']:.0f} MB/s "
        f"(plain tar {rate['tar']:.0f} MB/s), restore {rate['restore']:.0f} MB/s "
        f"(plain untar {rate['untar']:.0f} MB/s); usage of {n_rooms} rooms "
        f"{median(usage_ours):.3f} s (admin room list {median(usage_admin):.3f} s)"
    )
    emit(
        {
            "bench": "operations",
            "data_mb": mb,
            "backup_mb_s": rate["backup"],
            "tar_mb_s": rate["tar"],
            "restore_mb_s": rate["restore"],
            "untar_mb_s": rate["untar"],
            "backup_over_tar": rate["tar"] / rate["backup"],
            "usage_rooms": n_rooms,
            "usage_1000_rooms_s": median(usage_ours) * 1000 / n_rooms,
            "usage_s": median(usage_ours),
            "admin_rooms_s": median(usage_admin),
            "cleanup_samples": cl["samples"],
            "cleanup_samples_per_s": cl["samples"] / cl["cleanup_s"],
            "prune_only_samples_per_s": cl["samples"] / max(cl["prune_only_s"], 1e-9),
            "cleanup_batches_redacted": cl["batches"],
            "rollup_events": cl["rollup_events"],
            "reclaimed_mb": cl["reclaimed_mb"],
            "storm_messages": storm_n,
            "storm_errors": st["errors"],
            "storm_429s": st["waits"],
            "storm_puts_per_s": storm_n / st["took"],
            "storm_limit_per_s": SYNAPSE_DEFAULT_LIMITS["rc_message"]["per_second"],
            "rounds": rounds,
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
