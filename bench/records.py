"""Records and files: put latency, twin-state and key-history queries, file throughput.

Run from the repo root: python bench/records.py [--quick | --smoke]

Everything runs against a real embedded Synapse, with two SDK devices (two users)
sharing an encrypted data room, so every Megolm session is really shared.

1. put: ``client.records.put`` vs a raw nio ``room_send`` of the same
   ``io.datarooms.record`` content on the same client and room, interleaved
   (alternating which goes first) after a warm-up. put_overhead_ratio =
   put_p50 / raw_send_p50.
2. twin / key history from the local index: a LocalIndex filled through
   ``add_records`` (the code path sync uses) with synthetic versions - 1,000 keys
   x 100 versions (quick: x 20), one key having 1,000 versions in all - then
   ``index.twin`` (1,000 keys), ``client.records.twin`` on a client pointed at that
   index, and ``index.history`` of the 1,000-version key. twin_sql_p50_ms is the
   bare SQL of twin (fetchall on a separate connection), to show where time goes.
3. the baseline for history, on a real room: N versions of one key really put
   (full 1,000, quick 150), then a second device's ``records.history`` (its
   synced index; the first call also pages in the gap) vs paginating
   ``/messages`` back from the end with nio (which decrypts every chunk) and
   filtering the key's versions.
4. files: ``files.put`` (encrypt + upload + send) and ``files.get`` (download +
   verify + decrypt, by the other device) of 32 MB and 256 MB (quick: 32 MB) made
   on disk 1 MiB at a time; this process's VmRSS sampled every 50 ms during each
   transfer. MB means MiB (2**20 bytes) throughout.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nio import RoomMessagesError, RoomSendError
from nio.api import MessageDirection

from _common import (
    bench_args,
    emit,
    machine,
    median,
    percentile,
    rss_mb,
    with_homeserver,
)
from datarooms import Credentials, DataroomsClient
from datarooms import events as ev
from datarooms._store.index import LocalIndex, Record
from datarooms.homeserver.admin import RegisteredUser
from datarooms.testing import TestHomeserver

MIB = 1 << 20


def ms(seconds: float) -> float:
    return seconds * 1000


def stats(name: str, values_ms: list[float]) -> dict[str, float]:
    return {
        f"{name}_p50_ms": median(values_ms),
        f"{name}_p99_ms": percentile(values_ms, 99),
    }


async def timed(aw: Awaitable[Any]) -> tuple[float, Any]:
    """Await ``aw`` (a coroutine not yet started); return (elapsed ms, its result)."""
    t0 = time.perf_counter()
    out = await aw
    return ms(time.perf_counter() - t0), out


class RssSampler:
    """This process's VmRSS every ``interval`` s in a thread, for a ``with`` block."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.baseline = 0.0
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        gc.collect()
        self.baseline = self.peak = rss_mb(os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(os.getpid()))


# -- setup ------------------------------------------------------------------------


async def open_client(hs: TestHomeserver, user: RegisteredUser, store: Path) -> DataroomsClient:
    return await DataroomsClient.open(
        Credentials(hs.base_url, user.user_id, user.access_token), store
    )


async def shared_room(owner: DataroomsClient, other: DataroomsClient, name: str) -> str:
    """As tests/_rooms.py: ``owner`` creates a room, ``other`` may write and joins."""
    room = await owner.rooms.create("device", name=name)
    await owner.rooms.grant(room.room_id, other.user_id, "write")
    await other.sync_once()
    await other.rooms.join(room.room_id)
    await owner.sync_once()
    return room.room_id


# -- 1. put vs raw send -----------------------------------------------------------


async def bench_put(client: DataroomsClient, room: str, n: int, warmup: int) -> dict[str, Any]:
    async def put(i: int) -> None:
        await client.records.put(room, f"sensor-{i % 10}", {"c": 20 + i % 7, "seq": i})

    async def raw(i: int) -> None:
        txn = uuid.uuid4().hex
        content = {"key": f"sensor-{i % 10}", "value": {"c": 20 + i % 7, "seq": i}, "txn": txn}
        resp = await client.nio.room_send(
            room, ev.RECORD, content, tx_id=txn, ignore_unverified_devices=True
        )
        if isinstance(resp, RoomSendError):
            raise SystemExit(f"raw send failed: {resp.message}")

    for i in range(warmup):  # the first sends create and share the Megolm session
        await put(i)
        await raw(i)
    puts: list[float] = []
    raws: list[float] = []
    for i in range(n):  # interleaved, alternating which goes first
        pairs = [(put, puts), (raw, raws)]
        for fn, out in pairs if i % 2 == 0 else reversed(pairs):
            t0 = time.perf_counter()
            await fn(i)
            out.append(ms(time.perf_counter() - t0))
    put_p50, raw_p50 = median(puts), median(raws)
    return {
        **stats("put", puts),
        **stats("raw_send", raws),
        "put_overhead_ratio": put_p50 / raw_p50,
        "put_overhead_ms": put_p50 - raw_p50,
        "put_n": n,
    }


# -- 2. twin and history from a large synthetic index ------------------------------


def fill_index(index: LocalIndex, room: str, keys: int, versions: int, hot_versions: int) -> int:
    """``keys`` x ``versions`` records in time order; key 0 gets ``hot_versions`` in all."""
    rng = random.Random(1)
    sender = "@writer:localhost"
    hot_extra = max(0, hot_versions // versions - 1)  # extra hot versions per round
    ts = 1_700_000_000_000
    batch: list[Record] = []
    total = 0

    def record(key: str, v: int) -> Record:
        nonlocal ts
        ts += 1
        return Record(
            room_id=room,
            key=key,
            value={"c": round(rng.uniform(-20, 40), 2), "unit": "C", "v": v},
            event_id="$" + uuid.uuid4().hex + uuid.uuid4().hex[:11],
            sender=sender,
            ts=ts,
            txn=uuid.uuid4().hex,
        )

    for v in range(versions):
        for k in range(keys):
            batch.append(record(f"key-{k:04d}", v))
            if k == 0:
                batch.extend(record("key-0000", v) for _ in range(hot_extra))
            if len(batch) >= 5000:
                total += len(index.add_records(batch))
                batch = []
    total += len(index.add_records(batch))
    return total


async def bench_index(
    tmp: Path, reader: DataroomsClient, versions: int, runs: int
) -> dict[str, Any]:
    room, keys, hot = "!synthetic:localhost", 1000, 1000
    index = LocalIndex(tmp / "synthetic" / "index.db")
    try:
        t0 = time.perf_counter()
        total = fill_index(index, room, keys, versions, hot)
        fill_s = time.perf_counter() - t0
        print(
            f"synthetic index: {total:,} record versions of {keys:,} keys filled in "
            f"{fill_s:.1f} s ({total / fill_s:,.0f} versions/s through add_records)"
        )

        def loop(fn: Callable[[], Any], expect: int) -> list[float]:
            for _ in range(5):
                fn()
            out = []
            for _ in range(runs):
                t = time.perf_counter()
                got = fn()
                out.append(ms(time.perf_counter() - t))
                assert len(got) == expect, (len(got), expect)
            return out

        twin = loop(lambda: index.twin(room), keys)
        hist = loop(lambda: index.history(room, "key-0000"), hot)
        sql = sqlite3.connect(f"file:{index.path}?mode=ro", uri=True)
        try:
            twin_sql = loop(
                lambda: sql.execute(
                    "SELECT key, value, event_id, sender, ts, schema, versions FROM latest "
                    "WHERE room_id = ?",
                    (room,),
                ).fetchall(),
                keys,
            )
        finally:
            sql.close()
        # The SDK call, on a client whose index is this one (no gaps: no I/O).
        own, reader.index = reader.index, index
        try:
            for _ in range(5):
                await reader.records.twin(room)
            twin_client = []
            for _ in range(runs):
                t, got = await timed(reader.records.twin(room))
                twin_client.append(t)
                assert len(got) == keys
        finally:
            reader.index = own
        db_mb = sum(p.stat().st_size for p in index.path.parent.iterdir()) / MIB
    finally:
        index.close()
    return {
        # twin_state is what the SDK's records.twin() answers ({key: value}); the
        # index's full-Record view (records.latest()) is reported beside it.
        **stats("twin_latest_records", twin),
        **stats("twin_sql", twin_sql),
        **stats("twin_state", twin_client),
        **stats("key_history", hist),
        "index_versions": total,
        "index_keys": keys,
        "key_history_versions": hot,
        "index_fill_s": fill_s,
        "index_fill_per_s": total / fill_s,
        "index_db_mb": db_mb,
        "index_query_runs": runs,
    }


# -- 3. history: local index vs paginating /messages, on a real room -----------------


async def paginate_history(client: DataroomsClient, room: str, key: str) -> tuple[int, int, int]:
    """Page /messages back from the end, decrypting; return (versions, events, pages)."""
    token: str | None = None
    found = events = pages = 0
    while True:
        resp = await client.nio.room_messages(
            room, start=token, direction=MessageDirection.back, limit=100
        )
        if isinstance(resp, RoomMessagesError):
            raise SystemExit(f"/messages failed: {resp.message}")
        pages += 1
        events += len(resp.chunk)
        for e in resp.chunk:
            source = getattr(e, "source", None)
            if (
                isinstance(source, dict)
                and source.get("type") == ev.RECORD
                and source.get("content", {}).get("key") == key
            ):
                found += 1
        if not resp.chunk or not resp.end:
            return found, events, pages
        token = resp.end


async def bench_history(
    writer: DataroomsClient, reader: DataroomsClient, n: int, runs: int, index_runs: int
) -> dict[str, Any]:
    room = await shared_room(writer, reader, "bench history")
    key = "history-key"
    t0 = time.perf_counter()
    for i in range(n):
        await writer.records.put(room, key, {"c": 20 + i % 7, "seq": i})
    put_s = time.perf_counter() - t0
    print(f"history room: {n} versions of one key put in {put_s:.1f} s ({n / put_s:.0f}/s)")
    await reader.sync_once()
    await reader.sync_once()
    first_ms, got = await timed(reader.records.history(room, key))
    assert len(got) == n, (len(got), n)
    index_ms = []
    for _ in range(index_runs):
        t, got = await timed(reader.records.history(room, key))
        index_ms.append(t)
        assert len(got) == n
    pag_ms = []
    events = pages = 0
    for _ in range(runs):
        t, (found, events, pages) = await timed(paginate_history(reader, room, key))
        pag_ms.append(t)
        assert found == n, (found, n)
    idx_p50, pag_p50 = median(index_ms), median(pag_ms)
    return {
        "messages_pagination_p50_ms": pag_p50,
        "messages_pagination_max_ms": max(pag_ms),
        "messages_pagination_runs": runs,
        "messages_events": events,
        "messages_pages": pages,
        **stats("history_index_real", index_ms),
        "history_first_read_ms": first_ms,
        "history_speedup": pag_p50 / idx_p50,
        "history_versions_real": n,
        "history_put_per_s": n / put_s,
    }


# -- 4. files ---------------------------------------------------------------------


def make_file(path: Path, mib: int) -> str:
    """``mib`` MiB of random bytes, written 1 MiB at a time; returns its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(mib):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


async def bench_files(
    writer: DataroomsClient, reader: DataroomsClient, room: str, sizes: list[int], tmp: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    work = tmp / "files"
    work.mkdir()
    for mib in sizes:
        src, dest = work / f"source-{mib}.bin", work / f"copy-{mib}.bin"
        want = make_file(src, mib)
        with RssSampler() as up:
            up_ms, ref = await timed(writer.files.put(room, src))
        await reader.sync_once()  # the room key of the m.file event, if new
        with RssSampler() as down:
            down_ms, _ = await timed(reader.files.get(room, ref.event_id, dest, overwrite=True))
        if sha256_file(dest) != want:
            raise SystemExit(f"the {mib} MB file came back different")
        src.unlink()
        dest.unlink()
        peak = max(up.peak, down.peak)
        out[f"file_{mib}mb"] = {
            "upload_mb_s": mib / (up_ms / 1000),
            "download_mb_s": mib / (down_ms / 1000),
            "upload_peak_rss_mb": up.peak,
            "upload_rss_growth_mb": up.peak - up.baseline,
            "download_peak_rss_mb": down.peak,
            "download_rss_growth_mb": down.peak - down.baseline,
            "peak_rss_mb": peak,
        }
        r = out[f"file_{mib}mb"]
        print(
            f"file {mib} MB: upload {r['upload_mb_s']:.1f} MB/s, "
            f"download {r['download_mb_s']:.1f} MB/s; peak RSS {peak:.0f} MB (growth over "
            f"baseline: upload {r['upload_rss_growth_mb']:+.1f} MB, "
            f"download {r['download_rss_growth_mb']:+.1f} MB)"
        )
    big = out[f"file_{max(sizes)}mb"]
    flat: dict[str, Any] = {
        "file_mb": max(sizes),
        "file_upload_mb_s": big["upload_mb_s"],
        "file_download_mb_s": big["download_mb_s"],
        "file_peak_rss_mb": max(v["peak_rss_mb"] for v in out.values()),
        "file_rss_growth_mb": max(
            max(v["upload_rss_growth_mb"], v["download_rss_growth_mb"]) for v in out.values()
        ),
    }
    for mib in sizes:
        flat[f"file_peak_rss_mb_{mib}"] = out[f"file_{mib}mb"]["peak_rss_mb"]
        flat[f"file_upload_mb_s_{mib}"] = out[f"file_{mib}mb"]["upload_mb_s"]
        flat[f"file_download_mb_s_{mib}"] = out[f"file_{mib}mb"]["download_mb_s"]
    return flat


# -- main ---------------------------------------------------------------------------


async def run(hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool = False) -> dict[str, Any]:
    alice = await open_client(hs, await hs.new_user("writer"), tmp / "writer")
    bob = await open_client(hs, await hs.new_user("reader"), tmp / "reader")
    result: dict[str, Any] = {}
    try:
        room = await shared_room(alice, bob, "bench records")
        print("1/4 put vs raw send ...", flush=True)
        result.update(
            await bench_put(
                alice, room, 4 if smoke else 40 if quick else 300, warmup=2 if smoke else 10
            )
        )
        print("2/4 twin and key history from a synthetic index ...", flush=True)
        versions, runs = (2, 3) if smoke else (20, 100) if quick else (100, 300)
        result.update(await bench_index(tmp, bob, versions, runs))
        print("3/4 key history: index vs /messages on a real room ...", flush=True)
        result.update(
            await bench_history(
                alice, bob, *((10, 1, 3) if smoke else (150, 3, 50) if quick else (1000, 5, 100))
            )
        )
        print("4/4 files ...", flush=True)
        sizes = [1] if smoke else [32] if quick else [32, 256]
        result.update(await bench_files(alice, bob, room, sizes, tmp))
    finally:
        await alice.close()
        await bob.close()
    return result


def main() -> None:
    ap = bench_args(__doc__, "smaller counts and files")
    args = ap.parse_args()
    r = with_homeserver("records", lambda hs, tmp: run(hs, tmp, args.quick, args.smoke))
    print(
        f"put (E2EE): p50 {r['put_p50_ms']:.2f} ms (p99 {r['put_p99_ms']:.2f}) vs raw nio "
        f"room_send p50 {r['raw_send_p50_ms']:.2f} ms (p99 {r['raw_send_p99_ms']:.2f}); "
        f"ratio {r['put_overhead_ratio']:.3f} over {r['put_n']} each"
    )
    print(
        f"twin state ({r['index_keys']:,} keys, {r['index_versions']:,} versions): "
        f"client.records.twin p50 {r['twin_state_p50_ms']:.2f} ms (bare SQL "
        f"{r['twin_sql_p50_ms']:.2f} ms; full records via records.latest "
        f"{r['twin_latest_records_p50_ms']:.2f} ms)"
    )
    print(
        f"key history ({r['key_history_versions']:,} versions, same index): "
        f"p50 {r['key_history_p50_ms']:.2f} ms"
    )
    print(
        f"key history on a real room ({r['history_versions_real']} versions): index p50 "
        f"{r['history_index_real_p50_ms']:.2f} ms vs paginating /messages "
        f"({r['messages_pages']} pages, {r['messages_events']} events) p50 "
        f"{r['messages_pagination_p50_ms']:.0f} ms: {r['history_speedup']:.0f}x; "
        f"first read with backfill {r['history_first_read_ms']:.0f} ms"
    )
    print(
        f"files ({r['file_mb']} MB): upload {r['file_upload_mb_s']:.1f} MB/s, download "
        f"{r['file_download_mb_s']:.1f} MB/s; peak RSS {r['file_peak_rss_mb']:.0f} MB, "
        f"max growth {r['file_rss_growth_mb']:+.1f} MB"
    )
    print(f"runtime {r['runtime_s']:.0f} s")
    emit({"bench": "records", "quick": args.quick, "smoke": args.smoke, **r, **machine()})


if __name__ == "__main__":
    main()
