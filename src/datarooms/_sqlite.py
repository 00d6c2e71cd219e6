"""SQLite helpers shared by the local stores (index, telemetry index, telemetry outbox)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from datarooms._fs import PRIVATE_FILE, private_dir, private_file


def connect(path: Path | str, *, check_same_thread: bool = False) -> sqlite3.Connection:
    """Open (or create) a private SQLite database in autocommit mode.

    The file is created ``0600`` before SQLite touches it (SQLite gives its ``-wal`` and
    ``-shm`` files the database's mode), its directory ``0700``; an existing database that
    others can read is tightened. Local stores hold tokens, keys and decrypted data.
    """
    path = Path(path)
    if not path.parent.exists():
        private_dir(path.parent)
    if path.exists():
        for suffix in ("", "-wal", "-shm", "-journal"):
            private_file(path.with_name(path.name + suffix))
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    return sqlite3.connect(path, check_same_thread=check_same_thread, isolation_level=None)


def open_store(path: Path | str, migrations: Sequence[str]) -> sqlite3.Connection:
    """A private store on disk that several processes may open: :func:`connect`, WAL,
    ``synchronous=FULL`` (a commit is on disk when it returns), a 10 s busy timeout,
    and its schema migrated."""
    db = connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")
    migrate(db, migrations)
    return db


def migrate(db: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Apply the migrations past ``PRAGMA user_version``, each in its own transaction.

    ``migrations[i]`` takes the schema from version ``i`` to ``i + 1``. The connection
    must be in autocommit mode (``isolation_level=None``).
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(migrations[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception) on an autocommit
    connection: the write lock is taken up front, so two writers never deadlock on an
    upgrade, and the block is durable when it returns (with ``synchronous=FULL``)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
