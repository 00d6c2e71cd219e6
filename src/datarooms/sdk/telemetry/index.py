"""The telemetry index: decoded samples of every room this device reads, in SQLite.

``<store>/telemetry/index.db`` (it holds plaintext: it stays on this machine).

- ``batches``: one row per batch event, unique per (room, sender, stream, seq): a
  batch that arrives twice (a resend, or a page read again) adds nothing.
- ``samples``: (series, ts, batch, pos) -> value, clustered by series and time
  (``WITHOUT ROWID``), so a time range of a series is one index range scan.
- ``rollup``: per series and UTC minute: count, min, max, sum and the last
  sample. Aggregates whose buckets are whole minutes read these instead of
  the samples.
- ``cursors``: per room, the ``/messages`` token up to which the room is
  indexed, written in the same transaction as the batches it covers.
- ``pending``: batch events this device cannot decrypt yet (no key).

Schema migrations are versioned (``PRAGMA user_version``).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from types import MappingProxyType
from typing import Any

from datarooms._sqlite import connect as connect_sqlite
from datarooms._sqlite import migrate
from datarooms.errors import ValidationError
from datarooms.sdk.telemetry.encoding import SeriesData, SeriesKey
from datarooms.sdk.telemetry.model import EMPTY_TAGS, Bucket, Sample, SeriesInfo

MINUTE = 60_000

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE series (
        id       INTEGER PRIMARY KEY,
        room_id  TEXT NOT NULL,
        metric   TEXT NOT NULL,
        tags     TEXT NOT NULL,
        n        INTEGER NOT NULL DEFAULT 0,
        first_ts INTEGER,
        last_ts  INTEGER,
        UNIQUE (room_id, metric, tags)
    );
    CREATE TABLE batches (
        id        INTEGER PRIMARY KEY,
        room_id   TEXT NOT NULL,
        sender    TEXT NOT NULL,
        stream    TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        event_id  TEXT NOT NULL,
        n         INTEGER NOT NULL,
        t0        INTEGER NOT NULL,
        t1        INTEGER NOT NULL,
        server_ts INTEGER NOT NULL,
        UNIQUE (room_id, sender, stream, seq)
    );
    CREATE TABLE samples (
        series INTEGER NOT NULL,
        ts     INTEGER NOT NULL,
        batch  INTEGER NOT NULL,
        pos    INTEGER NOT NULL,
        value  REAL NOT NULL,
        PRIMARY KEY (series, ts, batch, pos)
    ) WITHOUT ROWID;
    CREATE TABLE rollup (
        series     INTEGER NOT NULL,
        minute     INTEGER NOT NULL,
        n          INTEGER NOT NULL,
        vmin       REAL NOT NULL,
        vmax       REAL NOT NULL,
        vsum       REAL NOT NULL,
        last_ts    INTEGER NOT NULL,
        last_value REAL NOT NULL,
        PRIMARY KEY (series, minute)
    ) WITHOUT ROWID;
    CREATE TABLE cursors (room_id TEXT PRIMARY KEY, token TEXT NOT NULL);
    CREATE TABLE pending (
        event_id   TEXT PRIMARY KEY,
        room_id    TEXT NOT NULL,
        session_id TEXT NOT NULL,
        ts         INTEGER NOT NULL,
        source     TEXT NOT NULL
    );
    """,
]


@dataclass(frozen=True)
class DecodedBatch:
    """A batch event, decrypted and decoded, ready for the index."""

    room_id: str
    event_id: str
    sender: str
    stream: str
    seq: int
    server_ts: int
    t0: int
    t1: int
    series: list[SeriesData]

    @property
    def n(self) -> int:
        return sum(len(s.ts) for s in self.series)

    def samples(self, metric: str | None = None) -> Iterator[Sample]:
        """Its samples (series by series, each in append order), optionally of one metric."""
        for s in self.series:
            if metric is not None and s.key.metric != metric:
                continue
            tags = _tags(s.key.tags)
            for ts, v in zip(s.ts, s.values, strict=True):
                yield Sample(ts, s.key.metric, v, tags)


@dataclass(frozen=True)
class PendingBatch:
    event_id: str
    room_id: str
    session_id: str
    ts: int
    source: dict[str, Any]


_TAGS_CACHE: dict[str, Mapping[str, str]] = {}


def _tags(tag_json: str) -> Mapping[str, str]:
    if not tag_json:
        return EMPTY_TAGS
    cached = _TAGS_CACHE.get(tag_json)
    if cached is None:
        if len(_TAGS_CACHE) > 10_000:
            _TAGS_CACHE.clear()
        cached = _TAGS_CACHE[tag_json] = MappingProxyType(json.loads(tag_json))
    return cached


class TelemetryIndex:
    """SQLite-backed and thread-safe (one connection, serialised)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = connect_sqlite(self.path)
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        # The index can be rebuilt from the homeserver; its cursor is written with
        # the rows it covers, so NORMAL (no fsync per commit) cannot lose consistency.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.execute("PRAGMA cache_size=-65536")
        self._lock = threading.RLock()
        self._series_ids: dict[tuple[str, str, str], int] = {}
        self._migrate()
        self._db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staging "
            "(series INTEGER, ts INTEGER, pos INTEGER, value REAL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        with self._lock:
            migrate(self._db, _MIGRATIONS)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._series_ids.clear()  # ids made in the rolled-back transaction are void
                raise

    # -- writes ------------------------------------------------------------------------

    def has_batch(self, room_id: str, sender: str, stream: str, seq: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM batches WHERE room_id = ? AND sender = ? AND stream = ? AND seq = ?",
                (room_id, sender, stream, seq),
            ).fetchone()
        return row is not None

    def add_page(
        self,
        room_id: str,
        batches: list[DecodedBatch],
        *,
        pending: Sequence[PendingBatch] = (),
        resolved: Sequence[str] = (),
        cursor: str | None = None,
    ) -> list[DecodedBatch]:
        """Add batches (and undecryptable events) and move the room's cursor, atomically.

        Returns the batches that were new to this index.
        """
        with self._tx() as db:
            added = [b for b in batches if self._insert_batch(db, b)]
            for p in pending:
                db.execute(
                    "INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?)",
                    (p.event_id, p.room_id, p.session_id, p.ts, json.dumps(p.source)),
                )
            for event_id in resolved:
                db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))
            if cursor is not None:
                db.execute(
                    "INSERT INTO cursors VALUES (?, ?) ON CONFLICT DO UPDATE "
                    "SET token = excluded.token",
                    (room_id, cursor),
                )
        return added

    def add_batches(self, batches: list[DecodedBatch]) -> list[DecodedBatch]:
        """Add batches of any rooms (no cursor change); returns those new to the index."""
        with self._tx() as db:
            return [b for b in batches if self._insert_batch(db, b)]

    def _series_id(self, db: sqlite3.Connection, room_id: str, key: SeriesKey) -> int:
        k = (room_id, key.metric, key.tags)
        sid = self._series_ids.get(k)
        if sid is None:
            db.execute("INSERT OR IGNORE INTO series (room_id, metric, tags) VALUES (?, ?, ?)", k)
            sid = int(
                db.execute(
                    "SELECT id FROM series WHERE room_id = ? AND metric = ? AND tags = ?", k
                ).fetchone()[0]
            )
            self._series_ids[k] = sid
        return sid

    def _insert_batch(self, db: sqlite3.Connection, b: DecodedBatch) -> bool:
        cur = db.execute(
            "INSERT OR IGNORE INTO batches "
            "(room_id, sender, stream, seq, event_id, n, t0, t1, server_ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (b.room_id, b.sender, b.stream, b.seq, b.event_id, b.n, b.t0, b.t1, b.server_ts),
        )
        if cur.rowcount == 0:
            return False
        bid = cur.lastrowid
        pos = 0
        for s in b.series:
            sid = self._series_id(db, b.room_id, s.key)
            count = len(s.ts)
            db.executemany(
                "INSERT INTO staging VALUES (?, ?, ?, ?)",
                zip(repeat(sid, count), s.ts, range(pos, pos + count), s.values, strict=True),
            )
            pos += count
        db.execute(
            "INSERT INTO samples (series, ts, batch, pos, value) "
            "SELECT series, ts, ?, pos, value FROM staging",
            (bid,),
        )
        # Per-minute rollups; "last" is the latest sample (ties: the later-indexed batch).
        db.execute(
            """
            INSERT INTO rollup (series, minute, n, vmin, vmax, vsum, last_ts, last_value)
            SELECT a.series, a.minute, a.n, a.vmin, a.vmax, a.vsum, l.last_ts, l.last_value
            FROM (SELECT series, ts / 60000 AS minute, count(*) AS n, min(value) AS vmin,
                         max(value) AS vmax, total(value) AS vsum
                  FROM staging GROUP BY series, minute) AS a
            JOIN (SELECT series, ts / 60000 AS minute, max(ts) AS last_ts, value AS last_value
                  FROM staging GROUP BY series, minute) AS l
              ON l.series = a.series AND l.minute = a.minute
            WHERE true
            ON CONFLICT (series, minute) DO UPDATE SET
                n = n + excluded.n,
                vmin = min(vmin, excluded.vmin),
                vmax = max(vmax, excluded.vmax),
                vsum = vsum + excluded.vsum,
                last_value = CASE WHEN excluded.last_ts >= last_ts
                                  THEN excluded.last_value ELSE last_value END,
                last_ts = max(last_ts, excluded.last_ts)
            """
        )
        db.execute(
            """
            UPDATE series SET n = series.n + s.c,
                first_ts = min(coalesce(series.first_ts, s.f), s.f),
                last_ts = max(coalesce(series.last_ts, s.l), s.l)
            FROM (SELECT series, count(*) AS c, min(ts) AS f, max(ts) AS l
                  FROM staging GROUP BY series) AS s
            WHERE series.id = s.series
            """
        )
        db.execute("DELETE FROM staging")
        return True

    # -- cursors and pending -------------------------------------------------------------

    def cursor(self, room_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT token FROM cursors WHERE room_id = ?", (room_id,)
            ).fetchone()
        return str(row[0]) if row else None

    def pending(self, room_id: str | None = None) -> list[PendingBatch]:
        with self._lock:
            if room_id is None:
                rows = self._db.execute("SELECT * FROM pending").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM pending WHERE room_id = ?", (room_id,)
                ).fetchall()
        return [PendingBatch(r[0], r[1], r[2], int(r[3]), json.loads(r[4])) for r in rows]

    # -- reads -------------------------------------------------------------------------

    def series(
        self, room_id: str, metric: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[tuple[int, SeriesInfo]]:
        """Series of a room (of one metric; whose tags include ``tags``), with their ids."""
        sql = "SELECT id, metric, tags, n, first_ts, last_ts FROM series WHERE room_id = ?"
        args: list[Any] = [room_id]
        if metric is not None:
            sql += " AND metric = ?"
            args.append(metric)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY metric, tags", args).fetchall()
        out = []
        want = dict(tags or {})
        for sid, m, tag_json, n, first, last in rows:
            t = _tags(tag_json)
            if want and any(t.get(k) != v for k, v in want.items()):
                continue
            out.append((int(sid), SeriesInfo(m, t, int(n), int(first or 0), int(last or 0))))
        return out

    def samples(
        self,
        room_id: str,
        metric: str,
        *,
        since: int,
        until: int,
        tags: Mapping[str, str] | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[Sample]:
        """Samples of ``metric`` with ``since <= ts < until``, in time order, at most ``limit``."""
        _check_range(since, until)
        if limit < 1:
            raise ValidationError("limit must be at least 1")
        order = "DESC" if newest_first else "ASC"
        sql = (
            "SELECT ts, value FROM samples WHERE series = ? AND ts >= ? AND ts < ? "  # noqa: S608
            f"ORDER BY ts {order}, batch {order}, pos {order} LIMIT ?"
        )
        streams = []
        with self._lock:
            for sid, info in self.series(room_id, metric, tags):
                rows = self._db.execute(sql, (sid, since, until, limit)).fetchall()
                tag_map = info.tags
                streams.append([Sample(ts, metric, v, tag_map) for ts, v in rows])
        if len(streams) == 1:
            return streams[0]
        merged = heapq.merge(*streams, key=lambda s: s.ts, reverse=newest_first)
        return [s for _, s in zip(range(limit), merged, strict=False)]

    def aggregate(
        self,
        room_id: str,
        metric: str,
        *,
        since: int,
        until: int,
        step: int,
        tags: Mapping[str, str] | None = None,
    ) -> list[Bucket]:
        """Per bucket ``[since + k*step, since + (k+1)*step)``: count, min, max, mean, last.

        Buckets without samples are left out. All series of ``metric`` matching
        ``tags`` are aggregated together. When ``since`` and ``step`` are whole
        minutes, full minutes come from the rollups (fast at any density).
        """
        _check_range(since, until)
        if step < 1:
            raise ValidationError("step must be at least 1 ms")
        if (until - since) // step > 100_000:
            raise ValidationError("more than 100,000 buckets: choose a larger step")
        ids = [sid for sid, _ in self.series(room_id, metric, tags)]
        if not ids:
            return []
        acc: dict[int, list[Any]] = {}  # bucket -> [n, min, max, sum, last_ts, last]
        marks = ",".join("?" * len(ids))
        with self._lock:
            if since % MINUTE == 0 and step % MINUTE == 0:
                full_end = until - until % MINUTE
                if full_end > since:
                    self._merge_rollups(acc, ids, marks, since, full_end, step)
                if until > max(full_end, since):
                    self._merge_raw(acc, ids, marks, max(full_end, since), until, since, step)
            else:
                self._merge_raw(acc, ids, marks, since, until, since, step)
        return [
            Bucket(since + b * step, a[0], a[1], a[2], a[3] / a[0], a[5], a[4])
            for b, a in sorted(acc.items())
            if a[0]
        ]

    def _merge_raw(
        self,
        acc: dict[int, list[Any]],
        ids: list[int],
        marks: str,
        lo: int,
        hi: int,
        origin: int,
        step: int,
    ) -> None:
        where = f"series IN ({marks}) AND ts >= ? AND ts < ?"
        args = [origin, step, *ids, lo, hi]
        stats = self._db.execute(
            f"SELECT (ts - ?) / ? AS b, count(*), min(value), max(value), total(value) "  # noqa: S608
            f"FROM samples WHERE {where} GROUP BY b",
            args,
        ).fetchall()
        lasts = self._db.execute(
            f"SELECT (ts - ?) / ? AS b, max(ts), value FROM samples WHERE {where} "  # noqa: S608
            "GROUP BY b",
            args,
        ).fetchall()
        _merge(acc, stats, lasts)

    def _merge_rollups(
        self, acc: dict[int, list[Any]], ids: list[int], marks: str, lo: int, hi: int, step: int
    ) -> None:
        where = f"series IN ({marks}) AND minute >= ? AND minute < ?"
        args = [lo, step, *ids, lo // MINUTE, hi // MINUTE]
        stats = self._db.execute(
            f"SELECT (minute * 60000 - ?) / ? AS b, sum(n), min(vmin), max(vmax), "  # noqa: S608
            f"total(vsum) FROM rollup WHERE {where} GROUP BY b",
            args,
        ).fetchall()
        lasts = self._db.execute(
            f"SELECT (minute * 60000 - ?) / ? AS b, max(last_ts), last_value "  # noqa: S608
            f"FROM rollup WHERE {where} GROUP BY b",
            args,
        ).fetchall()
        _merge(acc, stats, lasts)

    def count(self, room_id: str, metric: str | None = None) -> int:
        with self._lock:
            if metric is None:
                row = self._db.execute(
                    "SELECT coalesce(sum(n), 0) FROM series WHERE room_id = ?", (room_id,)
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT coalesce(sum(n), 0) FROM series WHERE room_id = ? AND metric = ?",
                    (room_id, metric),
                ).fetchone()
        return int(row[0])

    def batches(self, room_id: str) -> list[tuple[str, str, str, int, int]]:
        """The batch events indexed for a room: (event id, sender, stream, seq, n)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, sender, stream, seq, n FROM batches WHERE room_id = ? "
                "ORDER BY id",
                (room_id,),
            ).fetchall()
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    # -- retention (datarooms.sdk.retention) -----------------------------------------

    def old_batches(self, room_id: str, before_ts: int) -> list[tuple[str, int, str, int]]:
        """Batch events whose every sample is older than ``before_ts``:
        (event id, samples, sender, first sample's ts)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, n, sender, t0 FROM batches WHERE room_id = ? AND t1 < ? "
                "ORDER BY id",
                (room_id, before_ts),
            ).fetchall()
        return [(r[0], int(r[1]), r[2], int(r[3])) for r in rows]

    def raw_before(self, room_id: str, before_ts: int) -> int:
        """Raw samples older than ``before_ts`` this index still holds."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series "
                "WHERE s.room_id = ? AND x.ts < ?",
                (room_id, before_ts),
            ).fetchone()
        return int(row[0])

    def rollups_between(
        self, room_id: str, since: int, until: int
    ) -> list[tuple[str, dict[str, str], list[list[Any]]]]:
        """The per-minute rollups of whole minutes in ``[since, until)``: per series
        (metric, tags, [[minute, n, min, max, sum, last_ts, last_value], ...])."""
        out = []
        with self._lock:
            for sid, info in self.series(room_id):
                rows = self._db.execute(
                    "SELECT minute, n, vmin, vmax, vsum, last_ts, last_value FROM rollup "
                    "WHERE series = ? AND minute >= ? AND minute < ? ORDER BY minute",
                    (sid, -(-since // MINUTE), until // MINUTE),
                ).fetchall()
                if rows:
                    out.append((info.metric, dict(info.tags), [list(r) for r in rows]))
        return out

    def put_rollups(
        self, room_id: str, metric: str, tags: Mapping[str, str], minutes: list[list[Any]]
    ) -> int:
        """Rollups a retention cleanup posted (its raw samples are gone from the room):
        each minute's figures replace this index's, which are the same where it saw the
        raw samples itself. Returns the minutes written."""
        from datarooms.sdk.telemetry.encoding import SeriesKey, canonical_tags

        with self._tx() as db:
            sid = self._series_id(db, room_id, SeriesKey(metric, canonical_tags(tags)))
            db.executemany(
                "INSERT INTO rollup (series, minute, n, vmin, vmax, vsum, last_ts, last_value) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series, minute) DO UPDATE SET "
                "n = excluded.n, vmin = excluded.vmin, vmax = excluded.vmax, "
                "vsum = excluded.vsum, last_ts = excluded.last_ts, "
                "last_value = excluded.last_value",
                [(sid, *m) for m in minutes],
            )
        return len(minutes)

    def prune_raw(self, room_id: str, before_ts: int) -> int:
        """Drop raw samples older than ``before_ts`` (their rollups stay). Returns how many."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM samples WHERE ts < ? AND series IN "
                "(SELECT id FROM series WHERE room_id = ?)",
                (before_ts, room_id),
            )
        return int(cur.rowcount)

    def usage(self) -> dict[str, tuple[int, int, int]]:
        """Per room: (samples, batches, bytes of their rows here, a measured estimate:
        16 bytes a raw sample, 64 a batch, 56 a minute of rollup)."""
        with self._lock:
            db = self._db
            batches = db.execute(
                "SELECT room_id, count(*), coalesce(sum(n), 0) FROM batches GROUP BY room_id"
            ).fetchall()
            raw = dict(
                db.execute(
                    "SELECT s.room_id, count(*) FROM samples x JOIN series s ON s.id = x.series "
                    "GROUP BY s.room_id"
                ).fetchall()
            )
            rollups = dict(
                db.execute(
                    "SELECT s.room_id, count(*) FROM rollup r JOIN series s ON s.id = r.series "
                    "GROUP BY s.room_id"
                ).fetchall()
            )
        return {
            room: (
                int(n),
                int(count),
                16 * int(raw.get(room, 0)) + 64 * int(count) + 56 * int(rollups.get(room, 0)),
            )
            for room, count, n in batches
        }

    def batch_count(self, room_id: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM batches WHERE room_id = ?", (room_id,)
            ).fetchone()
        return int(row[0])


def _merge(acc: dict[int, list[Any]], stats: list[Any], lasts: list[Any]) -> None:
    for b, n, mn, mx, sm in stats:
        a = acc.get(b)
        if a is None:
            acc[b] = [n, mn, mx, sm, -1, 0.0]
        else:
            a[0] += n
            a[1] = min(a[1], mn)
            a[2] = max(a[2], mx)
            a[3] += sm
    for b, lt, lv in lasts:
        a = acc[b]
        if lt >= a[4]:
            a[4], a[5] = lt, lv


def _check_range(since: int, until: int) -> None:
    if not isinstance(since, int) or not isinstance(until, int):
        raise ValidationError("since and until are ints of ms since the epoch")
    if since > until:
        raise ValidationError("since must not be after until")
