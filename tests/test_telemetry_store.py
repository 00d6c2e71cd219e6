"""The telemetry outbox (durable, bounded, one writer) and index (dedup, queries, rollups)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from datarooms.errors import ValidationError
from datarooms.sdk.telemetry.encoding import SeriesData, SeriesKey, canonical_tags, decode_batch
from datarooms.sdk.telemetry.index import DecodedBatch, TelemetryIndex
from datarooms.sdk.telemetry.model import group_samples
from datarooms.sdk.telemetry.outbox import Outbox, OutboxLockedError, marshal_rows
from datarooms.sdk.telemetry.writer import merge_rows

ROOM = "!room:localhost"


def _rows(samples: list[tuple[int, str, float]]) -> list[tuple[int, bytes]]:
    return [(k, marshal_rows(g)) for k, g in group_samples(samples, 1000)]


def _append(ob: Outbox, room: str, samples: list[tuple[int, str, float]]) -> None:
    assert ob.reserve(len(samples), block=False)
    ob.submit(room, _rows(samples), len(samples)).result(timeout=10)


def _seal_all(ob: Outbox, max_samples: int = 10_000) -> list[int]:
    from datarooms.sdk.telemetry.encoding import encode_batch

    seqs = []
    while (taken := ob.take_unsealed(max_samples)) is not None:
        room, ids, groups, origins = taken
        series, n, t0, t1 = merge_rows(groups)
        payload, _ = encode_batch(series)
        seqs.append(ob.seal(room, ids, n, t0, t1, payload, origins).seq)
    return seqs


def test_outbox_survives_reopen_and_keeps_seq_and_stream(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    stream = ob.stream
    _append(ob, ROOM, [(1, "a", 1.0), (2, "a", 2.0)])
    _append(ob, "!other:localhost", [(3, "b", 3.0)])
    _append(ob, ROOM, [(4, "a", 4.0)])
    assert ob.unacked_samples == 4 and ob.unsealed_samples == 4
    first = ob.take_unsealed(10)
    assert first is not None and first[0] == ROOM  # the oldest row's room, all its rows
    assert sum(n for _, n in first[3]) == 3
    seqs = _seal_all(ob)
    assert seqs == [1, 2]
    ob.close()

    again = Outbox(path)  # as after a crash: the same stream, the same sealed batches
    assert again.stream == stream
    assert again.unacked_samples == 4 and again.unsealed_samples == 0
    batches = again.sealed_batches(10, exclude=set(), skip_rooms=set())
    assert [(b.seq, b.room_id, b.n) for b in batches] == [(1, ROOM, 3), (2, "!other:localhost", 1)]
    assert batches[0].txn_id(stream) == f"drtlm.{stream}.1"
    series = decode_batch(batches[0].payload)
    assert [(s.key.metric, s.ts, s.values) for s in series] == [("a", [1, 2, 4], [1.0, 2.0, 4.0])]
    assert again.ack(1) and again.unacked_samples == 1
    _append(again, ROOM, [(5, "a", 5.0)])
    assert _seal_all(again) == [3]  # sequence numbers are never reused
    again.close()


def test_outbox_is_bounded(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", max_samples=5)
    try:
        _append(ob, ROOM, [(i, "a", 1.0) for i in range(4)])
        assert not ob.reserve(2, block=False)
        assert not ob.reserve(2, block=True, timeout=0.2)
        with pytest.raises(ValidationError, match="at most 5"):
            ob.reserve(6, block=True)
        # A blocked appender proceeds once a batch is acknowledged.
        seq = _seal_all(ob)[0]
        got: list[bool] = []
        t = threading.Thread(target=lambda: got.append(ob.reserve(3, block=True, timeout=30)))
        t.start()
        ob.ack(seq)
        t.join()
        assert got == [True]
        ob.release(3)
        assert ob.discard_room(ROOM) == 0 and ob.unacked_samples == 0
    finally:
        ob.close()


def test_one_writer_per_outbox(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db")
    try:
        with pytest.raises(OutboxLockedError, match="only one writer"):
            Outbox(tmp_path / "outbox.db")
    finally:
        ob.close()
    Outbox(tmp_path / "outbox.db").close()  # free again once closed


def test_discard_room(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db")
    try:
        _append(ob, ROOM, [(1, "a", 1.0)])
        _seal_all(ob)
        _append(ob, ROOM, [(2, "a", 1.0), (3, "a", 1.0)])
        _append(ob, "!keep:localhost", [(2, "a", 1.0)])
        assert ob.rooms() == {ROOM: 3, "!keep:localhost": 1}
        assert ob.discard_room(ROOM) == 3
        assert ob.rooms() == {"!keep:localhost": 1} and ob.unacked_samples == 1
    finally:
        ob.close()


# -- the index -------------------------------------------------------------------------


def _batch(seq: int, series: list[SeriesData], sender: str = "@w:localhost") -> DecodedBatch:
    lo = min(min(s.ts) for s in series)
    hi = max(max(s.ts) for s in series)
    return DecodedBatch(ROOM, f"$e{seq}-{sender}", sender, "st", seq, 0, lo, hi, series)


@pytest.fixture
def index(tmp_path: Path):  # type: ignore[no-untyped-def]
    idx = TelemetryIndex(tmp_path / "index.db")
    yield idx
    idx.close()


def test_index_keeps_one_copy_per_batch(index: TelemetryIndex) -> None:
    b = _batch(1, [SeriesData(SeriesKey("m"), [10, 20], [1.0, 2.0])])
    assert index.add_batches([b]) == [b]
    assert index.add_batches([b]) == []  # the same (sender, stream, seq) again
    other_sender = _batch(1, [SeriesData(SeriesKey("m"), [30], [3.0])], sender="@x:localhost")
    assert index.add_batches([other_sender]) == [other_sender]
    assert index.count(ROOM) == 3 and index.batch_count(ROOM) == 2
    assert [s.value for s in index.samples(ROOM, "m", since=0, until=100)] == [1.0, 2.0, 3.0]


def test_raw_queries(index: TelemetryIndex) -> None:
    a = SeriesKey("t", canonical_tags({"site": "a"}))
    b = SeriesKey("t", canonical_tags({"site": "b", "x": "1"}))
    index.add_batches(
        [
            _batch(
                1,
                [SeriesData(a, [10, 30, 20], [1.0, 3.0, 2.0]), SeriesData(b, [15, 25], [1.5, 2.5])],
            ),
            _batch(2, [SeriesData(SeriesKey("other"), [12], [9.0])]),
        ]
    )
    rows = index.samples(ROOM, "t", since=10, until=30)  # since inclusive, until exclusive
    assert [(s.ts, s.value, dict(s.tags)) for s in rows] == [
        (10, 1.0, {"site": "a"}),
        (15, 1.5, {"site": "b", "x": "1"}),
        (20, 2.0, {"site": "a"}),
        (25, 2.5, {"site": "b", "x": "1"}),
    ]
    assert [s.ts for s in index.samples(ROOM, "t", since=0, until=100, limit=2)] == [10, 15]
    newest = index.samples(ROOM, "t", since=0, until=100, limit=2, newest_first=True)
    assert [s.ts for s in newest] == [30, 25]
    only_b = index.samples(ROOM, "t", since=0, until=100, tags={"site": "b"})
    assert [s.value for s in only_b] == [1.5, 2.5]
    assert index.samples(ROOM, "t", since=0, until=100, tags={"site": "zzz"}) == []
    assert index.samples(ROOM, "nope", since=0, until=100) == []
    infos = index.series(ROOM)
    assert [(i.metric, dict(i.tags), i.count, i.first_ts, i.last_ts) for _, i in infos] == [
        ("other", {}, 1, 12, 12),
        ("t", {"site": "a"}, 3, 10, 30),
        ("t", {"site": "b", "x": "1"}, 2, 15, 25),
    ]
    with pytest.raises(ValidationError, match="since must not be after until"):
        index.samples(ROOM, "t", since=5, until=1)


def _brute(points: list[tuple[int, float]], since: int, until: int, step: int) -> list[tuple]:
    buckets: dict[int, list[tuple[int, float]]] = {}
    for ts, v in points:
        if since <= ts < until:
            buckets.setdefault((ts - since) // step, []).append((ts, v))
    out = []
    for b, pts in sorted(buckets.items()):
        vals = [v for _, v in pts]
        last_ts = max(ts for ts, _ in pts)
        out.append(
            (
                since + b * step,
                len(vals),
                min(vals),
                max(vals),
                round(sum(vals) / len(vals), 9),
                last_ts,
                {v for ts, v in pts if ts == last_ts},
            )
        )
    return out


def test_aggregates_match_brute_force_on_both_paths(index: TelemetryIndex) -> None:
    rng = random.Random(5)
    minute = 60_000
    t0 = 1_700_000_040_000  # a whole minute
    points: list[tuple[int, float]] = []
    seq = 0
    for _ in range(6):  # several batches, overlapping in time, out of order inside
        seq += 1
        ts = [t0 + rng.randrange(0, 30 * minute) for _ in range(400)]
        vals = [round(rng.uniform(-50, 50), 2) for _ in ts]
        points += list(zip(ts, vals, strict=True))
        index.add_batches([_batch(seq, [SeriesData(SeriesKey("m"), ts, vals)])])

    def check(since: int, until: int, step: int) -> None:
        got = index.aggregate(ROOM, "m", since=since, until=until, step=step)
        want = _brute(points, since, until, step)
        assert [(g.start, g.count, g.min, g.max, round(g.mean, 9), g.last_ts) for g in got] == [
            w[:6] for w in want
        ]
        for g, w in zip(got, want, strict=True):
            assert g.last in w[6]

    check(t0, t0 + 30 * minute, minute)  # rollups only
    check(t0 + 2 * minute, t0 + 20 * minute + 12_345, 5 * minute)  # rollups + raw tail
    check(t0 + 7, t0 + 29 * minute, minute)  # unaligned: raw scan
    check(t0, t0 + 30 * minute, 45_000)  # step not whole minutes: raw scan
    assert index.aggregate(ROOM, "none", since=t0, until=t0 + minute, step=minute) == []
    with pytest.raises(ValidationError, match="larger step"):
        index.aggregate(ROOM, "m", since=0, until=10**12, step=1)


def test_index_survives_reopen(tmp_path: Path) -> None:
    idx = TelemetryIndex(tmp_path / "index.db")
    b = _batch(1, [SeriesData(SeriesKey("m"), [10], [1.0])])
    idx.add_page(ROOM, [b], cursor="tok-1")
    idx.close()
    idx = TelemetryIndex(tmp_path / "index.db")
    try:
        assert idx.cursor(ROOM) == "tok-1" and idx.add_batches([b]) == []
        assert idx.count(ROOM) == 1
    finally:
        idx.close()
