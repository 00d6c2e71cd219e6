"""Port an embedded Synapse's SQLite database into the scale profile's PostgreSQL.

Synapse's own ``synapse_port_db`` does the copy (it keeps its progress in the
``port_from_sqlite3`` table, so a rerun after an interruption resumes where it
stopped). Around it, this module:

- refuses a target database that holds another server's users;
- checks, after the port, that the key tables hold as many rows in PostgreSQL as
  in SQLite (a port that did not finish is never taken for a finished one);
- keeps the SQLite file for a rollback: ``homeserver.db`` becomes
  ``homeserver.db.migrated`` (:func:`retire_sqlite`, after the caller's switch of
  the profile, the commit point).

The caller (services/migrate.py) holds the platform's lock and switches the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datarooms._fs import atomic_write
from datarooms.errors import PlatformError
from datarooms.homeserver._proc import _die_with_parent
from datarooms.homeserver.embedded import EmbeddedSynapse
from datarooms.homeserver.scale import ScaleSynapse

log = logging.getLogger(__name__)

#: Tables whose row counts must match after the port: accounts, devices and their
#: keys, key backup, rooms, events, memberships, aliases, media.
KEY_TABLES = (
    "users",
    "devices",
    "e2e_device_keys_json",
    "e2e_cross_signing_keys",
    "e2e_room_keys_versions",
    "e2e_room_keys",
    "rooms",
    "events",
    "event_json",
    "room_memberships",
    "room_aliases",
    "local_current_membership",
    "local_media_repository",
    "account_data",
)

MIGRATED_SUFFIX = ".migrated"

Progress = Callable[[str], None]


@dataclass
class PortReport:
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def migrated_path(db: Path) -> Path:
    return db.with_name(db.name + MIGRATED_SUFFIX)


def sqlite_counts(db: Path) -> dict[str, int]:
    """Rows per key table in the (closed) SQLite database, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608 - constants
            for t in KEY_TABLES
            if t in have
        }
    finally:
        conn.close()


def sqlite_server_name(db: Path) -> str | None:
    """The server name of the SQLite database's users (None: no users yet)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT name FROM users LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return str(row[0]).split(":", 1)[1] if row else None


def pending_background_updates(db: Path) -> int:
    """Synapse's background updates not yet run on the SQLite database."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM background_updates").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


async def finish_background_updates(
    embedded: EmbeddedSynapse, db: Path, *, progress: Progress, timeout: float = 300.0
) -> None:
    """Run Synapse (on its SQLite) until its background updates are done: synapse_port_db
    refuses a database with pending ones. ``embedded``'s extra config should disable the
    sleep between batches (``background_updates: {sleep_enabled: false}``)."""
    pending = pending_background_updates(db)
    if not pending:
        return
    progress(f"running Synapse until its {pending} pending background updates are done")
    await embedded.start()
    try:
        deadline = time.monotonic() + timeout
        while pending_background_updates(db):
            if not embedded.running:
                raise PlatformError(
                    f"Synapse stopped while running its background updates:\n{embedded.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"Synapse's background updates did not finish within {timeout:.0f} s; "
                    "start the platform, let it run a while, stop it and migrate again"
                )
            await asyncio.sleep(0.2)
    finally:
        await embedded.stop()


def _pg_connect(args: dict[str, Any]) -> Any:
    import psycopg2

    keep = {k: v for k, v in args.items() if k not in ("cp_min", "cp_max", "cp_reconnect")}
    if "database" in keep:
        keep["dbname"] = keep.pop("database")
    return psycopg2.connect(**keep)


def postgres_state(args: dict[str, Any]) -> tuple[dict[str, int], set[str], bool]:
    """(rows per key table, server names of users, whether a port was started) in PostgreSQL."""
    conn = _pg_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            have = {r[0] for r in cur.fetchall()}
            counts: dict[str, int] = {}
            for t in KEY_TABLES:
                if t in have:
                    cur.execute(f"SELECT count(*) FROM {t}")  # noqa: S608 - constants
                    counts[t] = int(cur.fetchone()[0])
            servers: set[str] = set()
            if "users" in have:
                cur.execute("SELECT DISTINCT split_part(name, ':', 2) FROM users")
                servers = {r[0] for r in cur.fetchall()}
            return counts, servers, "port_from_sqlite3" in have
    finally:
        conn.close()


#: Synapse's multi-writer streams and their PostgreSQL sequences (``stream_name`` and
#: ``sequence_name`` of each ``MultiWriterIdGenerator`` in synapse/storage/databases/).
STREAM_SEQUENCES = {
    "events": "events_stream_seq",
    "to_device": "device_inbox_sequence",
    "account_data": "account_data_sequence",
    "receipts": "receipts_sequence",
    "presence_stream": "presence_stream_sequence",
    "caches": "cache_invalidation_stream_seq",
    "device_lists_stream": "device_lists_sequence",
    "e2e_cross_signing_keys": "e2e_cross_signing_keys_sequence",
    "pushers": "pushers_sequence",
    "push_rules_stream": "push_rules_stream_sequence",
    "un_partial_stated_event_stream": "un_partial_stated_event_stream_sequence",
    "un_partial_stated_room_stream": "un_partial_stated_room_stream_sequence",
    "thread_subscriptions": "thread_subscriptions_sequence",
    "sticky_events": "sticky_events_sequence",
    "profile_updates": "profile_updates_sequence",
}


def align_sequences(args: dict[str, Any]) -> dict[str, int]:
    """Move each stream's sequence up to the stream's position in ``stream_positions``.

    synapse_port_db restarts a sequence after the largest id left in the stream's tables,
    but SQLite's ``stream_positions`` (ported as it is) may be further on: delivered
    to-device messages are deleted, so ``to_device`` is ahead of ``device_inbox``.
    Synapse then refuses to start ("Postgres sequence 'device_inbox_sequence' is
    inconsistent with associated stream position"), and a sequence moved back would
    hand out ids that clients' sync tokens have already passed. The sequences moved."""
    conn = _pg_connect(args)
    moved: dict[str, int] = {}
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()")
            have = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT stream_name, max(stream_id) FROM stream_positions GROUP BY 1")
            for stream, position in cur.fetchall():
                seq = STREAM_SEQUENCES.get(stream)
                if seq is None or seq not in have or position is None:
                    continue
                cur.execute(f"SELECT last_value, is_called FROM {seq}")  # noqa: S608 - constants
                last, called = cur.fetchone()
                if not called or last < position:
                    cur.execute("SELECT setval(%s, %s)", (seq, max(int(position), int(last))))
                    moved[seq] = int(position)
    finally:
        conn.close()
    return moved


async def port_sqlite(
    scale: ScaleSynapse,
    sqlite_db: Path,
    *,
    progress: Progress,
    batch_size: int = 1000,
    then: Callable[[], Awaitable[None]] | None = None,
) -> PortReport:
    """Copy ``sqlite_db`` into ``scale``'s PostgreSQL (started here and stopped after) and
    check the key tables' row counts. Resumes a port that was interrupted. ``then`` runs
    after the check, while PostgreSQL still runs (the services' stores)."""
    began = time.monotonic()
    server_name = scale.server_name
    db_config = scale.postgres.database_config()
    source = sqlite_counts(sqlite_db)
    src_server = sqlite_server_name(sqlite_db)
    if src_server is not None and src_server != server_name:
        raise PlatformError(
            f"{sqlite_db} holds the users of {src_server}, but homeserver.server_name is "
            f"{server_name}: set it back to {src_server} before migrating"
        )
    progress(f"starting PostgreSQL ({scale.postgres.where})")
    await scale.postgres.start()
    try:
        counts, servers, resumed = await asyncio.to_thread(postgres_state, db_config["args"])
        others = servers - {server_name}
        if others:
            raise PlatformError(
                f"the PostgreSQL database at {scale.postgres.where} already holds another "
                f"server's data ({', '.join(sorted(others))}): refusing to port {server_name} "
                "into it; give the scale profile an empty database"
            )
        if counts.get("events") and not resumed:
            raise PlatformError(
                f"the PostgreSQL database at {scale.postgres.where} already holds "
                f"{counts['events']} events of {server_name} that were not ported from "
                f"{sqlite_db}: refusing to mix them; give the scale profile an empty database"
            )
        if resumed:
            progress("resuming an interrupted port (synapse_port_db continues where it stopped)")
        config_path = scale.directory / "port_db.yaml"
        atomic_write(
            config_path,
            yaml.safe_dump(
                {
                    "server_name": server_name,
                    "report_stats": False,
                    "signing_key_path": str(scale.directory / "signing.key"),
                    "media_store_path": str(scale.media_store_path),
                    "database": db_config,
                }
            ),
        )
        try:
            await _run_port_db(sqlite_db, config_path, batch_size, progress)
        finally:
            with contextlib.suppress(FileNotFoundError):
                config_path.unlink()
        progress("checking row counts of the key tables")
        after, _, _ = await asyncio.to_thread(postgres_state, db_config["args"])
        short = {t: (n, after.get(t, 0)) for t, n in source.items() if after.get(t, 0) < n}
        if short:
            detail = ", ".join(f"{t}: {a} of {n}" for t, (n, a) in short.items())
            raise PlatformError(
                f"the port is incomplete ({detail} rows in PostgreSQL): the profile was not "
                "switched; run the migration again"
            )
        progress(
            "row counts match: "
            + ", ".join(f"{t} {source[t]}" for t in ("users", "rooms", "events") if t in source)
        )
        for seq, position in (await asyncio.to_thread(align_sequences, db_config["args"])).items():
            progress(f"moved the sequence {seq} up to its stream's position {position}")
        if then is not None:
            await then()
        return PortReport(counts=source, seconds=time.monotonic() - began)
    finally:
        await scale.postgres.stop()


async def _run_port_db(sqlite_db: Path, config_path: Path, batch: int, progress: Progress) -> None:
    argv = [
        sys.executable,
        "-m",
        "synapse._scripts.synapse_port_db",
        "--sqlite-database",
        str(sqlite_db),
        "--postgres-config",
        str(config_path),
        "--batch-size",
        str(batch),
    ]
    progress("porting with synapse_port_db")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_die_with_parent,  # killed with us: never a port running on unattended
    )
    assert proc.stdout is not None
    lines: list[str] = []
    last = 0.0
    async for raw in proc.stdout:
        line = raw.decode("utf8", "replace").rstrip()
        lines.append(line)
        # synapse_port_db prints a line per batch: show one every 2 s, and its states.
        now = time.monotonic()
        if line.endswith("...") or now - last > 2:
            progress(f"  {line}")
            last = now
    rc = await proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-30:])
        raise PlatformError(f"synapse_port_db failed (exit {rc}):\n{tail}")


def retire_sqlite(sqlite_db: Path) -> Path:
    """Rename the ported SQLite database (and its -wal/-shm) to ``*.migrated``. Idempotent."""
    target = migrated_path(sqlite_db)
    for suffix in ("", "-wal", "-shm"):
        src = sqlite_db.with_name(sqlite_db.name + suffix)
        if src.exists():
            os.replace(src, target.with_name(target.name + suffix))
    return target


__all__ = [
    "KEY_TABLES",
    "PortReport",
    "finish_background_updates",
    "migrated_path",
    "port_sqlite",
    "postgres_state",
    "retire_sqlite",
    "sqlite_counts",
]
