"""Backup and restore of a whole platform: one encrypted archive of its data dir.

``datarooms backup`` writes everything a platform needs to come back on another
machine: the homeserver's database and media, its signing key and secrets, every
device store (sessions, crypto stores, local indexes), the bots' stores, the
devchain, the local CA, the config and the credentials. It works while the
platform runs: each SQLite database is copied with SQLite's online backup API (a
consistent snapshot, whoever writes meanwhile); other files are copied as they
are. What is not data stays out: ``run/`` (sockets, pids, state of this run),
lock files, SQLite's ``-wal``/``-shm``/``-journal`` side files (the snapshot holds
their content) and logs.

With the scale profile Synapse and our services keep their data in PostgreSQL: the
archive then holds a ``pg_dump -Fc`` of each of the private cluster's databases
(``synapse``, ``datarooms``) instead of the cluster's raw files, which a running server
keeps changing (``data/synapse/postgres.dump/<db>.pgdump``). A stopped platform's cluster
is started for the dump (under the platform's lock) and stopped after. ``restore``
brings them back into a new cluster (``pg_restore``, one transaction each). A
PostgreSQL you run (``postgres_url``, ``services_postgres_url``) is yours to back up:
the report says so.

The archive is a tar stream encrypted with age (pyrage, the bindings of rage),
streamed: nothing but a SQLite snapshot (or the PostgreSQL dumps) at a time touches
the disk in clear, inside ``run/`` (mode 0700).

- ``--recipient age1...`` (one or more): a standard age file; decrypt it with
  ``age -d -i key.txt`` (or ``rage``) anywhere.
- ``--passphrase-stdin``: age encrypts a large stream to a passphrase only in
  memory, so the archive is encrypted to a fresh X25519 identity and that
  identity, encrypted with the passphrase (age's scrypt), goes in front:
  ``DRBACKUP1\\n``, 8 bytes big-endian length, the passphrase-encrypted identity,
  then the age stream.

Inside, ``data/...`` holds the files and ``MANIFEST.json`` (last) their sizes and
SHA-256. ``datarooms restore`` extracts into a new directory beside the target,
checks every file against the manifest, and only then moves it into place: an
interrupted or tampered restore leaves nothing half-written. It refuses a target
that a platform runs on, or that is not empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from datarooms._fs import ProcessLock, private_dir
from datarooms.config import Settings
from datarooms.errors import DataroomsError, ValidationError

MAGIC = b"DRBACKUP1\n"
AGE_MAGIC = b"age-encryption.org/v1"
FORMAT = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".lock", ".log", ".sock")
#: The passphrase-encrypted identity in front of a passphrase archive is small.
_MAX_WRAPPED = 4096


class BackupError(DataroomsError):
    errcode = "DR_BACKUP"


@dataclass
class BackupReport:
    path: Path
    files: int = 0
    bytes: int = 0
    databases: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    #: What the archive does not hold and why (a PostgreSQL you run).
    notes: list[str] = field(default_factory=list)


@dataclass
class RestoreReport:
    data_dir: Path
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: Databases brought back into PostgreSQL (the scale profile).
    databases: list[str] = field(default_factory=list)


#: Where a scale platform's PostgreSQL dumps go in the archive (under ``data/``).
PG_DUMPS = PurePosixPath("synapse", "postgres.dump")
#: The private cluster's own files (``synapse/postgres``): never copied raw.
PG_CLUSTER = PurePosixPath("synapse", "postgres")


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def _members(data_dir: Path, skip: tuple[PurePosixPath, ...] = ()) -> Iterator[tuple[Path, str]]:
    """Every file of the data dir that is data: (path, name in the archive)."""
    for root, dirs, files in os.walk(data_dir):
        rel_root = Path(root).relative_to(data_dir)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d != "run"]
        dirs[:] = [d for d in dirs if PurePosixPath(*rel_root.parts, d) not in skip]
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if name.endswith(_SKIP_SUFFIXES) or path.is_symlink() or not path.is_file():
                continue
            yield path, str(PurePosixPath("data", *rel_root.parts, name))


def _sqlite_snapshot(path: Path, into: Path) -> None:
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(into)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


class _Hashing(io.RawIOBase):
    """Reads a file, counting and hashing what passes."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._fh.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        return n


def _write_tar(
    data_dir: Path,
    out: IO[bytes],
    report: BackupReport,
    progress: Callable[[str], None],
    dumps: list[tuple[Path, str]] | None = None,
) -> None:
    manifest: dict[str, Any] = {"format": FORMAT, "created": time.time(), "files": {}}
    skip = (PG_CLUSTER, PG_DUMPS) if dumps else (PG_DUMPS,)
    with tempfile.TemporaryDirectory(dir=data_dir / "run", prefix="backup-") as tmp:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path, name in [*_members(data_dir, skip), *(dumps or [])]:
                source = path
                if _is_sqlite(path):
                    source = Path(tmp) / "snapshot.db"
                    with contextlib.suppress(FileNotFoundError):
                        source.unlink()
                    _sqlite_snapshot(path, source)
                    report.databases += 1
                try:
                    info = tar.gettarinfo(str(source), arcname=name)
                    info.mode = 0o600
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with source.open("rb") as fh:
                        hashing = _Hashing(fh)
                        tar.addfile(info, hashing)
                except FileNotFoundError:  # gone since the walk (a rotated file)
                    report.skipped.append(name)
                    continue
                manifest["files"][name] = {"size": info.size, "sha256": hashing.sha.hexdigest()}
                report.files += 1
                report.bytes += info.size
                progress(name)
            body = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo("MANIFEST.json")
            info.size = len(body)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(body))


def _recipients(recipients: list[str]) -> list[Any]:
    from pyrage import x25519

    out = []
    for r in recipients:
        try:
            out.append(x25519.Recipient.from_str(r.strip()))
        except Exception:  # pyrage raises its own RecipientError
            raise ValidationError(
                f"not an age recipient: {r!r} (an X25519 public key, age1...)"
            ) from None
    return out


def backup(
    settings: Settings,
    out_path: Path,
    *,
    recipients: list[str] | None = None,
    passphrase: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BackupReport:
    """Write an encrypted archive of the platform's data dir to ``out_path``."""
    import pyrage
    from pyrage import passphrase as age_passphrase
    from pyrage import x25519

    if bool(recipients) == bool(passphrase):
        raise ValidationError("give the archive's recipients (age1...) or a passphrase, not both")
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        raise BackupError(f"there is no platform in {data_dir}")
    out_path = out_path.resolve()
    if out_path.is_relative_to(data_dir.resolve()):
        raise ValidationError("write the backup outside the data directory it backs up")
    if out_path.exists():
        raise ValidationError(
            f"{out_path} exists: choose a new file (backups are never overwritten)"
        )
    private_dir(data_dir / "run")
    report = BackupReport(out_path)
    began = time.monotonic()
    say = progress or (lambda _name: None)
    wrapped = b""
    if passphrase:
        identity = x25519.Identity.generate()
        wrapped = age_passphrase.encrypt(str(identity).encode(), passphrase)
        keys = [identity.to_public()]
    else:
        keys = _recipients(recipients or [])
    partial = out_path.with_name(out_path.name + ".partial")
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    dump_dir = Path(tempfile.mkdtemp(dir=data_dir / "run", prefix="pgdump-"))

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe:
                _write_tar(data_dir, pipe, report, say, dumps)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    try:
        dumps = _postgres_dumps(settings, dump_dir, report, say)
    except BaseException:
        shutil.rmtree(dump_dir, ignore_errors=True)
        os.close(read_fd)
        os.close(write_fd)
        raise
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            if wrapped:
                out.write(MAGIC + len(wrapped).to_bytes(8, "big") + wrapped)
            producer = threading.Thread(target=produce, name="backup-tar", daemon=True)
            producer.start()
            with os.fdopen(read_fd, "rb") as pipe:
                pyrage.encrypt_io(pipe, out, keys)
            producer.join()
            if failure:
                raise failure[0]
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    finally:
        shutil.rmtree(dump_dir, ignore_errors=True)
    report.seconds = time.monotonic() - began
    return report


def _postgres_dumps(
    settings: Settings, into: Path, report: BackupReport, say: Callable[[str], None]
) -> list[tuple[Path, str]]:
    """The scale profile's PostgreSQL databases dumped into ``into``: (file, archive name)."""
    hs = settings.homeserver
    if hs.profile != "scale":
        return []
    from datarooms.homeserver.postgres import DATABASE, SERVICES_DATABASE, PostgresCluster
    from datarooms.homeserver.scale import scale_homeserver
    from datarooms.services.platform import PlatformLock

    pg = scale_homeserver(settings).postgres
    if not isinstance(pg, PostgresCluster):
        report.notes.append(
            f"Synapse's PostgreSQL at {pg.where} is yours: back it up with pg_dump "
            "(docs/scaling.md, Backup)"
        )
        return []
    databases = [DATABASE]
    if hs.services_postgres_url:
        report.notes.append(
            "the services' PostgreSQL (homeserver.services_postgres_url) is yours: "
            "back it up with pg_dump"
        )
    else:
        databases.append(SERVICES_DATABASE)
    lock = PlatformLock(settings.run_dir / "up.lock")
    stopped = ProcessLock.holder(lock.path) is None
    if stopped:
        lock.acquire()  # no `datarooms up` while we run its PostgreSQL
    try:
        if stopped:
            say("starting the platform's PostgreSQL for the dump")
            asyncio.run(pg.start())
        out = []
        for db in databases:
            path = into / f"{db}.pgdump"
            pg.dump(db, path)
            out.append((path, str(PurePosixPath("data", PG_DUMPS, path.name))))
            report.databases += 1
            say(f"dumped the PostgreSQL database {db}")
        return out
    finally:
        if stopped:
            asyncio.run(pg.stop())
            lock.release()


def _restore_postgres(data_dir: Path, report: RestoreReport) -> None:
    """A restored scale platform's dumps back into a new private cluster."""
    dumps = data_dir / PG_DUMPS
    if not dumps.is_dir():
        return
    from datarooms.config import load_settings
    from datarooms.homeserver.postgres import (
        DATABASE,
        ROLE,
        SERVICES_DATABASE,
        SERVICES_ROLE,
        PostgresCluster,
    )
    from datarooms.homeserver.scale import scale_homeserver

    pg = scale_homeserver(load_settings(data_dir=data_dir)).postgres
    if not isinstance(pg, PostgresCluster):
        raise BackupError(
            f"the backup holds PostgreSQL dumps ({dumps}) but the restored config names a "
            "PostgreSQL you run: load them with pg_restore"
        )
    if (pg.location / "data" / "PG_VERSION").exists():
        raise BackupError(
            f"a PostgreSQL cluster for {data_dir} already exists in {pg.location}: remove it, "
            f"or load {dumps} with pg_restore yourself"
        )
    roles = {DATABASE: ROLE, SERVICES_DATABASE: SERVICES_ROLE}
    asyncio.run(pg.start())
    try:
        for db, role in roles.items():
            dump = dumps / f"{db}.pgdump"
            if dump.exists():
                pg.load_dump(db, role, dump)
                report.databases.append(db)
    finally:
        asyncio.run(pg.stop())
    shutil.rmtree(dumps)


def _decrypt_to(
    archive: Path, out: IO[bytes], identities: list[str] | None, passphrase: str | None
) -> None:
    import pyrage
    from pyrage import passphrase as age_passphrase
    from pyrage import x25519

    with archive.open("rb") as fh:
        head = fh.read(len(MAGIC))
        keys: list[Any] = []
        if head == MAGIC:
            if not passphrase:
                raise ValidationError("this backup is encrypted with a passphrase: give it")
            size = int.from_bytes(fh.read(8), "big")
            if not 0 < size <= _MAX_WRAPPED:
                raise BackupError(f"{archive} is damaged (its key block says {size} bytes)")
            try:
                identity = age_passphrase.decrypt(fh.read(size), passphrase).decode()
            except Exception:
                raise BackupError("wrong passphrase (or a damaged backup)") from None
            keys = [x25519.Identity.from_str(identity)]
        elif head + fh.read(len(AGE_MAGIC) - len(head)) == AGE_MAGIC:
            fh.seek(0)
            if not identities:
                raise ValidationError(
                    "this backup is encrypted to age recipients: give an identity"
                )
            for text in identities:
                for line in text.splitlines():
                    line = line.strip()
                    if line and not line.startswith("#"):
                        try:
                            keys.append(x25519.Identity.from_str(line))
                        except Exception:
                            raise ValidationError(
                                "not an age identity (AGE-SECRET-KEY-1...)"
                            ) from None
        else:
            raise BackupError(f"{archive} is not a datarooms backup")
        try:
            pyrage.decrypt_io(fh, out, keys)
        except Exception as exc:
            raise BackupError(f"cannot decrypt {archive}: {exc}") from None


def _safe_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != "data":
        raise BackupError(f"the backup holds a path outside the data dir: {name!r}")
    return p


def _extract(pipe: IO[bytes], into: Path, report: RestoreReport) -> dict[str, Any]:
    seen: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    with tarfile.open(fileobj=pipe, mode="r|") as tar:
        for member in tar:
            if member.name == "MANIFEST.json" and member.isfile():
                raw = tar.extractfile(member)
                assert raw is not None
                manifest = json.loads(raw.read())
                continue
            if not member.isfile():
                raise BackupError(f"the backup holds something that is not a file: {member.name!r}")
            rel = _safe_name(member.name)
            target = into.joinpath(*rel.parts[1:])
            private_dir(target.parent)
            src = tar.extractfile(member)
            assert src is not None
            sha = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as dst:
                while chunk := src.read(1 << 20):
                    sha.update(chunk)
                    dst.write(chunk)
            seen[member.name] = {"size": member.size, "sha256": sha.hexdigest()}
            report.files += 1
            report.bytes += member.size
    if manifest is None or manifest.get("format") != FORMAT:
        raise BackupError("the backup has no manifest (it was cut short or is not ours)")
    if seen != manifest.get("files"):
        missing = sorted(set(manifest.get("files", {})) - set(seen))
        changed = sorted(n for n in seen if manifest.get("files", {}).get(n) != seen[n])
        raise BackupError(
            "the backup does not match its manifest: "
            + "; ".join(
                x
                for x in (
                    f"missing {', '.join(missing[:5])}" if missing else "",
                    f"altered {', '.join(changed[:5])}" if changed else "",
                )
                if x
            )
        )
    return manifest


def restore(
    archive: Path,
    data_dir: Path,
    *,
    identities: list[str] | None = None,
    passphrase: str | None = None,
) -> RestoreReport:
    """Bring a platform back from ``archive`` into ``data_dir`` (new or empty)."""
    if not archive.is_file():
        raise ValidationError(f"no backup at {archive}")
    data_dir = data_dir.resolve()
    lock_file = data_dir / "run" / "up.lock"
    if lock_file.exists() and ProcessLock.holder(lock_file) is not None:
        raise BackupError(
            f"datarooms is running on {data_dir}: stop it (datarooms down) and restore into "
            "a new or empty directory"
        )
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty: restore into a new or empty directory")
    parent = data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{data_dir.name}.restoring-"))
    os.chmod(staging, 0o700)
    report = RestoreReport(data_dir)
    began = time.monotonic()
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                _extract(pipe, staging, report)
        except BaseException as exc:
            failure.append(exc)

    consumer = threading.Thread(target=consume, name="restore-tar", daemon=True)
    consumer.start()
    try:
        try:
            with os.fdopen(write_fd, "wb") as pipe:
                _decrypt_to(archive, pipe, identities, passphrase)
        except BaseException:
            consumer.join()
            # The reader refused what it read (a path, the manifest): that is the
            # reason, the writer's broken pipe only its consequence.
            if failure and isinstance(failure[0], BackupError):
                raise failure[0] from None
            raise
        consumer.join()
        if failure:
            exc = failure[0]
            if isinstance(exc, tarfile.TarError):
                raise BackupError(f"the backup is damaged: {exc}") from None
            raise exc
        if data_dir.exists():
            data_dir.rmdir()  # empty (checked above)
        os.replace(staging, data_dir)
    except BaseException:
        consumer.join(timeout=5)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        _restore_postgres(data_dir, report)
    except Exception as exc:
        message = exc.message if isinstance(exc, DataroomsError) else str(exc)
        raise BackupError(
            f"the files are restored into {data_dir}, but not PostgreSQL's databases: {message}"
        ) from None
    report.seconds = time.monotonic() - began
    return report


__all__ = ["BackupError", "BackupReport", "RestoreReport", "backup", "restore"]
