"""`datarooms migrate-to-postgres`: an embedded platform's Synapse into the scale profile.

Steps, each safe to interrupt:

1. take the platform's lock (``run/up.lock``): refused while ``datarooms up`` runs, and
   no ``up`` can start while the port runs;
2. port ``synapse/homeserver.db`` into the scale profile's PostgreSQL with Synapse's
   ``synapse_port_db`` (homeserver/migrate.py: refuses another server's database,
   resumes an interrupted port, checks the key tables' row counts);
3. switch the config file to ``[homeserver] profile = "scale"`` (one atomic write: the
   commit point; before it the platform still starts embedded on its untouched SQLite);
   Before it, while PostgreSQL runs, our services' stores (the rooms bot's, the
   automation service's hooks, webhook outbox and forwards, the MCP audit log) are copied
   into the services' PostgreSQL (services/stores.py), each in one transaction that
   replaces what an interrupted run left;
4. rename ``homeserver.db`` and the services' SQLite files to ``*.migrated`` (kept for a
   rollback).

Run again after step 3, it says the platform is already migrated, finishes step 4 if an
interruption left it undone, and changes nothing else.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from datarooms._fs import atomic_write
from datarooms.config import CONFIG_FILE_NAME, Settings
from datarooms.errors import ConfigError, PlatformError
from datarooms.homeserver.embedded import EmbeddedSynapse
from datarooms.homeserver.migrate import (
    finish_background_updates,
    migrated_path,
    port_sqlite,
    retire_sqlite,
)
from datarooms.homeserver.scale import scale_homeserver
from datarooms.services.platform import PlatformLock
from datarooms.services.stores import copy_stores_to_postgres, retire_stores, store_target

Progress = Callable[[str], None]


@dataclass
class MigrationReport:
    #: False: it was already migrated, nothing was done.
    migrated: bool
    config_file: Path
    sqlite_kept: Path | None
    counts: dict[str, int]
    seconds: float = 0.0


def config_path(settings: Settings) -> Path:
    return settings.config_file or settings.data_dir / CONFIG_FILE_NAME


def with_scale_profile(text: str) -> str:
    """The TOML ``text`` with ``[homeserver] profile = "scale"`` (the rest kept as written)."""
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if re.match(r"\s*\[homeserver\]\s*(#.*)?$", ln)), None
    )
    if start is None:
        out = (
            text.rstrip("\n")
            + ("\n\n" if text.strip() else "")
            + '[homeserver]\nprofile = "scale"\n'
        )
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines)
        )
        for i in range(start + 1, end):
            if re.match(r"\s*profile\s*=", lines[i]):
                lines[i] = 'profile = "scale"'
                break
        else:
            lines.insert(start + 1, 'profile = "scale"')
        out = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - we started from valid TOML
        raise ConfigError(f"could not switch the profile in the config file: {exc}") from None
    if parsed.get("homeserver", {}).get("profile") != "scale":
        raise ConfigError("could not switch [homeserver] profile in the config file")
    return out


def _file_profile(path: Path) -> str:
    if not path.is_file():
        return "embedded"
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return str(data.get("homeserver", {}).get("profile", "embedded"))


async def migrate_to_postgres(settings: Settings, *, progress: Progress) -> MigrationReport:
    hs = settings.homeserver
    if hs.mode != "embedded":
        raise PlatformError(
            "homeserver.mode is 'external': datarooms does not manage that homeserver's "
            "database (port it with Synapse's synapse_port_db yourself)"
        )
    cfg = config_path(settings)
    db = settings.synapse_dir / "homeserver.db"
    lock = PlatformLock(settings.run_dir / "up.lock")
    lock.acquire()  # AlreadyRunningError while `datarooms up` runs
    try:
        if _file_profile(cfg) == "scale":
            kept = migrated_path(db)
            if db.exists() and kept.exists():
                raise PlatformError(
                    f"both {db} and {kept} exist: move one of them away before migrating"
                )
            if db.exists():
                # Interrupted after the switch: the port was complete and checked.
                kept = retire_sqlite(db)
                progress(f"finished an interrupted migration: kept the SQLite file as {kept}")
            for path in retire_stores(settings):
                progress(f"finished an interrupted migration: kept {path}")
            progress(f'already migrated: {cfg} says profile = "scale"; nothing to do')
            return MigrationReport(False, cfg, kept if kept.exists() else None, {})
        if not db.exists():
            raise PlatformError(
                f"no embedded homeserver database at {db}: start the platform once with "
                '`datarooms up`, or set [homeserver] profile = "scale" for a new one'
            )
        embedded = EmbeddedSynapse(
            settings.synapse_dir,
            server_name=hs.server_name,
            host=hs.host,
            port=hs.port,
            start_timeout=hs.start_timeout,
            extra_config={"background_updates": {"sleep_enabled": False}},
        )
        await finish_background_updates(embedded, db, progress=progress)
        scale = scale_homeserver(settings)
        scaled = replace(settings, homeserver=replace(hs, profile="scale"))

        async def copy_stores() -> None:
            target = store_target(scaled, scale)
            progress(f"copying the services' stores into PostgreSQL ({target.where})")
            await asyncio.to_thread(copy_stores_to_postgres, settings, target, progress)

        report = await port_sqlite(scale, db, progress=progress, then=copy_stores)
        progress(f'switching {cfg} to [homeserver] profile = "scale"')
        old = cfg.read_text() if cfg.is_file() else ""
        atomic_write(cfg, with_scale_profile(old))
        kept = retire_sqlite(db)
        progress(f"kept the SQLite database as {kept} (for a rollback)")
        for path in retire_stores(settings):
            progress(f"kept {path} (for a rollback)")
        return MigrationReport(True, cfg, kept, report.counts, report.seconds)
    finally:
        lock.release()


__all__ = ["MigrationReport", "migrate_to_postgres", "scale_homeserver", "with_scale_profile"]
