"""The documents' outbox: local edits not yet acknowledged by the homeserver.

One SQLite file per device store (``<store>/docs/outbox.db``, WAL, ``synchronous=FULL``).
Every local transaction on a document appends its Yjs update here before the edit call
returns, so an edit survives a killed process, a power cut and a device that is offline
for days; a row is deleted only once the event carrying it was acknowledged. A device
that reopens a document re-applies its pending rows and sends them (CRDT updates are
idempotent, so sending one twice is harmless).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from datarooms._sqlite import open_store

_MIGRATIONS = [
    """
    CREATE TABLE pending (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id TEXT NOT NULL,
        name TEXT NOT NULL,
        doc_update BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX pending_doc ON pending (room_id, name, id)
    """,
]


class DocOutbox:
    """Durable pending updates per (room, document)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_store(path, _MIGRATIONS)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, room_id: str, name: str, update: bytes) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO pending (room_id, name, doc_update, created_ms) VALUES (?, ?, ?, ?)",
                (room_id, name, update, int(time.time() * 1000)),
            )
            return int(cur.lastrowid or 0)

    def pending(self, room_id: str, name: str) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, doc_update FROM pending WHERE room_id = ? AND name = ? ORDER BY id",
                (room_id, name),
            ).fetchall()
        return [(int(i), bytes(u)) for i, u in rows]

    def count(self, room_id: str | None = None) -> int:
        with self._lock:
            if room_id is None:
                row = self._db.execute("SELECT count(*) FROM pending").fetchone()
            else:
                row = self._db.execute(
                    "SELECT count(*) FROM pending WHERE room_id = ?", (room_id,)
                ).fetchone()
        return int(row[0])

    def acknowledge(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids])
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
