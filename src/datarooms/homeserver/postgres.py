"""PostgreSQL for the scale profile: a private cluster of the Debian package, or an external one.

The private cluster lives in ``<data_dir>/synapse/postgres`` (``initdb --locale=C
--encoding=UTF8``) and listens on a unix socket only (``listen_addresses = ''``), in a
directory only its owner can enter: the socket's permissions are the authentication
(``trust`` for local connections, nothing on TCP). The database is created as Synapse
requires: ``ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0``, owned by a
role ``synapse``.

PostgreSQL refuses to run as root. Started by root, the cluster runs as the ``postgres``
user the Debian package creates, in ``/var/lib/postgresql/datarooms/<id of the data
dir>`` (a private data dir is not reachable by another user); ``location`` says where.

An external server is a ``postgresql://user:password@host:port/database`` URL
(``homeserver.postgres_url``); its database must have been created as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from datarooms._fs import private_dir
from datarooms.errors import ConfigError, MissingDependencyError, PlatformError
from datarooms.homeserver._proc import Child

#: Synapse 1.163 refuses PostgreSQL older than 14.
MIN_VERSION = 14
DATABASE = "synapse"
ROLE = "synapse"
#: Our services' stores (datarooms._db), apart from Synapse's database and role.
SERVICES_DATABASE = "datarooms"
SERVICES_ROLE = "datarooms_services"
SUPERUSER = "datarooms"
_ROOT_HOME = Path("/var/lib/postgresql/datarooms")
_SOCKET_MAX = 100  # sun_path is 108 bytes, with ".s.PGSQL.<port>"


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` (Debian's layout), else where pg_ctl is."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (int(p.name), p / "bin")
        for p in (root.iterdir() if root.is_dir() else [])
        if p.name.isdigit() and (p / "bin" / "postgres").is_file()
    )
    if versions:
        return versions[-1][1]
    found = shutil.which("postgres") or shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise MissingDependencyError(
        "the scale profile needs PostgreSQL, which is not installed: install the Debian "
        "package with `sudo apt-get install -y postgresql` (binaries in "
        "/usr/lib/postgresql/<version>/bin), or set homeserver.postgres_url to a server you run"
    )


def server_version(bin_dir: Path) -> int:
    """The major version of the PostgreSQL binaries in ``bin_dir``."""
    import subprocess

    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    if not match:
        raise PlatformError(f"cannot tell the version of {bin_dir / 'postgres'}: {out!r}")
    return int(match.group(1))


class PostgresCluster:
    """A private PostgreSQL cluster, started and stopped with the platform."""

    def __init__(self, directory: Path, *, port: int = 5432, start_timeout: float = 60.0) -> None:
        self.directory = Path(directory).absolute()
        self.port = port
        self.start_timeout = start_timeout
        self._child: Child | None = None
        self._as_root = os.geteuid() == 0

    @property
    def user(self) -> str | None:
        """Who runs the cluster: ``postgres`` when we are root, else us."""
        return "postgres" if self._as_root else None

    @property
    def location(self) -> Path:
        if not self._as_root:
            return self.directory
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
        return _ROOT_HOME / digest

    @property
    def socket_dir(self) -> Path:
        return self.location / "run"

    @property
    def log_path(self) -> Path:
        return self.location / "postgres.log"

    @property
    def where(self) -> str:
        return f"{self.socket_dir} (port {self.port})"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    def database_config(self) -> dict[str, Any]:
        """Synapse's ``database`` section for this cluster."""
        return {
            "name": "psycopg2",
            "args": {
                "user": ROLE,
                "database": DATABASE,
                "host": str(self.socket_dir),
                "port": self.port,
                "cp_min": 2,
                "cp_max": 10,
            },
        }

    def dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} user={ROLE} dbname={DATABASE}"

    def services_connect_args(self) -> dict[str, Any]:
        """psycopg2 arguments for our services' database (``datarooms``, its own role)."""
        return {
            "user": SERVICES_ROLE,
            "database": SERVICES_DATABASE,
            "host": str(self.socket_dir),
            "port": self.port,
        }

    @property
    def services_where(self) -> str:
        return f"{self.where}/{SERVICES_DATABASE}"

    async def start(self) -> None:
        """initdb on first start, start the server, create the database. Idempotent."""
        if self.running:
            return
        bin_dir = postgres_bin_dir()
        version = server_version(bin_dir)
        if version < MIN_VERSION:
            raise PlatformError(
                f"PostgreSQL {version} in {bin_dir} is too old: Synapse needs {MIN_VERSION} or "
                "newer (install a newer postgresql package)"
            )
        if len(str(self.socket_dir)) + 16 > _SOCKET_MAX:
            raise PlatformError(
                f"the PostgreSQL socket directory {self.socket_dir} is too long for a unix "
                "socket: use a shorter data dir, or homeserver.postgres_url"
            )
        self._prepare_dirs()
        if not (self.location / "data" / "PG_VERSION").exists():
            await self._initdb(bin_dir)
        self._child = Child(
            "postgresql",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.location / "data"),
                "-k",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=",
                "-c",
                "unix_socket_permissions=0700",
                "-c",
                "max_connections=200",
            ],
            self.log_path,
            cwd=self.location,
            user=self.user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back, checkpoint, exit
        )
        self._child.spawn()
        try:
            await self._child.wait_ready(self._accepts, self.start_timeout, "PostgreSQL")
            await self._ensure_database(bin_dir)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop(timeout=30)
            self._child = None

    def dump(self, database: str, into: Path) -> None:
        """``pg_dump -Fc`` of ``database`` (a consistent snapshot while it is written) into
        the file ``into``. The cluster must be running."""
        import subprocess

        argv = [str(postgres_bin_dir() / "pg_dump"), "-Fc", *self._client_args(), "-f"]
        argv += [str(into), database]
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise PlatformError(f"pg_dump of {database} failed: {res.stderr.strip()[-2000:]}")

    def load_dump(self, database: str, role: str, dump: Path) -> None:
        """``pg_restore`` a :meth:`dump` into ``database`` (as made by :meth:`start`), its
        objects owned by ``role``, in one transaction: all of it or nothing."""
        import subprocess

        argv = [str(postgres_bin_dir() / "pg_restore"), *self._client_args(), "-d", database]
        argv += ["--no-owner", f"--role={role}", "--single-transaction", "--exit-on-error"]
        res = subprocess.run([*argv, str(dump)], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise PlatformError(f"pg_restore of {database} failed: {res.stderr.strip()[-2000:]}")

    def _client_args(self) -> list[str]:
        return ["-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER]

    def destroy(self) -> None:
        """Remove the cluster's files (tests): only a stopped cluster."""
        assert not self.running
        shutil.rmtree(self.location, ignore_errors=True)

    # -- internals ---------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        if not self._as_root:
            private_dir(self.location)
            private_dir(self.socket_dir)
            return
        entry = pwd.getpwnam("postgres")
        for path in (_ROOT_HOME.parent, _ROOT_HOME, self.location, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            if path != _ROOT_HOME.parent:
                os.chown(path, entry.pw_uid, entry.pw_gid)
                os.chmod(path, 0o700)
        # Where the data dir points to the cluster that holds its homeserver's database.
        private_dir(self.directory)
        (self.directory / "LOCATION").write_text(f"{self.location}\n")

    async def _run(self, argv: list[str], what: str) -> str:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.location,
            **kwargs,
        )
        out, _ = await proc.communicate()
        text = out.decode("utf8", "replace")
        if proc.returncode != 0:
            raise PlatformError(f"{what} failed (exit {proc.returncode}):\n{text[-2000:]}")
        return text

    async def _initdb(self, bin_dir: Path) -> None:
        data = self.location / "data"
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(data)  # a half-done initdb of an interrupted first start
        await self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "--locale=C",
                "--encoding=UTF8",
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=reject",
            ],
            "initdb",
        )

    async def _psql(self, bin_dir: Path, sql: str, db: str = "postgres") -> str:
        return await self._run(
            [
                str(bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-tAc",
                sql,
            ],
            "psql",
        )

    async def _accepts(self) -> bool:
        sock = self.socket_dir / f".s.PGSQL.{self.port}"
        if not sock.exists():
            return False
        bin_dir = postgres_bin_dir()
        proc = await asyncio.create_subprocess_exec(
            str(bin_dir / "pg_isready"),
            "-q",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait() == 0

    async def _ensure_database(self, bin_dir: Path) -> None:
        """Synapse's database and role, and our services' (neither may enter the other's)."""
        for role, database in ((ROLE, DATABASE), (SERVICES_ROLE, SERVICES_DATABASE)):
            if not (await self._psql(bin_dir, f"SELECT 1 FROM pg_roles WHERE rolname='{role}'")):  # noqa: S608 - constants
                await self._psql(bin_dir, f"CREATE ROLE {role} LOGIN")
            if not (
                await self._psql(bin_dir, f"SELECT 1 FROM pg_database WHERE datname='{database}'")  # noqa: S608
            ):
                await self._psql(
                    bin_dir,
                    f"CREATE DATABASE {database} OWNER {role} ENCODING 'UTF8' "
                    "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
                )
                await self._psql(bin_dir, f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")


class ExternalPostgres:
    """A PostgreSQL server someone else runs, named by a ``postgresql://`` URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.args = parse_postgres_url(url)

    def database_config(self) -> dict[str, Any]:
        return {"name": "psycopg2", "args": {**self.args, "cp_min": 2, "cp_max": 10}}

    @property
    def where(self) -> str:
        """host:port/database, without the password."""
        a = self.args
        return f"{a['host']}:{a.get('port', 5432)}/{a['database']}"

    @property
    def running(self) -> bool:
        return True

    pid = None

    def services_connect_args(self) -> dict[str, Any]:
        """Our services' stores go into the same database, each in its own schema."""
        return dict(self.args)

    @property
    def services_where(self) -> str:
        return self.where

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def parse_postgres_url(url: str) -> dict[str, Any]:
    """psycopg2 connection arguments from ``postgresql://user:pw@host:port/db?sslmode=...``."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"homeserver.postgres_url must be a postgresql:// URL, got {parts.scheme or url!r}"
        )
    database = unquote(parts.path.lstrip("/"))
    if not database or not parts.hostname:
        raise ConfigError(
            "homeserver.postgres_url must name a host and a database: "
            "postgresql://user:password@host:5432/synapse"
        )
    args: dict[str, Any] = {"host": parts.hostname, "database": database}
    if parts.port:
        args["port"] = parts.port
    if parts.username:
        args["user"] = unquote(parts.username)
    if parts.password:
        args["password"] = unquote(parts.password)
    for key, values in parse_qs(parts.query).items():
        args[key] = values[-1]
    return args
