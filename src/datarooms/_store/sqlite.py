"""SQLite helpers shared by the local stores (index, telemetry index, telemetry outbox)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


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
