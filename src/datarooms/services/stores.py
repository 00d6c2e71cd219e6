"""Where our services keep their stores: SQLite files in the data dir, or PostgreSQL.

The embedded profile keeps each store in its file (``roomsbot/store.db``,
``automation/hooks.db``, ``automation/outbox.db``, the MCP audit log's
``logs/mcp-audit.jsonl``). The scale profile (``[homeserver] profile = "scale"``) puts
them into PostgreSQL, one schema each (``roomsbot``, ``automation``, ``mcp``):

* ``[homeserver] services_postgres_url`` when set;
* else ``postgres_url``'s database when Synapse runs on a server you run;
* else the private cluster's database ``datarooms`` (its own role, apart from Synapse's).

The device stores (the SDK's local index, crypto store, telemetry outbox) stay SQLite
files: they are each device's private data. Secrets and contents in these stores are
sealed before they reach PostgreSQL (datarooms._db, key ``services/store.key``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datarooms._db import SQLITE, StoreTarget
from datarooms.config import Settings
from datarooms.homeserver.postgres import ExternalPostgres, PostgresCluster


def key_path(settings: Settings) -> Path:
    """The sealing key of the services' PostgreSQL stores (back it up with the data dir)."""
    return settings.data_dir / "services" / "store.key"


def store_target(settings: Settings, homeserver: Any = None) -> StoreTarget:
    """Where the services of ``settings`` keep their stores. ``homeserver``: the running
    scale homeserver (its PostgreSQL), else it is found from the settings as
    ``datarooms up`` makes it."""
    hs = settings.homeserver
    if hs.profile != "scale":
        return SQLITE
    postgres = getattr(homeserver, "postgres", None)
    if hs.services_postgres_url:
        postgres = ExternalPostgres(hs.services_postgres_url)
    elif not isinstance(postgres, PostgresCluster | ExternalPostgres):
        from datarooms.homeserver.scale import scale_homeserver

        postgres = scale_homeserver(settings).postgres
    return StoreTarget(
        "postgres",
        postgres.services_connect_args(),
        key_path(settings),
        postgres.services_where,
    )


@dataclass(frozen=True)
class ServiceStore:
    """One store of a service, as ``datarooms migrate-to-postgres`` moves it."""

    name: str
    sqlite_path: Path
    migrations: Sequence[str]
    sealed: Mapping[str, Sequence[str]]


def service_stores(settings: Settings) -> list[ServiceStore]:
    """Every store of our services that the scale profile keeps in PostgreSQL."""
    from datarooms.sdk.automation.forward import ForwardTargets
    from datarooms.sdk.automation.outbox import HookOutbox
    from datarooms.sdk.automation.registry import HookRegistry, registry_path
    from datarooms.services.roomsbot.service import store_path
    from datarooms.services.roomsbot.store import Store

    automation = settings.automation_dir
    return [
        ServiceStore(Store.NAME, store_path(settings), Store.MIGRATIONS, Store.SEALED),
        ServiceStore(
            HookRegistry.NAME, registry_path(settings), HookRegistry.MIGRATIONS, HookRegistry.SEALED
        ),
        ServiceStore(
            HookOutbox.NAME, automation / "outbox.db", HookOutbox.MIGRATIONS, HookOutbox.SEALED
        ),
        ServiceStore(
            ForwardTargets.NAME,
            automation / "forward.db",
            ForwardTargets.MIGRATIONS,
            ForwardTargets.SEALED,
        ),
    ]


def audit_file(settings: Settings) -> Path | None:
    """The MCP audit log's JSON-lines file (``[mcp] audit_log``), if it has one."""
    from datarooms.services.mcp.config import agents_file, load_agents

    return load_agents(agents_file(settings.data_dir), data_dir=settings.data_dir).mcp.audit_log


def copy_stores_to_postgres(
    settings: Settings, target: StoreTarget, progress: Callable[[str], None]
) -> dict[str, int]:
    """Copy every service store that has a SQLite file (and the MCP audit file) into
    ``target``, each replacing what its schema held: run again, it copies again. The
    rows copied, by store. The files are left as they are (see :func:`retire_stores`)."""
    from datarooms._db import SqliteDatabase, copy_store
    from datarooms.services.mcp.audit import AUDIT_MIGRATIONS, AUDIT_STORE, import_audit_file
    from datarooms.services.roomsbot.store import adopt_meta_version

    copied: dict[str, int] = {}
    for store in service_stores(settings):
        if not store.sqlite_path.exists():
            continue
        adopt_meta_version(store.sqlite_path)
        source = SqliteDatabase(store.sqlite_path, store.name)
        try:
            source.migrate(store.migrations)
            with target.open(store.name, store.sqlite_path, store.migrations) as dest:
                copied[store.name] = copy_store(source, dest, store.sealed)
        finally:
            source.close()
        progress(f"copied the store {store.name}: {copied[store.name]} rows")
    audit = audit_file(settings)
    if audit is not None and audit.exists():
        with target.open(AUDIT_STORE, audit, AUDIT_MIGRATIONS) as dest:
            copied[AUDIT_STORE] = import_audit_file(audit, dest)
        progress(f"copied the MCP audit log: {copied[AUDIT_STORE]} records")
    return copied


def retire_stores(settings: Settings) -> list[Path]:
    """Rename each service store's SQLite file (and its -wal/-shm) to ``*.migrated``,
    once its rows are in PostgreSQL; the files renamed. Idempotent."""
    kept = []
    for store in service_stores(settings):
        path = store.sqlite_path
        for suffix in ("", "-wal", "-shm"):
            f = path.with_name(path.name + suffix)
            if f.exists():
                f.replace(f.with_name(f.name + ".migrated"))
                if not suffix:
                    kept.append(f.with_name(f.name + ".migrated"))
    return kept


__all__ = [
    "ServiceStore",
    "audit_file",
    "copy_stores_to_postgres",
    "key_path",
    "retire_stores",
    "service_stores",
    "store_target",
]
