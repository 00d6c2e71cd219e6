"""The durable outbox of inbound webhooks: a request is answered 2xx only once its
deliveries are committed here (``synchronous=FULL``), and each delivery carries the
transaction id it is sent with, chosen when it is stored. Sending again after a crash
reuses it, so the homeserver answers the event it already has: every acknowledged
webhook lands in its room once.

A hook's ``dedupe`` key (GitHub's delivery id, the signature of a signed request)
is unique per hook: a redelivery or a replay inside the window is answered as the
original was and stored nothing.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datarooms._db import SQLITE, Database, StoreTarget
from datarooms.sdk.automation.formats import Delivery

_MIGRATIONS = [
    """
    CREATE TABLE deliveries (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        hook_id     TEXT NOT NULL,
        room_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        payload     TEXT NOT NULL,
        txn         TEXT NOT NULL UNIQUE,
        dedupe      TEXT,
        received_ms INTEGER NOT NULL,
        state       TEXT NOT NULL DEFAULT 'pending',
        attempts    INTEGER NOT NULL DEFAULT 0,
        event_id    TEXT,
        error       TEXT,
        done_ms     INTEGER
    );
    CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (hook_id, dedupe)
        WHERE dedupe IS NOT NULL;
    CREATE INDEX deliveries_pending ON deliveries (state, seq)
    """
]

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    hook_id: str
    room_id: str
    kind: str
    payload: dict[str, Any]
    txn: str
    received_ms: int
    state: str
    attempts: int
    event_id: str | None
    error: str | None


class HookOutbox:
    """``<data_dir>/automation/outbox.db``. Thread-safe; call it from a thread."""

    #: What ``datarooms migrate-to-postgres`` copies (datarooms._db.copy_store).
    NAME = "automation_outbox"
    MIGRATIONS = _MIGRATIONS
    SEALED = {"deliveries": ("payload",)}

    def __init__(self, path: Path | str, target: StoreTarget = SQLITE) -> None:
        self.path = Path(path)
        self._db: Database = target.open(self.NAME, self.path, _MIGRATIONS)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(
        self,
        hook_id: str,
        room_id: str,
        deliveries: Sequence[Delivery],
        *,
        dedupe: str | None = None,
    ) -> list[int] | None:
        """Store ``deliveries`` durably, all or none; their sequence numbers, or ``None``
        when ``dedupe`` was already received for this hook (nothing stored)."""
        now = int(time.time() * 1000)
        seqs: list[int] = []
        with self._lock, self._db.transaction() as db:
            if (
                dedupe is not None
                and db.execute(
                    "SELECT 1 FROM deliveries WHERE hook_id = ? AND dedupe = ?",
                    (hook_id, f"{dedupe}#0"),
                ).fetchone()
            ):
                return None
            for i, d in enumerate(deliveries):
                payload = dict(d.payload)
                if d.kind == "telemetry":  # a timestamp fixed now: the same on a resend
                    payload["samples"] = [
                        [now if s[0] is None else s[0], *s[1:]] for s in payload["samples"]
                    ]
                cur = db.execute(
                    "INSERT INTO deliveries (hook_id, room_id, kind, payload, txn, dedupe,"
                    " received_ms) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                    (
                        hook_id,
                        room_id,
                        d.kind,
                        db.seal(json.dumps(payload, separators=(",", ":")), "payload"),
                        "dr-hook-" + secrets.token_hex(12),
                        None if dedupe is None else f"{dedupe}#{i}",
                        now,
                    ),
                )
                seqs.append(int(cur.fetchone()[0]))
        return seqs

    def pending(self, limit: int = 500) -> list[OutboxRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, hook_id, room_id, kind, payload, txn, received_ms, state, attempts,"
                " event_id, error FROM deliveries WHERE state = ? ORDER BY seq LIMIT ?",
                (PENDING, limit),
            ).fetchall()
        return [self._row(r) for r in rows]

    def get(self, seq: int) -> OutboxRow | None:
        with self._lock:
            r = self._db.execute(
                "SELECT seq, hook_id, room_id, kind, payload, txn, received_ms, state, attempts,"
                " event_id, error FROM deliveries WHERE seq = ?",
                (seq,),
            ).fetchone()
        return self._row(r) if r else None

    def mark_sent(self, seq: int, event_id: str) -> None:
        with self._lock, self._db.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, event_id = ?, error = NULL, done_ms = ?,"
                " attempts = attempts + 1 WHERE seq = ?",
                (SENT, event_id, int(time.time() * 1000), seq),
            )

    def mark_failed(self, seq: int, error: str) -> None:
        """A delivery that can never succeed (the room refuses it): kept, visible."""
        with self._lock, self._db.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, error = ?, done_ms = ?,"
                " attempts = attempts + 1 WHERE seq = ?",
                (FAILED, error[:500], int(time.time() * 1000), seq),
            )

    def note_attempt(self, seq: int, error: str) -> None:
        """A failed attempt that will be retried; the error stays visible meanwhile."""
        with self._lock, self._db.transaction() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, error = ? WHERE seq = ?",
                (error[:500], seq),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, count(*) FROM deliveries GROUP BY state"
            ).fetchall()
        out = {PENDING: 0, SENT: 0, FAILED: 0}
        out.update({str(s): int(n) for s, n in rows})
        return out

    def prune(self, older_than_s: float = 86400.0) -> int:
        """Forget sent deliveries older than this (their dedupe keys with them)."""
        cutoff = int((time.time() - older_than_s) * 1000)
        with self._lock, self._db.transaction() as db:
            return db.execute(
                "DELETE FROM deliveries WHERE state = ? AND done_ms < ?", (SENT, cutoff)
            ).rowcount

    def _row(self, r: tuple[Any, ...]) -> OutboxRow:
        return _row(r, self._db.unseal(r[4], "payload"))


def _row(r: tuple[Any, ...], payload: str) -> OutboxRow:
    return OutboxRow(
        seq=r[0],
        hook_id=r[1],
        room_id=r[2],
        kind=r[3],
        payload=json.loads(payload),
        txn=r[5],
        received_ms=r[6],
        state=r[7],
        attempts=r[8],
        event_id=r[9],
        error=r[10],
    )
