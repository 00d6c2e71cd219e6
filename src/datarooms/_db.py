"""The one store interface of the services' stores: a SQLite file or a PostgreSQL schema.

The rooms bot's store, the automation service's hooks and webhook outbox write one SQL
dialect, the common part of SQLite's and PostgreSQL's: ``?`` parameters, ``ON CONFLICT``
upserts, ``RETURNING``. :func:`open_database` runs it on either:

* :class:`SqliteDatabase`: one private file (``0600``, WAL), as on a laptop;
* :class:`PostgresDatabase`: one schema (named after the store) of a PostgreSQL database,
  for the scale profile (docs/scaling.md). ``?`` becomes ``%s``; in the migrations'
  DDL ``INTEGER PRIMARY KEY AUTOINCREMENT`` becomes ``BIGSERIAL PRIMARY KEY``,
  ``INTEGER`` ``BIGINT``, ``REAL`` ``DOUBLE PRECISION`` and ``BLOB`` ``BYTEA``.

Both: autocommit outside :meth:`Database.transaction`; a transaction is all or nothing
and on disk when it returns (SQLite ``synchronous=FULL``, PostgreSQL's own commit);
schema migrations are numbered and each runs once, in a transaction (several processes
may open the same store: PostgreSQL takes an advisory lock, SQLite its write lock).

Values a store marks as secret or as contents (a webhook's secret, its payload) go
through :meth:`Database.seal` before they are written: on PostgreSQL, a server that may
be another machine's and whose dumps travel, they are encrypted (AES-256-GCM, the store
name and column as associated data) with a key kept in the data dir
(``services/store.key``, ``0600``), so the database holds ciphertext; in a SQLite file
of the data dir they are kept as they are (the file is as private as the key would be).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from datarooms import _sqlite
from datarooms._fs import PRIVATE_FILE, private_dir
from datarooms.errors import ConfigError, DataroomsError

Backend = Literal["sqlite", "postgres"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_SEALED = "dr-sealed:v1:"


class StoreUnavailableError(DataroomsError):
    """The store's database cannot be reached (PostgreSQL down, wrong URL)."""

    errcode = "DR_STORE_UNAVAILABLE"
    http_status = 503


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database:
    """A store's database. Not for concurrent use from several threads: stores lock."""

    backend: Backend
    #: The store's name: the PostgreSQL schema, the sealing context.
    name: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """All of the block or none of it; committed (durably) when the block returns."""
        raise NotImplementedError
        yield self  # pragma: no cover

    def migrate(self, migrations: Sequence[str]) -> None:
        """Apply ``migrations[version:]``, each once and in its own transaction."""
        raise NotImplementedError

    def tables(self) -> list[str]:
        """The store's tables (its own, not the version bookkeeping)."""
        raise NotImplementedError

    def seal(self, value: str, column: str) -> str:
        """``value`` as it may be written to this database (see the module docstring)."""
        return value

    def unseal(self, value: str, column: str) -> str:
        """The value :meth:`seal` was given."""
        return value

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteDatabase(Database):
    """A private SQLite file (:func:`datarooms._sqlite.connect`), WAL, autocommit."""

    backend: Backend = "sqlite"

    def __init__(
        self,
        path: Path | str,
        name: str,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        foreign_keys: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self._db = _sqlite.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=10000")
        if foreign_keys:
            self._db.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        with _sqlite.transaction(self._db):
            yield self

    def migrate(self, migrations: Sequence[str]) -> None:
        _sqlite.migrate(self._db, migrations)

    def tables(self) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()


def _pg_sql(sql: str) -> str:
    """SQLite's ``?`` parameters as psycopg2's ``%s`` (a literal ``%`` doubled)."""
    out = []
    for i, part in enumerate(re.split(r"('(?:[^']|'')*')", sql.replace("%", "%%"))):
        out.append(part if i % 2 else part.replace("?", "%s"))
    return "".join(out)


_DDL = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.I), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
]


def _pg_ddl(sql: str) -> str:
    for pattern, replacement in _DDL:
        sql = pattern.sub(replacement, sql)
    return sql


class PostgresDatabase(Database):
    """One schema (the store's name) of a PostgreSQL database, through psycopg2."""

    backend: Backend = "postgres"

    def __init__(self, connect_args: dict[str, Any], name: str, key: bytes) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bad store name {name!r}")
        self.name = name
        self._args = {k: v for k, v in connect_args.items() if not k.startswith("cp_")}
        self._key = key
        self._in_tx = False
        self._lock = threading.RLock()
        self._conn: Any = None
        self._connect()

    # -- the connection ------------------------------------------------------------

    def _connect(self) -> None:
        import psycopg2
        import psycopg2.extensions

        try:
            conn = psycopg2.connect(connect_timeout=10, **self._args)
        except psycopg2.OperationalError as exc:
            where = self._args.get("host", "?")
            raise StoreUnavailableError(
                f"cannot reach the services' PostgreSQL at {where} "
                f"(store {self.name}): {str(exc).strip().splitlines()[0]}; the scale "
                "profile's private cluster runs while `datarooms up` does"
            ) from None
        conn.autocommit = True
        # bytea as bytes (not memoryview), sum()/numeric as int or float, like SQLite.
        bytea = psycopg2.extensions.new_type(
            (17,), "DR_BYTEA", lambda v, cur: None if v is None else bytes(psycopg2.BINARY(v, cur))
        )
        numeric = psycopg2.extensions.new_type((1700,), "DR_NUMERIC", _numeric)
        psycopg2.extensions.register_type(bytea, conn)
        psycopg2.extensions.register_type(numeric, conn)
        with conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.name}"')
            cur.execute(f'SET search_path TO "{self.name}"')
        self._conn = conn

    def _cursor(self) -> Any:
        if self._conn is None or self._conn.closed:
            if self._in_tx:
                raise StoreUnavailableError(
                    f"the connection to PostgreSQL was lost mid-transaction (store {self.name})"
                )
            self._connect()
        return self._conn.cursor()

    def _run(self, fn: Any) -> Any:
        """Run ``fn(cursor)``; outside a transaction, once more on a fresh connection if the
        server dropped this one (a restarted PostgreSQL)."""
        import psycopg2

        with self._lock:
            try:
                return fn(self._cursor())
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if self._in_tx or (self._conn is not None and not self._conn.closed):
                    raise
                self._connect()
                return fn(self._cursor())

    # -- Database --------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        def go(cur: Any) -> Cursor:
            cur.execute(_pg_sql(sql), tuple(params))
            return _PgCursor(cur)

        result: Cursor = self._run(go)
        return result

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        self._run(lambda cur: cur.executemany(_pg_sql(sql), rows))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        with self._lock:
            if self._in_tx:
                raise RuntimeError("nested transaction")
            self.execute("BEGIN")
            self._in_tx = True
            try:
                yield self
            except BaseException:
                self._in_tx = False
                if not self._conn.closed:
                    self._conn.cursor().execute("ROLLBACK")
                raise
            self._in_tx = False
            self._conn.cursor().execute("COMMIT")

    def migrate(self, migrations: Sequence[str]) -> None:
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"datarooms.{self.name}",))
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            row = self.execute("SELECT version FROM schema_version").fetchone()
            version = int(row[0]) if row else 0
            if row is None:
                self.execute("INSERT INTO schema_version VALUES (0)")
            for number, script in enumerate(migrations[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        self._run(lambda cur, s=statement: cur.execute(_pg_ddl(s)))
                self.execute("UPDATE schema_version SET version = ?", (number,))

    def tables(self) -> list[str]:
        rows = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?"
            " AND table_name <> 'schema_version' ORDER BY table_name",
            (self.name,),
        )
        return [str(r[0]) for r in rows]

    def seal(self, value: str, column: str) -> str:
        if not value:
            return value  # nothing to hide ("no secret" is not one)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        box = AESGCM(self._key).encrypt(nonce, value.encode(), f"{self.name}.{column}".encode())
        return _SEALED + base64.b64encode(nonce + box).decode()

    def unseal(self, value: str, column: str) -> str:
        if not value.startswith(_SEALED):
            return value
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        raw = base64.b64decode(value[len(_SEALED) :])
        try:
            plain = AESGCM(self._key).decrypt(raw[:12], raw[12:], f"{self.name}.{column}".encode())
        except InvalidTag:
            raise ConfigError(
                f"a sealed value of the store {self.name} does not open with this data dir's "
                "services/store.key: the database belongs to another data dir, or the key "
                "was replaced (restore it from the backup)"
            ) from None
        return plain.decode()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                self._conn.close()


class _PgCursor:
    """A psycopg2 cursor that, like sqlite3's, yields nothing after a statement without rows."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self.rowcount: int = cur.rowcount
        self.description = cur.description

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall()) if self._cur.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _numeric(value: str | None, _cur: Any) -> int | float | None:
    if value is None:
        return None
    return int(value) if re.fullmatch(r"-?\d+", value) else float(value)


def store_key(path: Path) -> bytes:
    """The 32-byte sealing key at ``path``, made (``0600``) on first use."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        key = path.read_bytes()
    if len(key) != 32:
        raise ConfigError(f"{path} is not a store key (32 bytes): restore it from the backup")
    return key


@dataclass(frozen=True)
class StoreTarget:
    """Where a data dir's service stores live: SQLite files, or one PostgreSQL database."""

    backend: Backend = "sqlite"
    #: psycopg2 connection arguments (PostgreSQL).
    connect_args: dict[str, Any] = field(default_factory=dict)
    #: The sealing key's file (PostgreSQL).
    key_path: Path | None = None
    #: Where, for messages: "<socket dir> (port N)/datarooms" or "host:port/db".
    where: str = ""

    def open(
        self,
        name: str,
        sqlite_path: Path,
        migrations: Sequence[str],
        **sqlite_options: Any,
    ) -> Database:
        """The store ``name`` (its file ``sqlite_path`` on SQLite), migrated."""
        db: Database
        if self.backend == "postgres":
            assert self.key_path is not None
            db = PostgresDatabase(self.connect_args, name, store_key(self.key_path))
        else:
            db = SqliteDatabase(sqlite_path, name, **sqlite_options)
        try:
            db.migrate(migrations)
        except BaseException:
            db.close()
            raise
        return db


SQLITE = StoreTarget()


def copy_store(source: Database, target: Database, sealed: Mapping[str, Sequence[str]]) -> int:
    """Copy every row of ``source``'s tables into ``target`` (the same migrations applied
    to both), replacing what ``target`` held, in one transaction; ``sealed`` names the
    columns of each table that go through :meth:`Database.seal`. Tables only the source
    has (bookkeeping of older versions) are left out. The rows copied."""
    copied = 0
    with target.transaction():
        keep = set(target.tables())
        for table in [t for t in source.tables() if t in keep]:
            cur = source.execute(f"SELECT * FROM {table}")  # noqa: S608 - the store's own tables
            rows = cur.fetchall()
            columns = [d[0] for d in _description(cur)]
            target.execute(f"DELETE FROM {table}")  # noqa: S608
            if not rows:
                continue
            secret = {columns.index(c) for c in sealed.get(table, ()) if c in columns}
            out = [
                tuple(
                    target.seal(source.unseal(v, c), c) if i in secret and v is not None else v
                    for i, (c, v) in enumerate(zip(columns, row, strict=True))
                )
                for row in rows
            ]
            marks = ", ".join("?" * len(columns))
            target.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
                out,
            )
            copied += len(rows)
        if isinstance(target, PostgresDatabase):
            # Serial columns continue after the copied ids.
            for table, column in _serials(target):
                top = f"SELECT coalesce(max({column}), 0) + 1 FROM {table}"  # noqa: S608 - its own
                target.execute(
                    f"SELECT setval(pg_get_serial_sequence(?, ?), ({top}), false)",
                    (f"{target.name}.{table}", column),
                )
    return copied


def _description(cur: Cursor) -> Sequence[Any]:
    return cur.description or ()


def _serials(db: PostgresDatabase) -> list[tuple[str, str]]:
    rows = db.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = ?"
        " AND column_default LIKE 'nextval(%'",
        (db.name,),
    )
    return [(str(t), str(c)) for t, c in rows]


__all__ = [
    "SQLITE",
    "Cursor",
    "Database",
    "PostgresDatabase",
    "SqliteDatabase",
    "StoreTarget",
    "StoreUnavailableError",
    "copy_store",
    "store_key",
]
