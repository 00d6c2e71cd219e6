"""Test support: a real Synapse for a test session, and fresh users per test.

Used by this project's own tests and usable in yours::

    from datarooms.testing import TestHomeserver

    @pytest.fixture(scope="session")
    def homeserver(tmp_path_factory):
        with TestHomeserver(tmp_path_factory.mktemp("hs")) as hs:
            yield hs

    async def test_something(homeserver):
        alice = await homeserver.new_user("alice")

Nothing here mocks the homeserver: it is Synapse, started as for ``datarooms up``
but on a free port, with cheap password hashing so registering users is fast.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from datarooms.homeserver.admin import RegisteredUser, register_user
from datarooms.homeserver.embedded import EmbeddedSynapse, FederationListener, free_port
from datarooms.homeserver.tls import ensure_server_certificate

#: Settings that make a test homeserver faster without changing behaviour.
TEST_SYNAPSE_CONFIG: dict[str, Any] = {"bcrypt_rounds": 4}


class TestHomeserver:
    """A Synapse started in ``directory`` for the length of a ``with`` block."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        directory: Path,
        *,
        server_name: str = "localhost",
        extra_config: dict[str, Any] | None = None,
        federation: FederationListener | None = None,
    ) -> None:
        self.synapse: EmbeddedSynapse = EmbeddedSynapse(
            directory,
            server_name=server_name,
            port=free_port(),
            start_timeout=180,
            extra_config={**TEST_SYNAPSE_CONFIG, **(extra_config or {})},
            federation=federation,
        )

    @property
    def base_url(self) -> str:
        return self.synapse.base_url

    @property
    def server_name(self) -> str:
        return self.synapse.server_name

    def __enter__(self) -> TestHomeserver:
        asyncio.run(self.synapse.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run(self.synapse.stop())

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one SQL statement on the homeserver's database (``?`` placeholders), for
        tests that change what Synapse stored (expire a token); the rows it returns."""
        import sqlite3

        db = sqlite3.connect(self.synapse.database_path, timeout=30)
        try:
            with db:
                return db.execute(statement, params).fetchall()
        finally:
            db.close()

    def database_dump(self) -> bytes:
        """Everything the homeserver's database holds, as bytes (blindness checks)."""
        db = self.synapse.database_path
        return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())

    async def new_user(self, prefix: str = "user", *, admin: bool = False) -> RegisteredUser:
        """Register a user that no other test has: ``<prefix>-<random>``."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        return await register_user(
            self.base_url, self.synapse.registration_shared_secret, name, admin=admin
        )


def _distinct_free_ports() -> Iterator[int]:
    seen: set[int] = set()
    while True:
        port = free_port()
        if port not in seen:
            seen.add(port)
            yield port


class TestScaleHomeserver(TestHomeserver):
    """The scale profile's homeserver (PostgreSQL, Redis, Synapse workers, nginx) for a
    test session: each process on a free port, the PostgreSQL cluster removed at the end."""

    __test__ = False

    def __init__(
        self,
        directory: Path,
        *,
        server_name: str = "localhost",
        extra_config: dict[str, Any] | None = None,
        persisters: int = 2,
    ) -> None:
        from datarooms.homeserver.scale import ScaleSynapse

        self.scale = ScaleSynapse(
            directory,
            server_name=server_name,
            port=free_port(),
            start_timeout=180,
            extra_config={**TEST_SYNAPSE_CONFIG, **(extra_config or {})},
            persisters=persisters,
            ports=_distinct_free_ports(),
        )
        self.synapse = self.scale

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg2

        args = self.scale.postgres.database_config()["args"]
        conn = psycopg2.connect(**{k: v for k, v in args.items() if not k.startswith("cp_")})
        try:
            with conn, conn.cursor() as cur:
                cur.execute(statement.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def database_dump(self) -> bytes:
        """``pg_dump`` of Synapse's database (a private cluster's)."""
        import subprocess

        from datarooms.homeserver.postgres import SUPERUSER, PostgresCluster, postgres_bin_dir

        pg = self.scale.postgres
        assert isinstance(pg, PostgresCluster)
        argv = [str(postgres_bin_dir() / "pg_dump"), "-h", str(pg.socket_dir), "-p", str(pg.port)]
        argv += ["-U", SUPERUSER, "synapse"]
        return subprocess.run(argv, capture_output=True, check=True).stdout

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from datarooms.homeserver.postgres import PostgresCluster

        asyncio.run(self.scale.stop())
        if isinstance(self.scale.postgres, PostgresCluster):
            self.scale.postgres.destroy()


#: ``DATAROOMS_TEST_PROFILE=scale`` runs the tests that use :func:`profile_homeserver`
#: (this project's ``homeserver`` and ``appservice_hs`` fixtures) against the scale profile.
PROFILE_ENV = "DATAROOMS_TEST_PROFILE"


def test_profile() -> str:
    """The homeserver profile the tests run against: ``embedded`` (default) or ``scale``."""
    profile = os.environ.get(PROFILE_ENV, "embedded") or "embedded"
    if profile not in ("embedded", "scale"):
        raise ValueError(f"{PROFILE_ENV} must be embedded or scale, got {profile!r}")
    return profile


test_profile.__test__ = False  # type: ignore[attr-defined]


def profile_homeserver(
    directory: Path, *, extra_config: dict[str, Any] | None = None, profile: str | None = None
) -> TestHomeserver:
    """A test homeserver of ``profile``, by default the one :func:`test_profile` names."""
    if (profile or test_profile()) == "scale":
        return TestScaleHomeserver(directory, extra_config=extra_config)
    return TestHomeserver(directory, extra_config=extra_config)


class TestFederation:
    """Several homeservers that federate over TLS, as organisations on one machine.

    Each gets a loopback address of its own and the server name ``127.0.0.N:<port>``
    (server ACLs match hosts, not ports, so ``localhost:<port>`` cannot tell
    organisations apart), and a certificate
    from one local CA in ``<directory>/ca`` that all of them trust; certificate
    verification is on. ``allow`` maps an organisation to the organisations it
    federates with (default: all of them); ``rogue`` names organisations whose
    certificate comes from a CA of their own, which no one else trusts::

        with TestFederation(tmp, ["a", "b", "c"]) as orgs:
            alice = await orgs["a"].new_user("alice")
    """

    __test__ = False

    def __init__(
        self,
        directory: Path,
        names: list[str],
        *,
        allow: dict[str, list[str]] | None = None,
        rogue: tuple[str, ...] = (),
        extra_config: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.directory = Path(directory)
        # One loopback address each (127.0.0.2, .3, ...): server ACLs match hosts, not ports.
        hosts = {name: f"127.0.0.{i + 2}" for i, name in enumerate(names)}
        ports = {name: free_port(hosts[name]) for name in names}
        self.server_names = {name: f"{hosts[name]}:{ports[name]}" for name in names}
        self.orgs: dict[str, TestHomeserver] = {}
        for name in names:
            ca_dir = self.directory / (f"ca-{name}" if name in rogue else "ca")
            cert = ensure_server_certificate(
                self.directory / name / "tls", ca_dir, [hosts[name], "localhost", "127.0.0.1"]
            )
            peers = (allow or {}).get(name, names)
            listener = FederationListener(
                port=ports[name],
                host=hosts[name],
                certificate=cert.cert,
                private_key=cert.key,
                ca=cert.ca,
                allow=tuple(self.server_names[p] for p in {name, *peers}),
                loopback_peers=True,
                retry_interval="1s",
                retry_max_interval="4s",
            )
            self.orgs[name] = TestHomeserver(
                self.directory / name,
                server_name=self.server_names[name],
                extra_config=(extra_config or {}).get(name),
                federation=listener,
            )

    def __getitem__(self, name: str) -> TestHomeserver:
        return self.orgs[name]

    @property
    def ca_file(self) -> Path:
        """The local CA's certificate that the organisations (but rogue ones) trust."""
        return self.directory / "ca" / "ca.pem"

    async def stop(self, name: str) -> None:
        """Take organisation ``name``'s homeserver down (an outage)."""
        await self.orgs[name].synapse.stop()

    async def start(self, name: str) -> None:
        """Bring it back as ``datarooms up`` does: start it, then tell its peers it is back."""
        from datarooms.homeserver.federation import wake_peers

        org = self.orgs[name]
        await org.synapse.start()
        admin = await org.new_user("wake", admin=True)
        await wake_peers(org.base_url, admin.access_token, org.server_name)

    def __enter__(self) -> TestFederation:
        async def start_all() -> None:
            results = await asyncio.gather(
                *(org.synapse.start() for org in self.orgs.values()), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                await asyncio.gather(*(org.synapse.stop() for org in self.orgs.values()))
                raise errors[0]

        asyncio.run(start_all())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop_all() -> None:
            await asyncio.gather(*(org.synapse.stop() for org in self.orgs.values()))

        asyncio.run(stop_all())
