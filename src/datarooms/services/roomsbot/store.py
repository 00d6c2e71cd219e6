"""The rooms bot's own state: entity → rooms, the chain height, seen transactions.

A SQLite file (``<data_dir>/roomsbot/store.db``), or the schema ``roomsbot`` of the
services' PostgreSQL in the scale profile (datarooms._db, services/stores.py).

The homeserver is the source of truth for which rooms exist (an entity's aliases are
claimed atomically when its rooms are created); this store is what makes the common
case cheap: an entity already recorded here needs no request to the homeserver.

Schema changes are versioned migrations (datarooms._db; files made before it kept their
version in ``meta.schema_version``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from datarooms import _sqlite
from datarooms._db import SQLITE, Database, StoreTarget
from datarooms.chain.entity import SkippedEvent

_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE entities (
        did TEXT PRIMARY KEY,
        entity_type TEXT,
        controllers TEXT NOT NULL,
        members TEXT NOT NULL,
        source TEXT NOT NULL,
        chain_id TEXT,
        height INTEGER,
        tx_hash TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE rooms (
        did TEXT NOT NULL REFERENCES entities(did),
        kind TEXT NOT NULL,
        room_id TEXT NOT NULL,
        alias TEXT NOT NULL UNIQUE,
        PRIMARY KEY (did, kind)
    );
    CREATE TABLE as_txns (txn_id TEXT PRIMARY KEY, events INTEGER NOT NULL, at REAL NOT NULL);
    CREATE TABLE skipped (
        tx_hash TEXT NOT NULL, reason TEXT NOT NULL, height INTEGER NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (tx_hash, reason)
    );
    CREATE TABLE cursor (name TEXT PRIMARY KEY, height INTEGER NOT NULL);
    """,
]


@dataclass(frozen=True)
class RoomRef:
    room_id: str
    alias: str


@dataclass(frozen=True)
class EntityFacts:
    """What is known about an entity: from the chain, or only its DID (on request)."""

    did: str
    type: str | None = None
    controllers: tuple[str, ...] = ()
    source: str = "request"  # "chain" | "request"
    chain_id: str | None = None
    height: int | None = None
    tx_hash: str | None = None

    def merged(self, newer: EntityFacts) -> EntityFacts:
        """These facts updated by ``newer``: chain facts win; controllers accumulate."""
        controllers = tuple(dict.fromkeys([*self.controllers, *newer.controllers]))
        if newer.source == "chain" or self.source != "chain":
            return EntityFacts(
                self.did,
                newer.type or self.type,
                controllers,
                "chain" if "chain" in (self.source, newer.source) else newer.source,
                newer.chain_id or self.chain_id,
                newer.height or self.height,
                newer.tx_hash or self.tx_hash,
            )
        return EntityFacts(
            self.did,
            self.type or newer.type,
            controllers,
            self.source,
            self.chain_id,
            self.height,
            self.tx_hash,
        )

    def content(self) -> dict[str, object]:
        """The ``io.datarooms.entity`` state content."""
        out: dict[str, object] = {
            "did": self.did,
            "type": self.type,
            "controllers": list(self.controllers),
            "source": self.source,
            "version": 1,
        }
        if self.chain_id:
            out["chain_id"] = self.chain_id
        if self.height is not None:
            out["height"] = self.height
        if self.tx_hash:
            out["tx_hash"] = self.tx_hash
        return out


@dataclass(frozen=True)
class EntityRecord:
    facts: EntityFacts
    #: Matrix users invited with admin power (the controllers that map to a user).
    members: tuple[str, ...]
    #: The entity's space, None until someone asks for it (lazily created).
    space: RoomRef | None
    rooms: dict[str, RoomRef] = field(default_factory=dict)

    def refs(self) -> list[RoomRef]:
        """The space (if made) and the data rooms."""
        return [*([self.space] if self.space else []), *self.rooms.values()]

    @property
    def did(self) -> str:
        return self.facts.did

    @property
    def room_id(self) -> str:
        """The entity room (the one with IXO's alias)."""
        return self.rooms["entity"].room_id


class Store:
    """The rooms bot's store. Not shared between processes that write (one bot per data dir)."""

    #: What ``datarooms migrate-to-postgres`` copies (datarooms._db.copy_store).
    NAME = "roomsbot"
    MIGRATIONS = _MIGRATIONS
    SEALED: dict[str, tuple[str, ...]] = {}

    def __init__(self, path: Path, target: StoreTarget = SQLITE) -> None:
        self.path = path
        if target.backend == "sqlite":
            adopt_meta_version(path)
        self._db: Database = target.open(
            self.NAME, path, _MIGRATIONS, synchronous="NORMAL", foreign_keys=True
        )
        self._txns_recorded = 0

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        self._db.close()

    # -- entities ----------------------------------------------------------------

    def get(self, did: str) -> EntityRecord | None:
        row = self._db.execute(
            "SELECT did, entity_type, controllers, members, source, chain_id, height, tx_hash "
            "FROM entities WHERE did = ?",
            (did,),
        ).fetchone()
        if row is None:
            return None
        rooms = {
            kind: RoomRef(room_id, alias)
            for kind, room_id, alias in self._db.execute(
                "SELECT kind, room_id, alias FROM rooms WHERE did = ?", (did,)
            )
        }
        space = rooms.pop("space", None)
        if "entity" not in rooms:
            return None
        facts = EntityFacts(
            row[0], row[1], tuple(json.loads(row[2])), row[4], row[5], row[6], row[7]
        )
        return EntityRecord(facts, tuple(json.loads(row[3])), space, rooms)

    def did_for_alias(self, alias: str) -> str | None:
        row = self._db.execute("SELECT did FROM rooms WHERE alias = ?", (alias,)).fetchone()
        return str(row[0]) if row else None

    def save(self, record: EntityRecord) -> None:
        f = record.facts
        now = time.time()
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO entities (did, entity_type, controllers, members, source, chain_id,"
                " height, tx_hash, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(did) DO UPDATE SET entity_type=excluded.entity_type,"
                " controllers=excluded.controllers, members=excluded.members,"
                " source=excluded.source, chain_id=excluded.chain_id, height=excluded.height,"
                " tx_hash=excluded.tx_hash, updated_at=excluded.updated_at",
                (
                    f.did,
                    f.type,
                    json.dumps(list(f.controllers)),
                    json.dumps(list(record.members)),
                    f.source,
                    f.chain_id,
                    f.height,
                    f.tx_hash,
                    now,
                    now,
                ),
            )
            spaces = [("space", record.space)] if record.space else []
            for kind, ref in [*spaces, *record.rooms.items()]:
                db.execute(
                    "INSERT INTO rooms (did, kind, room_id, alias) VALUES (?,?,?,?)"
                    " ON CONFLICT (did, kind) DO UPDATE SET room_id = excluded.room_id,"
                    " alias = excluded.alias",
                    (f.did, kind, ref.room_id, ref.alias),
                )

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entities").fetchone()[0])

    def dids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT did FROM entities ORDER BY created_at")]

    # -- the chain cursor (a watcher CursorStore) ------------------------------------

    def load_height(self) -> int | None:
        row = self._db.execute("SELECT height FROM cursor WHERE name = 'chain'").fetchone()
        return int(row[0]) if row else None

    def save_height(self, height: int) -> None:
        self._db.execute(
            "INSERT INTO cursor (name, height) VALUES ('chain', ?) "
            "ON CONFLICT(name) DO UPDATE SET height = excluded.height",
            (height,),
        )

    def record_skip(self, skipped: SkippedEvent) -> None:
        self._db.execute(
            "INSERT INTO skipped (tx_hash, reason, height, at) VALUES (?,?,?,?)"
            " ON CONFLICT DO NOTHING",
            (skipped.tx_hash, skipped.reason[:2000], skipped.height, time.time()),
        )

    def skipped(self, limit: int = 20) -> list[SkippedEvent]:
        return [
            SkippedEvent(h, t, r)
            for t, r, h in self._db.execute(
                "SELECT tx_hash, reason, height FROM skipped ORDER BY at DESC LIMIT ?", (limit,)
            )
        ]

    def skipped_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM skipped").fetchone()[0])

    # -- appservice transactions -------------------------------------------------------

    def txn_seen(self, txn_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM as_txns WHERE txn_id = ?", (txn_id,)).fetchone()
            is not None
        )

    def record_txn(self, txn_id: str, events: int) -> None:
        self._db.execute(
            "INSERT INTO as_txns (txn_id, events, at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
            (txn_id, events, time.time()),
        )
        self._txns_recorded += 1
        if self._txns_recorded % 1000 == 1:
            # Keep a week of transaction ids: the homeserver retries for far less than that.
            self._db.execute("DELETE FROM as_txns WHERE at < ?", (time.time() - 7 * 86400,))


def adopt_meta_version(path: Path) -> None:
    """A store file made before datarooms._db kept its schema version in ``meta``: carry it
    over to ``PRAGMA user_version``, where the migrations look."""
    if not path.exists():
        return
    db = _sqlite.connect(path)
    try:
        if db.execute("PRAGMA user_version").fetchone()[0]:
            return
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            return
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row:
            db.execute(f"PRAGMA user_version = {int(row[0])}")
    finally:
        db.close()
