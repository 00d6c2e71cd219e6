"""Collaborative documents: catch-up from a snapshot vs replaying every update, and
edit-to-visible latency between two devices vs a record put of the same size.

Run from the repo root: python bench/docs.py [--quick | --smoke]

A real embedded Synapse; two users' devices (writer, reader) in one encrypted data room.

1. Catch-up. The writer sends N document updates (10,000; ``--quick`` 600) in IXO's
   format, one line of text each (8 in flight), then publishes a snapshot (the document is
   over the inline ceiling, so it is media-backed: an encrypted attachment). The reader
   opens the document on a fresh ``Document`` each round:
   - ``catchup_snapshot_ms``: ``client.docs.open(room)``: the newest readable snapshot,
     then the updates after it;
   - ``catchup_replay_ms``: ``client.docs.open(room, from_snapshot=False)``: every update
     from the room's start (paged from ``/messages`` and decrypted, as any reader without
     a snapshot must);
   median of 3 rounds each, interleaved; ``ratio`` = replay / snapshot. Both must give the
   same document (checked).
2. Edit-to-visible. Both devices run their sync loops. ``edit_visible_p50_ms``: the writer
   inserts 100 characters into the document and ``flush()``es; timed until the reader's
   document observer sees the change. ``record_visible_p50_ms``: the writer puts a record
   whose value is a 100-character string; timed until the reader's sync delivers it (a
   ``RoomEventReceived`` hook). Interleaved, alternating which goes first.
   ``edit_visible_batched_p50_ms``: the same edit without ``flush()``: IXO's 500 ms writer
   batching decides when it goes out (fewer samples).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pycrdt

from _common import bench_args, emit, interleaved, machine, median, percentile, with_homeserver
from datarooms import Credentials, DataroomsClient
from datarooms._logging import configure_logging
from datarooms.events import RECORD
from datarooms.sdk.docs import UPDATE_EVENT, DocChange
from datarooms.sdk.docs.wire import (
    INLINE_MAX_BYTES_ENCRYPTED,
    decode_state_vector,
    update_content,
)
from datarooms.sdk.hooks import RoomEventReceived
from datarooms.testing import TestHomeserver

EDIT = "x" * 100


async def _client(hs: TestHomeserver, tmp: Path, name: str) -> DataroomsClient:
    user = await hs.new_user(name)
    creds = Credentials(hs.base_url, user.user_id, user.access_token)
    return await DataroomsClient.open(creds, tmp / name)


async def _write_updates(writer: DataroomsClient, room: str, n: int) -> bytes:
    """N updates of one document, each its own event; returns the document's state."""
    ydoc: pycrdt.Doc[Any] = pycrdt.Doc()
    updates: list[bytes] = []
    ydoc.observe(lambda e: updates.append(bytes(e.update)))
    text = ydoc.get("log", type=pycrdt.Text)
    for i in range(n):
        text.insert(len(text), f"line {i:05d}\n")
    sem = asyncio.Semaphore(8)

    async def send(update: bytes) -> None:
        async with sem:
            await writer.send(room, UPDATE_EVENT, update_content(update, "default"))

    # In order, up to 8 in flight: the reader's dependency tracking sees small reorderings.
    await asyncio.gather(*(send(u) for u in updates))
    return bytes(ydoc.get_update())


async def run(hs: TestHomeserver, tmp: Path, n: int, rounds: int, samples: int) -> dict[str, Any]:
    writer = await _client(hs, tmp, "doc-writer")
    reader = await _client(hs, tmp, "doc-reader")
    try:
        room = (await writer.rooms.create("collaboration", name="bench")).room_id
        await writer.rooms.grant(room, reader.user_id, "write")
        await reader.sync_once()
        await reader.rooms.join(room)
        await writer.sync_once()

        t0 = time.perf_counter()
        state = await _write_updates(writer, room, n)
        write_s = time.perf_counter() - t0
        wdoc = await writer.docs.open(room, live=False, snapshot_every=0)
        assert wdoc.clocks() == decode_state_vector(bytes(pycrdt.get_state(state)))
        snapshot_event = await wdoc.snapshot()
        assert snapshot_event is not None
        doc_bytes = len(wdoc.state())
        await wdoc.close()

        replayed: list[int] = []

        async def from_snapshot(_: int) -> None:
            doc = await reader.docs.open(room, live=False)
            assert doc.caught_up_from == snapshot_event, (
                doc.caught_up_from,
                snapshot_event,
                doc.unreadable_snapshots,
            )
            assert doc.clocks() == wdoc.clocks(), (len(doc.waiting), doc.skipped[:3])
            replayed.append(doc.replayed)
            await doc.close()

        async def replay(_: int) -> None:
            doc = await reader.docs.open(room, live=False, from_snapshot=False)
            assert doc.caught_up_from is None and doc.replayed == n
            assert doc.clocks() == wdoc.clocks() and not doc.waiting
            await doc.close()

        snap_ms, replay_ms = await interleaved(from_snapshot, replay, rounds, warmup=0)

        # -- edit-to-visible -------------------------------------------------------
        wlive = await writer.docs.open(room, batch_ms=0, snapshot_every=0)
        rlive = await reader.docs.open(room, snapshot_every=0)
        seen: asyncio.Event = asyncio.Event()
        got_record: dict[str, asyncio.Event] = {}

        def on_change(change: DocChange) -> None:
            if not change.local:
                seen.set()

        def on_event(hook: RoomEventReceived) -> None:
            if hook.event.type == RECORD:
                ev = got_record.get(str(hook.event.content.get("key")))
                if ev is not None:
                    ev.set()

        rlive.observe(on_change)
        reader.hooks.on(RoomEventReceived, on_event)

        async def edit(_: int) -> None:
            seen.clear()
            wlive.text("log").insert(0, EDIT)
            await wlive.flush()
            await asyncio.wait_for(seen.wait(), 60)

        async def put(i: int) -> None:
            key = f"k-{i}-{uuid.uuid4().hex[:6]}"
            got_record[key] = asyncio.Event()
            await writer.records.put(room, key, EDIT)
            await asyncio.wait_for(got_record[key].wait(), 60)

        edit_ms, record_ms = await interleaved(edit, put, samples, warmup=2)

        wlive.batch_ms = 500
        batched: list[float] = []
        for _ in range(max(3, samples // 4)):
            seen.clear()
            t = time.perf_counter()
            wlive.text("log").insert(0, EDIT)
            await asyncio.wait_for(seen.wait(), 60)
            batched.append((time.perf_counter() - t) * 1000)
        assert str(rlive.text("log")) == str(wlive.text("log"))
        await wlive.close()
        await rlive.close()
    finally:
        await writer.close()
        await reader.close()

    snap, rep = median(snap_ms), median(replay_ms)
    return {
        "bench": "docs",
        "updates": n,
        "doc_bytes": doc_bytes,
        "snapshot": "media" if doc_bytes > INLINE_MAX_BYTES_ENCRYPTED else "inline",
        "write_updates_per_s": n / write_s,
        "catchup_snapshot_ms": snap,
        "catchup_replay_ms": rep,
        "ratio": rep / snap if snap else float("nan"),
        "replayed_after_snapshot": max(replayed) if replayed else None,
        "edit_visible_p50_ms": median(edit_ms),
        "edit_visible_p90_ms": percentile(edit_ms, 90),
        "record_visible_p50_ms": median(record_ms),
        "record_visible_p90_ms": percentile(record_ms, 90),
        "edit_visible_batched_p50_ms": median(batched),
        "samples": samples,
        **machine(),
    }


def main() -> None:
    ap = bench_args(__doc__, "600 updates, 15 latency samples (under a minute)")
    ap.add_argument("--updates", type=int, help="document updates to write (default 10,000)")
    args = ap.parse_args()
    configure_logging("WARNING")
    if args.smoke:
        n, rounds, samples = 60, 1, 4
    elif args.quick:
        n, rounds, samples = 600, 3, 15
    else:
        n, rounds, samples = 10_000, 3, 40
    if args.updates:
        n = args.updates
    result = with_homeserver("docs", lambda hs, tmp: run(hs, tmp, n, rounds, samples))
    print(
        f"catch-up of {n} updates: from the snapshot {result['catchup_snapshot_ms']:.0f} ms, "
        f"replaying all {result['catchup_replay_ms']:.0f} ms (x{result['ratio']:.1f}); "
        f"edit visible p50 {result['edit_visible_p50_ms']:.0f} ms vs record "
        f"{result['record_visible_p50_ms']:.0f} ms; "
        f"batched edit {result['edit_visible_batched_p50_ms']:.0f} ms"
    )
    emit(result)


if __name__ == "__main__":
    main()
