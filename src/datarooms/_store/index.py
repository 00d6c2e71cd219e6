"""The local index: a SQLite database of decrypted records and room state.

One index per device (it holds plaintext, so it lives beside the crypto store,
on the user's machine, never on the server). It answers the twin's current
state, the history of a key and time-range queries without touching the
homeserver, and it holds the sync position, written in the same transaction
as the events it covers: a crash can replay a sync, never skip one.

Schema migrations are versioned (``PRAGMA user_version``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datarooms._sqlite import connect as connect_sqlite
from datarooms._sqlite import migrate

_MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE records (
        event_id TEXT PRIMARY KEY,
        room_id  TEXT NOT NULL,
        key      TEXT NOT NULL,
        txn      TEXT NOT NULL,
        sender   TEXT NOT NULL,
        ts       INTEGER NOT NULL,
        value    TEXT NOT NULL,
        schema   TEXT,
        UNIQUE (room_id, txn)
    );
    CREATE INDEX records_key_ts ON records (room_id, key, ts, event_id);
    CREATE INDEX records_ts ON records (room_id, ts);
    CREATE TABLE latest (
        room_id  TEXT NOT NULL,
        key      TEXT NOT NULL,
        event_id TEXT NOT NULL,
        ts       INTEGER NOT NULL,
        sender   TEXT NOT NULL,
        value    TEXT NOT NULL,
        schema   TEXT,
        versions INTEGER NOT NULL,
        PRIMARY KEY (room_id, key)
    );
    CREATE TABLE pending (
        event_id   TEXT PRIMARY KEY,
        room_id    TEXT NOT NULL,
        session_id TEXT NOT NULL,
        ts         INTEGER NOT NULL,
        source     TEXT NOT NULL
    );
    CREATE INDEX pending_session ON pending (session_id);
    CREATE TABLE room_state (
        room_id   TEXT NOT NULL,
        type      TEXT NOT NULL,
        state_key TEXT NOT NULL,
        content   TEXT NOT NULL,
        sender    TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (room_id, type, state_key)
    );
    CREATE TABLE activity (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        ts      INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id)
    );
    CREATE TABLE gaps (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id TEXT NOT NULL,
        token   TEXT NOT NULL,
        stop_ts INTEGER NOT NULL
    );
    """,
    # v2: key backup and trusted identities
    """
    CREATE TABLE backed_up (
        session_id TEXT PRIMARY KEY,
        version    TEXT NOT NULL
    );
    CREATE TABLE identities (
        user_id    TEXT PRIMARY KEY,
        master_key TEXT NOT NULL,
        changed_to TEXT
    );
    """,
    # v3: history sharing (MSC4268) and the persisted outbound Megolm session
    """
    CREATE TABLE shared_sessions (
        session_id TEXT PRIMARY KEY,
        room_id    TEXT NOT NULL,
        sender_key TEXT NOT NULL,
        shared_by  TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX shared_sessions_room ON shared_sessions (room_id);
    CREATE TABLE key_bundles (
        room_id     TEXT NOT NULL,
        sender      TEXT NOT NULL,
        payload     TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (room_id, sender)
    );
    CREATE TABLE joins (
        room_id   TEXT PRIMARY KEY,
        inviter   TEXT NOT NULL,
        joined_ms INTEGER NOT NULL
    );
    CREATE TABLE outbound_sessions (
        room_id        TEXT PRIMARY KEY,
        session_id     TEXT NOT NULL,
        pickle         TEXT NOT NULL,
        created_ms     INTEGER NOT NULL,
        message_count  INTEGER NOT NULL,
        shared_history INTEGER NOT NULL,
        shared_with    TEXT NOT NULL,
        members        TEXT NOT NULL
    );
    """,
    # v4: the audit trail (datarooms.sdk.audit): a hash chain per room, and its anchors.
    """
    CREATE TABLE audit_entries (
        room_id  TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        hash     TEXT NOT NULL,
        entry    TEXT NOT NULL,
        PRIMARY KEY (room_id, seq)
    );
    CREATE UNIQUE INDEX audit_entries_event ON audit_entries (room_id, event_id);
    CREATE TABLE audit_anchors (
        room_id   TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq  INTEGER NOT NULL,
        root      TEXT NOT NULL,
        tx_hash   TEXT NOT NULL,
        tx        TEXT NOT NULL,
        height    INTEGER,
        PRIMARY KEY (room_id, last_seq)
    );
    CREATE TABLE claims (
        room_id    TEXT NOT NULL,
        collection TEXT NOT NULL,
        cid        TEXT NOT NULL,
        event_id   TEXT NOT NULL,
        sender     TEXT NOT NULL,
        ts         INTEGER NOT NULL,
        credential TEXT NOT NULL,
        PRIMARY KEY (room_id, collection, cid)
    );
    CREATE INDEX claims_cid ON claims (room_id, cid);
    """,
    # v5: the files of each room (their encrypted events' metadata), for sizes and listings
    """
    CREATE TABLE files (
        event_id TEXT PRIMARY KEY,
        room_id  TEXT NOT NULL,
        name     TEXT NOT NULL,
        size     INTEGER NOT NULL,
        mimetype TEXT NOT NULL,
        sender   TEXT NOT NULL,
        ts       INTEGER NOT NULL,
        url      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX files_room ON files (room_id, ts);
    """,
]


@dataclass(frozen=True)
class Record:
    """One version of a keyed record, as decrypted on this device."""

    room_id: str
    key: str
    value: Any
    event_id: str
    sender: str
    ts: int
    txn: str
    schema: str | None = None
    #: 1 for the first version of the key; the latest version's number is the count.
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        """What the interfaces show of a version (the CLI's ``--json``, MCP tools)."""
        return {
            "key": self.key,
            "value": self.value,
            "version": self.version,
            "event_id": self.event_id,
            "sender": self.sender,
            "ts": self.ts,
            "schema": self.schema,
        }


@dataclass(frozen=True)
class PendingEvent:
    event_id: str
    room_id: str
    session_id: str
    ts: int
    source: dict[str, Any]


@dataclass
class SyncBatch:
    """Everything one sync (or backfill page) adds to the index, applied atomically."""

    records: list[Record]
    pending: list[PendingEvent]
    resolved: list[str]  # pending event ids that are now decrypted
    state: list[tuple[str, str, str, dict[str, Any], str]]  # room, type, key, content, sender
    activity: list[tuple[str, str, int]]  # room, user, ts
    redactions: list[tuple[str, str]]  # room, redacted event id
    #: History this device has not seen yet: (room, pagination token, stop at ts).
    gaps: list[tuple[str, str, int]] = field(default_factory=list)
    files: list[FileRow] = field(default_factory=list)


@dataclass(frozen=True)
class FileRow:
    """A file event of a room, as decrypted on this device (the file stays on the server)."""

    event_id: str
    room_id: str
    name: str
    size: int
    mimetype: str
    sender: str
    ts: int
    #: The encrypted file's mxc:// URL on the media repository.
    url: str = ""


@dataclass(frozen=True)
class IndexUsage:
    """What this device's index holds of one room."""

    room_id: str
    keys: int
    versions: int
    files: int
    file_bytes: int
    state_events: int
    #: The bytes of its rows' payloads (values, state contents, file rows): a
    #: measured estimate of its share of the index file.
    index_bytes: int


class LocalIndex:
    """SQLite-backed; safe to call from one event loop (writes are serialised)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = connect_sqlite(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        # {room: {key: value}}, valid while nothing changed the database: local writes
        # clear it, and PRAGMA data_version tells us when another connection (another
        # process on this device) committed.
        self._twin_cache: dict[str, str] = {}
        self._data_version = -1
        self._depth = 0  # nesting of _tx: inner ones are savepoints of the outer one
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        with self._lock:
            migrate(self._db, _MIGRATIONS)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested in another one (a sync hook writing inside the
        sync transaction), it is a savepoint that commits or rolls back with it."""
        with self._lock:
            self._twin_cache.clear()
            nested = self._depth > 0
            self._db.execute("SAVEPOINT inner" if nested else "BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._db
                self._db.execute("RELEASE inner" if nested else "COMMIT")
            except BaseException:
                if nested:
                    self._db.execute("ROLLBACK TO inner")
                    self._db.execute("RELEASE inner")
                else:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth -= 1
                self._twin_cache.clear()

    # -- meta -----------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as db:
            _set_meta(db, name, value)

    @property
    def sync_token(self) -> str | None:
        return self.get_meta("sync_token")

    # -- writes ---------------------------------------------------------------

    def apply(
        self,
        batch: SyncBatch,
        *,
        sync_token: str | None = None,
        during: Callable[[], None] | None = None,
    ) -> list[Record]:
        """Apply a batch atomically; return the records that were new to this index.

        ``during`` runs inside the transaction, after the batch is written and before
        the sync position is; if it raises, nothing of the batch is kept.
        """
        with self._tx() as db:
            added = _apply_batch(db, batch)
            if during is not None:
                during()
            if sync_token is not None:
                _set_meta(db, "sync_token", sync_token)
        return added

    def add_records(self, records: Iterable[Record]) -> list[Record]:
        with self._tx() as db:
            return _insert_records(db, list(records))

    def gaps(self, room_id: str | None = None) -> list[tuple[int, str, str, int]]:
        """Unfilled history: (gap id, room, token, stop_ts), newest first."""
        with self._lock:
            if room_id is None:
                rows = self._db.execute("SELECT * FROM gaps ORDER BY id DESC").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM gaps WHERE room_id = ? ORDER BY id DESC", (room_id,)
                ).fetchall()
        return [(int(r[0]), r[1], r[2], int(r[3])) for r in rows]

    def apply_gap_page(self, gap_id: int, batch: SyncBatch, next_token: str | None) -> list[Record]:
        """Apply one page of history and move the gap on (or close it), atomically.

        State events in history only fill what the index does not know: the current state
        came from sync, and an older power level, membership or ACL must never replace it.
        """
        with self._tx() as db:
            added = _apply_batch(db, batch, history=True)
            if next_token is None:
                db.execute("DELETE FROM gaps WHERE id = ?", (gap_id,))
            else:
                db.execute("UPDATE gaps SET token = ? WHERE id = ?", (next_token, gap_id))
        return added

    def newest_ts(self, room_id: str) -> int | None:
        """The newest event time this device has seen in the room, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(ts) FROM activity WHERE room_id = ?", (room_id,)
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def rooms_with_member(self, user_id: str, membership: str = "join") -> list[str]:
        """Rooms whose indexed member event of ``user_id`` says ``membership``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT room_id FROM room_state WHERE type = 'm.room.member' AND state_key = ? "
                "AND json_extract(content, '$.membership') = ? ORDER BY room_id",
                (user_id, membership),
            ).fetchall()
        return [r[0] for r in rows]

    def knows_room(self, room_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM room_state WHERE room_id = ? LIMIT 1", (room_id,)
            ).fetchone()
        return row is not None

    # -- keys -----------------------------------------------------------------

    def backed_up(self, version: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id FROM backed_up WHERE version = ?", (version,)
            ).fetchall()
        return {r[0] for r in rows}

    def mark_backed_up(self, version: str, session_ids: Iterable[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO backed_up VALUES (?, ?) ON CONFLICT DO UPDATE "
                "SET version = excluded.version",
                [(sid, version) for sid in session_ids],
            )

    def identity(self, user_id: str) -> tuple[str, str | None] | None:
        """(trusted master key, a different master key seen since, if any)."""
        with self._lock:
            row = self._db.execute(
                "SELECT master_key, changed_to FROM identities WHERE user_id = ?", (user_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def set_identity(self, user_id: str, master_key: str, changed_to: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO identities VALUES (?, ?, ?) ON CONFLICT DO UPDATE "
                "SET master_key = excluded.master_key, changed_to = excluded.changed_to",
                (user_id, master_key, changed_to),
            )

    def changed_identities(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, master_key, changed_to FROM identities "
                "WHERE changed_to IS NOT NULL"
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    # -- history sharing ------------------------------------------------------

    def mark_shared(self, rows: Iterable[tuple[str, str, str]], shared_by: str = "") -> None:
        """(room_id, sender_key, session_id) of sessions that may be shared on a grant."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO shared_sessions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(sid, room, key, shared_by) for room, key, sid in rows],
            )

    def shared_sessions(self, room_id: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id FROM shared_sessions WHERE room_id = ?", (room_id,)
            ).fetchall()
        return {r[0] for r in rows}

    def pending_in_room(self, room_id: str) -> int:
        """How many events of ``room_id`` still wait for their key."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM pending WHERE room_id = ?", (room_id,)
            ).fetchone()
        return int(row[0])

    def put_bundle(self, room_id: str, sender: str, payload: str, received_ms: int) -> None:
        """A received key bundle; a newer one from the same user replaces the older."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO key_bundles VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE "
                "SET payload = excluded.payload, received_ms = excluded.received_ms",
                (room_id, sender, payload, received_ms),
            )

    def bundle(self, room_id: str, sender: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT payload FROM key_bundles WHERE room_id = ? AND sender = ?",
                (room_id, sender),
            ).fetchone()
        return str(row[0]) if row else None

    def drop_bundle(self, room_id: str, sender: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM key_bundles WHERE room_id = ? AND sender = ?", (room_id, sender)
            )

    def set_join(self, room_id: str, inviter: str, joined_ms: int) -> None:
        """A join awaiting the inviter's key bundle."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO joins VALUES (?, ?, ?) ON CONFLICT DO UPDATE "
                "SET inviter = excluded.inviter, joined_ms = excluded.joined_ms",
                (room_id, inviter, joined_ms),
            )

    def pending_joins(self) -> dict[str, tuple[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT room_id, inviter, joined_ms FROM joins").fetchall()
        return {r[0]: (r[1], int(r[2])) for r in rows}

    def drop_join(self, room_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM joins WHERE room_id = ?", (room_id,))

    def outbound(self, room_id: str) -> dict[str, Any] | None:
        """The persisted outbound Megolm session of this device in ``room_id``."""
        with self._lock:
            row = self._db.execute(
                "SELECT session_id, pickle, created_ms, message_count, shared_history, "
                "shared_with, members FROM outbound_sessions WHERE room_id = ?",
                (room_id,),
            ).fetchone()
        if row is None:
            return None
        return {
            "session_id": row[0],
            "pickle": row[1],
            "created_ms": int(row[2]),
            "message_count": int(row[3]),
            "shared_history": bool(row[4]),
            "shared_with": json.loads(row[5]),
            "members": json.loads(row[6]),
        }

    def put_outbound(self, room_id: str, data: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO outbound_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET session_id = excluded.session_id, "
                "pickle = excluded.pickle, created_ms = excluded.created_ms, "
                "message_count = excluded.message_count, "
                "shared_history = excluded.shared_history, "
                "shared_with = excluded.shared_with, members = excluded.members",
                (
                    room_id,
                    data["session_id"],
                    data["pickle"],
                    data["created_ms"],
                    data["message_count"],
                    int(data["shared_history"]),
                    json.dumps(data["shared_with"]),
                    json.dumps(data["members"]),
                ),
            )

    def drop_outbound(self, room_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbound_sessions WHERE room_id = ?", (room_id,))

    # -- reads ----------------------------------------------------------------

    def twin(self, room_id: str) -> dict[str, Record]:
        """The current state: the latest version of every key in the room."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value, event_id, sender, ts, schema, versions FROM latest "
                "WHERE room_id = ?",
                (room_id,),
            ).fetchall()
        return {
            r[0]: Record(room_id, r[0], json.loads(r[1]), r[2], r[3], r[4], "", r[5], r[6])
            for r in rows
        }

    def twin_values(self, room_id: str) -> dict[str, Any]:
        """``{key: latest value}`` (a fresh copy; cached until the database changes)."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._twin_cache.clear()
                self._data_version = version
            text = self._twin_cache.get(room_id)
            if text is None:
                row = self._db.execute(
                    "SELECT json_group_object(key, json(value)) FROM latest WHERE room_id = ?",
                    (room_id,),
                ).fetchone()
                text = row[0] if row and row[0] else "{}"
                self._twin_cache[room_id] = text
        # Decoding the cached JSON gives every caller its own copy, cheaper than a deepcopy.
        result: dict[str, Any] = json.loads(text)
        return result

    def latest(self, room_id: str, key: str) -> Record | None:
        with self._lock:
            r = self._db.execute(
                "SELECT l.value, l.event_id, l.sender, l.ts, l.schema, l.versions, r.txn "
                "FROM latest l JOIN records r ON r.event_id = l.event_id "
                "WHERE l.room_id = ? AND l.key = ?",
                (room_id, key),
            ).fetchone()
        if r is None:
            return None
        return Record(room_id, key, json.loads(r[0]), r[1], r[2], r[3], r[6], r[4], r[5])

    def history(
        self,
        room_id: str,
        key: str,
        *,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Record]:
        """Every version of ``key``, oldest first (or newest first), numbered from 1."""
        sql = (
            "SELECT * FROM (SELECT value, event_id, sender, ts, txn, schema, "
            "ROW_NUMBER() OVER (ORDER BY ts, event_id) AS version FROM records "
            "WHERE room_id = ? AND key = ?) WHERE 1 = 1"
        )
        args: list[Any] = [room_id, key]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if until is not None:
            sql += " AND ts < ?"
            args.append(until)
        sql += " ORDER BY version " + ("DESC" if newest_first else "ASC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            Record(room_id, key, json.loads(r[0]), r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows
        ]

    def between(self, room_id: str, since: int, until: int, *, limit: int = 1000) -> list[Record]:
        """Records of every key written in ``[since, until)`` (server time, ms), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value, event_id, sender, ts, txn, schema FROM records "
                "WHERE room_id = ? AND ts >= ? AND ts < ? ORDER BY ts, event_id LIMIT ?",
                (room_id, since, until, limit),
            ).fetchall()
        return [Record(room_id, r[0], json.loads(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def count(self, room_id: str) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT count(*) FROM records WHERE room_id = ?", (room_id,)
                ).fetchone()[0]
            )

    def state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT content FROM room_state WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, event_type, state_key),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def state_sender(self, room_id: str, event_type: str, state_key: str = "") -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sender FROM room_state WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, event_type, state_key),
            ).fetchone()
        return str(row[0]) if row else None

    def state_of_type(self, room_id: str, event_type: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state_key, content FROM room_state WHERE room_id = ? AND type = ?",
                (room_id, event_type),
            ).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def rooms_with_state(self, event_type: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT room_id, content FROM room_state WHERE type = ? AND state_key = ''",
                (event_type,),
            ).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def add_file(self, row: FileRow) -> None:
        """A file this device sent (sync brings it again; the same event is kept once)."""
        self.apply(SyncBatch([], [], [], [], [], [], files=[row]))

    def files(self, room_id: str, before_ts: int = 2**62) -> list[FileRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, room_id, name, size, mimetype, sender, ts, url FROM files "
                "WHERE room_id = ? AND ts < ? ORDER BY ts, event_id",
                (room_id, before_ts),
            ).fetchall()
        return [FileRow(r[0], r[1], r[2], int(r[3]), r[4], r[5], int(r[6]), r[7]) for r in rows]

    def old_versions(self, room_id: str, before_ts: int) -> list[Record]:
        """Versions written before ``before_ts`` that are not their key's latest."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.room_id, r.key, r.value, r.event_id, r.sender, r.ts, r.txn, r.schema "
                "FROM records r WHERE r.room_id = ? AND r.ts < ? AND NOT EXISTS "
                "(SELECT 1 FROM latest l WHERE l.room_id = r.room_id AND l.event_id = r.event_id) "
                "ORDER BY r.ts, r.event_id",
                (room_id, before_ts),
            ).fetchall()
        return [
            Record(r[0], r[1], json.loads(r[2]), r[3], r[4], int(r[5]), r[6], r[7]) for r in rows
        ]

    def forget(self, room_id: str, event_ids: Iterable[str]) -> None:
        """Drop these events' records and files from the index (they were redacted)."""
        self.apply(SyncBatch([], [], [], [], [], [(room_id, e) for e in event_ids]))

    def usage(self) -> dict[str, IndexUsage]:
        """Per room: records (keys, versions), files, state, and their bytes here."""
        sums: dict[str, list[int]] = {}

        def add(rows: list[Any], *slots: int) -> None:
            for room_id, *values in rows:
                acc = sums.setdefault(room_id, [0] * 6)
                for slot, value in zip(slots, values, strict=True):
                    acc[slot] += int(value or 0)

        with self._lock:
            db = self._db
            add(
                db.execute("SELECT room_id, count(*) FROM latest GROUP BY room_id").fetchall(),
                0,
            )
            add(
                db.execute(
                    "SELECT room_id, count(*), sum(length(value) + length(key) + 120) "
                    "FROM records GROUP BY room_id"
                ).fetchall(),
                1,
                5,
            )
            add(
                db.execute(
                    "SELECT room_id, count(*), sum(size), sum(length(name) + 160) "
                    "FROM files GROUP BY room_id"
                ).fetchall(),
                2,
                3,
                5,
            )
            add(
                db.execute(
                    "SELECT room_id, count(*), sum(length(content) + length(state_key) + 80) "
                    "FROM room_state GROUP BY room_id"
                ).fetchall(),
                4,
                5,
            )
        return {r: IndexUsage(r, *v) for r, v in sums.items()}

    def activity(self, room_id: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, ts FROM activity WHERE room_id = ?", (room_id,)
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def pending(self, session_ids: Iterable[str] | None = None) -> list[PendingEvent]:
        with self._lock:
            if session_ids is None:
                rows = self._db.execute("SELECT * FROM pending").fetchall()
            else:
                ids = list(session_ids)
                marks = ",".join("?" * len(ids))
                rows = self._db.execute(
                    f"SELECT * FROM pending WHERE session_id IN ({marks})",  # noqa: S608
                    ids,
                ).fetchall()
        return [PendingEvent(r[0], r[1], r[2], int(r[3]), json.loads(r[4])) for r in rows]

    # -- claims (datarooms.sdk.claims) ---------------------------------------------

    def put_claim(
        self,
        room_id: str,
        collection: str,
        cid: str,
        event_id: str,
        sender: str,
        ts: int,
        credential: dict[str, Any],
    ) -> None:
        """Remember a claim seen in a room (the first event that saved it wins)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                (room_id, collection, cid, event_id, sender, ts, json.dumps(credential)),
            )

    def claims_by_cid(
        self, room_id: str, cid: str, collection: str | None = None
    ) -> list[tuple[str, str, str, int, dict[str, Any]]]:
        """``(collection, event_id, sender, ts, credential)`` of the claim ``cid``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT collection, event_id, sender, ts, credential FROM claims "
                "WHERE room_id = ? AND cid = ? AND (?3 IS NULL OR collection = ?3) "
                "ORDER BY ts, event_id",
                (room_id, cid, collection),
            ).fetchall()
        return [(r[0], r[1], r[2], int(r[3]), json.loads(r[4])) for r in rows]

    # -- the audit trail (datarooms.sdk.audit) -------------------------------------

    def audit_append(
        self, room_id: str, entries: Iterable[tuple[int, str, str, str]], cursor: str | None
    ) -> None:
        """Append ``(seq, event_id, hash, entry json)`` rows and the room's pager position,
        in one transaction (the position is written with what it covers)."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO audit_entries (room_id, seq, event_id, hash, entry) "
                "VALUES (?, ?, ?, ?, ?)",
                [(room_id, *row) for row in entries],
            )
            if cursor is not None:
                _set_meta(db, f"audit_cursor:{room_id}", cursor)

    def audit_entries(
        self, room_id: str, *, after: int = 0, until: int | None = None
    ) -> list[tuple[int, str, str, str]]:
        """``(seq, event_id, hash, entry json)`` of the room's trail, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, hash, entry FROM audit_entries WHERE room_id = ? "
                "AND seq > ? AND seq <= ? ORDER BY seq",
                (room_id, after, until if until is not None else 2**62),
            ).fetchall()
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def audit_head(self, room_id: str) -> tuple[int, str, str] | None:
        """``(seq, event_id, hash)`` of the room's newest entry."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, event_id, hash FROM audit_entries WHERE room_id = ? "
                "ORDER BY seq DESC LIMIT 1",
                (room_id,),
            ).fetchone()
        return (int(row[0]), row[1], row[2]) if row else None

    def audit_add_anchor(
        self, room_id: str, first_seq: int, last_seq: int, root: str, tx_hash: str, tx: str
    ) -> None:
        """Remember an anchor about to be broadcast (height unknown until committed)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO audit_anchors "
                "(room_id, first_seq, last_seq, root, tx_hash, tx, height) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (room_id, first_seq, last_seq, root, tx_hash, tx),
            )

    def audit_set_anchor_height(self, room_id: str, last_seq: int, height: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE audit_anchors SET height = ? WHERE room_id = ? AND last_seq = ?",
                (height, room_id, last_seq),
            )

    def audit_anchors(self, room_id: str) -> list[dict[str, Any]]:
        """The room's anchors, oldest first; ``height`` is None while not known committed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT first_seq, last_seq, root, tx_hash, tx, height FROM audit_anchors "
                "WHERE room_id = ? ORDER BY last_seq",
                (room_id,),
            ).fetchall()
        return [
            {
                "first_seq": int(r[0]),
                "last_seq": int(r[1]),
                "root": r[2],
                "tx_hash": r[3],
                "tx": r[4],
                "height": None if r[5] is None else int(r[5]),
            }
            for r in rows
        ]


def _set_meta(db: sqlite3.Connection, name: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
        (name, value),
    )


_STATE_UPSERT = (
    "INSERT INTO room_state VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
    "SET content = excluded.content, sender = excluded.sender"
)
_STATE_FILL = "INSERT INTO room_state VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"


def _apply_batch(
    db: sqlite3.Connection, batch: SyncBatch, *, history: bool = False
) -> list[Record]:
    added = _insert_records(db, batch.records)
    for p in batch.pending:
        db.execute(
            "INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?)",
            (p.event_id, p.room_id, p.session_id, p.ts, json.dumps(p.source)),
        )
    for event_id in batch.resolved:
        db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))
    upsert = _STATE_FILL if history else _STATE_UPSERT
    for room, etype, skey, content, sender in batch.state:
        db.execute(upsert, (room, etype, skey, json.dumps(content), sender))
    for room, user, ts in batch.activity:
        db.execute(
            "INSERT INTO activity VALUES (?, ?, ?) ON CONFLICT DO UPDATE "
            "SET ts = max(ts, excluded.ts)",
            (room, user, ts),
        )
    for f in batch.files:
        db.execute(
            "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (f.event_id, f.room_id, f.name, f.size, f.mimetype, f.sender, f.ts, f.url),
        )
    for room, event_id in batch.redactions:
        _redact(db, room, event_id)
    for room, token, stop_ts in batch.gaps:
        db.execute(
            "INSERT INTO gaps (room_id, token, stop_ts) VALUES (?, ?, ?)", (room, token, stop_ts)
        )
    return added


def _insert_records(db: sqlite3.Connection, records: list[Record]) -> list[Record]:
    added: list[Record] = []
    for rec in records:
        value = json.dumps(rec.value, separators=(",", ":"))
        cur = db.execute(
            "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.event_id, rec.room_id, rec.key, rec.txn, rec.sender, rec.ts, value, rec.schema),
        )
        if cur.rowcount == 0:
            # Already indexed (same event, or same txn retried). The writer indexes its
            # own write at once with its own clock; the server's timestamp, when sync
            # brings it, wins, so every device orders versions alike.
            moved = db.execute(
                "UPDATE records SET ts = ? WHERE event_id = ? AND ts != ?",
                (rec.ts, rec.event_id, rec.ts),
            )
            if moved.rowcount:
                _recompute_latest(db, rec.room_id, rec.key)
            continue
        db.execute(
            """
            INSERT INTO latest VALUES (?, ?, ?, ?, ?, ?, ?, 1)
            ON CONFLICT (room_id, key) DO UPDATE SET
                versions = versions + 1,
                event_id = CASE WHEN newer THEN excluded.event_id ELSE latest.event_id END,
                ts       = CASE WHEN newer THEN excluded.ts       ELSE latest.ts END,
                sender   = CASE WHEN newer THEN excluded.sender   ELSE latest.sender END,
                value    = CASE WHEN newer THEN excluded.value    ELSE latest.value END,
                schema   = CASE WHEN newer THEN excluded.schema   ELSE latest.schema END
            """.replace(
                "newer",
                "(excluded.ts > latest.ts OR "
                "(excluded.ts = latest.ts AND excluded.event_id > latest.event_id))",
            ),
            (rec.room_id, rec.key, rec.event_id, rec.ts, rec.sender, value, rec.schema),
        )
        added.append(rec)
    return added


def _redact(db: sqlite3.Connection, room_id: str, event_id: str) -> None:
    db.execute("DELETE FROM files WHERE event_id = ? AND room_id = ?", (event_id, room_id))
    # A redacted claim is gone (datarooms.sdk.claims).
    db.execute("DELETE FROM claims WHERE room_id = ? AND event_id = ?", (room_id, event_id))
    row = db.execute(
        "SELECT key FROM records WHERE event_id = ? AND room_id = ?", (event_id, room_id)
    ).fetchone()
    if row is None:
        return
    db.execute("DELETE FROM records WHERE event_id = ?", (event_id,))
    _recompute_latest(db, room_id, row[0])


def _recompute_latest(db: sqlite3.Connection, room_id: str, key: str) -> None:
    db.execute("DELETE FROM latest WHERE room_id = ? AND key = ?", (room_id, key))
    db.execute(
        """
        INSERT INTO latest
        SELECT room_id, key, event_id, ts, sender, value, schema,
               (SELECT count(*) FROM records WHERE room_id = ?1 AND key = ?2)
        FROM records WHERE room_id = ?1 AND key = ?2
        ORDER BY ts DESC, event_id DESC LIMIT 1
        """,
        (room_id, key),
    )
