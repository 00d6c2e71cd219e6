"""The telemetry outbox: a durable, bounded write-ahead log of samples not yet acknowledged.

One outbox per device store (``<store>/telemetry/outbox.db``, SQLite in WAL mode).
Three tables carry a sample from ``append`` to the homeserver's acknowledgement:

``pending``
    One row per append call (larger calls are split): the samples grouped by
    series. ``append`` returns only after its rows are committed.
``batches``
    Sealed batches: ``seq`` (this outbox's sequence number), the room, the
    encoded payload, and, for a batch sent as encrypted media, the uploaded
    file. Sealing deletes the pending rows in the same transaction, so a sample
    is in exactly one of the two tables at any time. A batch keeps its ``seq``
    (and so its transaction id) until the homeserver acknowledges it; only then
    is it deleted.
``meta``
    The stream id (random, made once) and the next ``seq``.

Durability: ``synchronous=FULL`` by default, so a commit is on disk (fsync of the
WAL) before ``append`` returns: an appended sample survives a killed process
*and* a power cut. ``durability="process"`` (``synchronous=NORMAL``) survives a
killed process but may lose the last commits on a power cut or kernel crash;
it saves an fsync per commit. Concurrent appends share commits (group commit):
a committer thread writes everything queued since its last commit in one
transaction.

The ``pending`` rows hold Python ``marshal`` data: a private, local format of
this outbox only (the wire format is :mod:`datarooms.sdk.telemetry.encoding`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datarooms._fs import private_dir
from datarooms._sqlite import connect as connect_sqlite
from datarooms._sqlite import migrate
from datarooms.errors import DataroomsError, ValidationError

log = logging.getLogger(__name__)

Durability = Literal["full", "process"]

#: Series-grouped samples of one pending row: ``{(metric, tags): ([ts...], [value...])}``.
Grouped = dict[tuple[str, str], tuple[list[int], list[float]]]

#: What the sealer takes: (room, row ids, grouped samples, origins (append time, n)).
Taken = tuple[str, list[int], list[Grouped], list[tuple[float, int]]]

_MIGRATIONS = [
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE pending (
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        room TEXT NOT NULL,
        n    INTEGER NOT NULL,
        at   REAL NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX pending_room ON pending (room, id);
    CREATE TABLE batches (
        seq     INTEGER PRIMARY KEY,
        room    TEXT NOT NULL,
        n       INTEGER NOT NULL,
        t0      INTEGER NOT NULL,
        t1      INTEGER NOT NULL,
        payload BLOB NOT NULL,
        origins BLOB NOT NULL,
        file    TEXT,
        sealed_at REAL NOT NULL
    );
    """,
]


class OutboxFullError(DataroomsError):
    """The outbox holds as many unacknowledged samples as it may (``when_full="raise"``)."""

    errcode = "DR_OUTBOX_FULL"
    http_status = 503


class OutboxLockedError(DataroomsError):
    errcode = "DR_OUTBOX_LOCKED"
    http_status = 409


@dataclass(frozen=True)
class SealedBatch:
    """A batch with its final sequence number; sent (and resent) exactly like this."""

    seq: int
    room_id: str
    n: int
    t0: int
    t1: int
    payload: bytes
    file: str | None  # the EncryptedFile JSON once the payload is uploaded as media

    def txn_id(self, stream: str) -> str:
        """The Matrix transaction id: the same for every resend of this batch."""
        return f"drtlm.{stream}.{self.seq}"


@dataclass
class _Append:
    room: str
    rows: list[tuple[int, bytes]]  # (n, marshalled Grouped)
    n: int
    future: Future[None]


class Outbox:
    """The durable outbox. Thread-safe; one writer process per outbox (a lock file)."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_samples: int = 2_000_000,
        durability: Durability = "full",
    ) -> None:
        if durability not in ("full", "process"):
            raise ValidationError(f"durability must be 'full' or 'process', got {durability!r}")
        if max_samples < 1:
            raise ValidationError("max_outbox_samples must be at least 1")
        self.path = Path(path)
        private_dir(self.path.parent)
        self.max_samples = max_samples
        self._lock_fd = _take_lock(self.path.with_name(self.path.name + ".lock"))
        try:
            self._db = connect_sqlite(self.path)
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=" + ("FULL" if durability == "full" else "NORMAL"))
            self._lock = threading.RLock()
            self._migrate()
            self.stream = self._init_stream()
            row = self._db.execute(
                "SELECT (SELECT coalesce(sum(n), 0) FROM pending), "
                "(SELECT coalesce(sum(n), 0) FROM batches), (SELECT min(at) FROM pending), "
                "(SELECT coalesce(max(id), 0) FROM pending)"
            ).fetchone()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._unsealed = int(row[0])
        self._sealed = int(row[1])
        self._oldest: float | None = float(row[2]) if row[2] is not None else None
        self._last_row = int(row[3])
        self._reserved = 0
        self._space = threading.Condition(threading.Lock())
        self._queue: list[_Append] = []
        self._queue_cv = threading.Condition(threading.Lock())
        self._closing = False
        self._closed = False
        #: Called (from the committer thread) after every commit of appends.
        self.on_commit: Callable[[], None] | None = None
        self._committer = threading.Thread(
            target=self._commit_loop, name="telemetry-outbox-commit", daemon=True
        )
        self._committer.start()

    # -- set-up -----------------------------------------------------------------------

    def _migrate(self) -> None:
        migrate(self._db, _MIGRATIONS)

    def _init_stream(self) -> str:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'stream'").fetchone()
            if row:
                return str(row[0])
            stream = secrets.token_hex(8)
            db.execute("INSERT INTO meta VALUES ('stream', ?), ('next_seq', '1')", (stream,))
            return stream

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Commit what is queued, stop the committer, close the database and the lock."""
        if self._closed:
            return
        with self._queue_cv:
            self._closing = True
            self._queue_cv.notify_all()
        self._committer.join()
        with self._space:
            self._closed = True
            self._space.notify_all()
        with self._lock:
            self._db.close()
        os.close(self._lock_fd)

    # -- counters -----------------------------------------------------------------------

    @property
    def unsealed_samples(self) -> int:
        return self._unsealed

    @property
    def unacked_samples(self) -> int:
        """Samples appended and not yet acknowledged by the homeserver (pending + sealed)."""
        return self._unsealed + self._sealed

    @property
    def oldest_unsealed_at(self) -> float | None:
        return self._oldest

    @property
    def last_row_id(self) -> int:
        return self._last_row

    # -- appending ----------------------------------------------------------------------

    def reserve(self, n: int, *, block: bool, timeout: float | None = None) -> bool:
        """Make room for ``n`` samples; False if full and ``block`` is False (or on timeout)."""
        if n > self.max_samples:
            raise ValidationError(
                f"cannot append {n} samples at once: the outbox holds at most "
                f"{self.max_samples} (max_outbox_samples); append in smaller chunks"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._space:
            while self.unacked_samples + self._reserved + n > self.max_samples:
                if self._closed:
                    raise DataroomsError("the telemetry outbox is closed")
                if not block:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._space.wait(left if left is not None else 1.0)
            self._reserved += n
        return True

    def release(self, n: int) -> None:
        with self._space:
            self._reserved -= n
            self._space.notify_all()

    def submit(self, room: str, rows: list[tuple[int, bytes]], n: int) -> Future[None]:
        """Queue reserved rows for the next group commit; the future resolves once durable."""
        fut: Future[None] = Future()
        with self._queue_cv:
            if self._closing:
                raise DataroomsError("the telemetry outbox is closed")
            self._queue.append(_Append(room, rows, n, fut))
            self._queue_cv.notify()
        return fut

    def _commit_loop(self) -> None:
        while True:
            with self._queue_cv:
                while not self._queue and not self._closing:
                    self._queue_cv.wait()
                items, self._queue = self._queue, []
                if not items and self._closing:
                    return
            now = time.time()
            total = sum(it.n for it in items)
            failure: BaseException | None = None
            with self._lock:
                try:
                    with self._tx() as db:
                        for it in items:
                            db.executemany(
                                "INSERT INTO pending (room, n, at, data) VALUES (?, ?, ?, ?)",
                                [(it.room, k, now, blob) for k, blob in it.rows],
                            )
                        last = db.execute("SELECT max(id) FROM pending").fetchone()[0]
                except BaseException as exc:
                    failure = exc
                else:
                    with self._space:
                        self._reserved -= total
                        self._unsealed += total
                        if self._oldest is None:
                            self._oldest = now
                        self._last_row = int(last or self._last_row)
            if failure is not None:
                self.release(total)
                error = DataroomsError(
                    f"writing the telemetry outbox {self.path} failed: {failure}"
                )
                for it in items:
                    _resolve(it.future, error)
                continue
            for it in items:
                _resolve(it.future, None)
            hook = self.on_commit
            if hook is not None:
                try:
                    hook()
                except Exception:  # the hook only wakes the writer; never lose a commit to it
                    log.exception("telemetry outbox commit hook failed")

    # -- sealing --------------------------------------------------------------------------

    def take_unsealed(self, max_samples: int) -> Taken | None:
        """The oldest pending rows of one room, up to ``max_samples`` (at least one row).

        Returns ``(room, row ids, grouped samples, origins)`` or None. Only the
        (single) sealer calls this and :meth:`seal`, so the rows stay put meanwhile.
        """
        with self._lock:
            first = self._db.execute("SELECT room FROM pending ORDER BY id LIMIT 1").fetchone()
            if first is None:
                return None
            room = str(first[0])
            ids: list[int] = []
            groups: list[Grouped] = []
            origins: list[tuple[float, int]] = []
            total = 0
            for rid, n, at, blob in self._db.execute(
                "SELECT id, n, at, data FROM pending WHERE room = ? ORDER BY id", (room,)
            ):
                if ids and total + n > max_samples:
                    break
                ids.append(int(rid))
                groups.append(marshal.loads(blob))  # noqa: S302 - our own local outbox rows
                origins.append((float(at), int(n)))
                total += int(n)
        return room, ids, groups, origins

    def seal(
        self,
        room: str,
        row_ids: list[int],
        n: int,
        t0: int,
        t1: int,
        payload: bytes,
        origins: list[tuple[float, int]],
    ) -> SealedBatch | None:
        """Turn pending rows into a batch with the next ``seq``, atomically.

        None (and nothing changes) if some of the rows are gone meanwhile (discarded).
        """
        with self._lock:
            with self._tx() as db:
                chunks = [row_ids[i : i + 500] for i in range(0, len(row_ids), 500)]
                present = sum(
                    db.execute(
                        f"SELECT count(*) FROM pending WHERE id IN ({','.join('?' * len(c))})",  # noqa: S608
                        c,
                    ).fetchone()[0]
                    for c in chunks
                )
                if present != len(row_ids):
                    return None
                seq = int(
                    db.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()[0]
                )
                db.execute("UPDATE meta SET value = ? WHERE name = 'next_seq'", (str(seq + 1),))
                db.execute(
                    "INSERT INTO batches (seq, room, n, t0, t1, payload, origins, file, sealed_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                    (seq, room, n, t0, t1, payload, marshal.dumps(origins), time.time()),
                )
                for c in chunks:
                    db.execute(
                        f"DELETE FROM pending WHERE id IN ({','.join('?' * len(c))})",  # noqa: S608
                        c,
                    )
                oldest = db.execute("SELECT min(at) FROM pending").fetchone()[0]
            with self._space:
                self._unsealed -= n
                self._sealed += n
                self._oldest = float(oldest) if oldest is not None else None
        return SealedBatch(seq, room, n, t0, t1, payload, None)

    # -- sending ---------------------------------------------------------------------------

    def resync(self) -> None:
        """Recount pending samples from the database (after a concurrent discard)."""
        with self._lock:
            n, oldest = self._db.execute(
                "SELECT coalesce(sum(n), 0), min(at) FROM pending"
            ).fetchone()
            with self._space:
                self._unsealed = int(n)
                self._oldest = float(oldest) if oldest is not None else None

    def sealed_batches(
        self, limit: int, *, exclude: set[int], skip_rooms: set[str]
    ) -> list[SealedBatch]:
        """The oldest sealed batches not in ``exclude`` and not for ``skip_rooms``."""
        out: list[SealedBatch] = []
        with self._lock:
            chosen = [
                int(seq)
                for seq, room in self._db.execute("SELECT seq, room FROM batches ORDER BY seq")
                if seq not in exclude and room not in skip_rooms
            ][:limit]
            for seq in chosen:
                row = self._db.execute(
                    "SELECT room, n, t0, t1, payload, file FROM batches WHERE seq = ?", (seq,)
                ).fetchone()
                if row is not None:
                    room, n, t0, t1, payload, file = row
                    out.append(SealedBatch(seq, room, int(n), int(t0), int(t1), payload, file))
        return out

    def max_sealed_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()
        return int(row[0]) - 1

    def unacked_seqs(self) -> list[int]:
        with self._lock:
            return [int(r[0]) for r in self._db.execute("SELECT seq FROM batches ORDER BY seq")]

    def min_pending_id(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT min(id) FROM pending").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def set_file(self, seq: int, file_json: str) -> None:
        """Remember the uploaded media of a batch, so a resend reuses it."""
        with self._tx() as db:
            db.execute("UPDATE batches SET file = ? WHERE seq = ?", (file_json, seq))

    def ack(self, seq: int) -> list[tuple[float, int]]:
        """The homeserver has the batch: delete it. Returns its origins (append time, n)."""
        with self._tx() as db:
            row = db.execute("SELECT n, origins FROM batches WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return []
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
        with self._space:
            self._sealed -= int(row[0])
            self._space.notify_all()
        origins: list[tuple[float, int]] = marshal.loads(row[1])  # noqa: S302 - our own rows
        return origins

    def discard_room(self, room: str) -> int:
        """Drop every unacknowledged sample of ``room``; returns how many."""
        with self._lock:
            with self._tx() as db:
                a = db.execute("SELECT coalesce(sum(n), 0) FROM pending WHERE room = ?", (room,))
                pending = int(a.fetchone()[0])
                b = db.execute("SELECT coalesce(sum(n), 0) FROM batches WHERE room = ?", (room,))
                sealed = int(b.fetchone()[0])
                db.execute("DELETE FROM pending WHERE room = ?", (room,))
                db.execute("DELETE FROM batches WHERE room = ?", (room,))
                oldest = db.execute("SELECT min(at) FROM pending").fetchone()[0]
            with self._space:
                self._unsealed -= pending
                self._sealed -= sealed
                self._oldest = float(oldest) if oldest is not None else None
                self._space.notify_all()
        return pending + sealed

    def rooms(self) -> dict[str, int]:
        """Unacknowledged samples per room."""
        with self._lock:
            rows = self._db.execute(
                "SELECT room, sum(n) FROM (SELECT room, n FROM pending UNION ALL "
                "SELECT room, n FROM batches) GROUP BY room"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}


def _resolve(future: Future[None], error: BaseException | None) -> None:
    """Settle an append's future; one its caller cancelled just stays cancelled."""
    if not future.set_running_or_notify_cancel():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise OutboxLockedError(
            f"another process (pid {holder}) is writing telemetry from this device "
            f"({path.parent}); only one writer per device store may run at a time"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def marshal_rows(groups: Grouped) -> bytes:
    """The private pending-row format (see the module docstring)."""
    return marshal.dumps(groups)
