"""The services' stores through one interface (datarooms._db), on SQLite and on a real
PostgreSQL (a private cluster of the Debian package, as the scale profile runs it).

Every store behaves the same on both: the rooms bot's, the automation service's hooks,
webhook outbox and forwards, the MCP audit table. On PostgreSQL, hook secrets, webhook
payloads and forward URLs are sealed: the database's own dump holds none of them. A
store survives a restart of the server; an unreachable server is a clear error; a
SQLite store copied into PostgreSQL keeps every row and its serial ids carry on.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarooms._db import (
    SQLITE,
    SqliteDatabase,
    StoreTarget,
    StoreUnavailableError,
    _pg_sql,
    copy_store,
)
from datarooms.chain.entity import SkippedEvent
from datarooms.config import load_settings
from datarooms.homeserver.embedded import free_port
from datarooms.homeserver.postgres import SUPERUSER, PostgresCluster, postgres_bin_dir
from datarooms.sdk.automation.formats import Delivery
from datarooms.sdk.automation.forward import ForwardTargets
from datarooms.sdk.automation.outbox import HookOutbox
from datarooms.sdk.automation.registry import HookRegistry
from datarooms.services.mcp import audit
from datarooms.services.roomsbot.store import EntityFacts, EntityRecord, RoomRef, Store
from datarooms.services.stores import store_target
from tests._system import require_program

ROOM = "!abc:localhost"


#: One worker, so the module's PostgreSQL cluster is made (initdb) once.
pytestmark = pytest.mark.xdist_group("service-stores")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    require_program("pg_ctlcluster", "postgresql")  # /usr/lib/postgresql/<ver>/bin
    pg = PostgresCluster(tmp_path_factory.mktemp("pg") / "postgres", port=free_port())
    asyncio.run(pg.start())
    try:
        yield pg
    finally:
        asyncio.run(pg.stop())
        pg.destroy()


@pytest.fixture
def pg_target(tmp_path: Path, cluster: PostgresCluster) -> StoreTarget:
    # A fresh set of schemas per test: drop what an earlier test made.
    _psql(cluster, "DROP OWNED BY datarooms_services", db="datarooms")
    return StoreTarget(
        "postgres", cluster.services_connect_args(), tmp_path / "store.key", cluster.where
    )


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest) -> StoreTarget:
    if request.param == "sqlite":
        return SQLITE
    result: StoreTarget = request.getfixturevalue("pg_target")
    return result


def _psql(pg: PostgresCluster, sql: str, db: str = "datarooms") -> str:
    argv = [str(postgres_bin_dir() / "psql"), "-X", "-q", "-tA", "-h", str(pg.socket_dir)]
    argv += ["-p", str(pg.port), "-U", SUPERUSER, "-d", db, "-c", sql]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _dump(pg: PostgresCluster) -> bytes:
    argv = [str(postgres_bin_dir() / "pg_dump"), "-h", str(pg.socket_dir), "-p", str(pg.port)]
    argv += ["-U", SUPERUSER, "datarooms"]
    return subprocess.run(argv, capture_output=True, check=True).stdout


def _record(did: str, n: int) -> EntityRecord:
    facts = EntityFacts(did, "device", ("did:ixo:ctrl",), "chain", "devchain", n, f"TX{n}")
    rooms = {"entity": RoomRef(f"!e{n}:localhost", f"#{did}:localhost")}
    return EntityRecord(facts, ("@did-ctrl:localhost",), None, rooms)


def test_parameters_translate_outside_string_literals() -> None:
    assert _pg_sql("SELECT ? WHERE a LIKE 'x?%' AND b = ?") == (
        "SELECT %s WHERE a LIKE 'x?%%' AND b = %s"
    )


def test_rooms_bot_store(target: StoreTarget, tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db", target)
    try:
        assert store.count() == 0 and store.load_height() is None
        store.save(_record("did:ixo:a", 1))
        updated = _record("did:ixo:a", 2)
        space = RoomRef("!s:localhost", "#space.did:ixo:a:localhost")
        store.save(EntityRecord(updated.facts, updated.members, space, updated.rooms))
        got = store.get("did:ixo:a")
        assert got is not None and got.facts.height == 2 and got.space == space
        assert got.room_id == "!e2:localhost" and got.members == ("@did-ctrl:localhost",)
        assert store.did_for_alias("#did:ixo:a:localhost") == "did:ixo:a"
        assert store.count() == 1 and store.dids() == ["did:ixo:a"]
        store.save_height(10)
        store.save_height(12)
        assert store.load_height() == 12
        skip = SkippedEvent(5, "TXB", "bad controller")
        store.record_skip(skip)
        store.record_skip(skip)  # once
        assert store.skipped_count() == 1 and store.skipped() == [skip]
        assert not store.txn_seen("t1")
        store.record_txn("t1", 3)
        store.record_txn("t1", 3)
        assert store.txn_seen("t1")
    finally:
        store.close()
    # Reopened (a restarted bot): everything is there, the schema not made twice.
    again = Store(tmp_path / "store.db", target)
    try:
        assert again.load_height() == 12 and again.get("did:ixo:a") is not None
    finally:
        again.close()


def test_hooks_outbox_and_forwards(
    target: StoreTarget, tmp_path: Path, cluster: PostgresCluster
) -> None:
    registry = HookRegistry(tmp_path / "hooks.db", target)
    outbox = HookOutbox(tmp_path / "outbox.db", target)
    forwards = ForwardTargets(tmp_path / "forward.db", target)
    try:
        hook = registry.add(ROOM, template="t ${x}")
        assert registry.get(hook.hook_id) == hook
        rotated = registry.rotate(hook.hook_id)
        assert rotated.secret != hook.secret and registry.list() == [rotated]

        secret_payload = "reactor-7 coolant at 97 C"
        seqs = outbox.enqueue(
            hook.hook_id, ROOM, [Delivery("message", {"body": secret_payload})], dedupe="d1"
        )
        assert seqs is not None and len(seqs) == 1
        assert outbox.enqueue(hook.hook_id, ROOM, [Delivery("message", {})], dedupe="d1") is None
        more = outbox.enqueue(hook.hook_id, ROOM, [Delivery("message", {"body": "2"})])
        assert more is not None and more[0] > seqs[0]
        pending = outbox.pending()
        assert [r.seq for r in pending] == [seqs[0], more[0]]
        assert pending[0].payload == {"body": secret_payload}
        outbox.note_attempt(seqs[0], "HTTP 502")
        outbox.mark_sent(seqs[0], "$ev")
        outbox.mark_failed(more[0], "M_FORBIDDEN")
        assert outbox.counts() == {"pending": 0, "sent": 1, "failed": 1}
        assert outbox.prune(older_than_s=-1) == 1

        url = "https://hooks.slack.example/services/T000/B000/SECRETPATH"
        forwards.add("ops", ROOM, "slack", url)
        forwards.add("pager", ROOM, "json", "https://pager.example/in", secret="sign-me-123")
        assert sorted(forwards.targets(ROOM)) == [
            ("ops", "slack", url),
            ("pager", "json", "https://pager.example/in"),
        ]
        listed = {f["forward_id"]: f for f in forwards.list()}
        assert listed["ops"]["destination"] == "hooks.slack.example"
        assert listed["pager"]["secret"] is True and listed["ops"]["secret"] is False
        forwards.remove("ops")
        assert [t[0] for t in forwards.targets(ROOM)] == ["pager"]

        if target.backend == "postgres":
            # The database holds ciphertext of every secret and content.
            dump = _dump(cluster)
            assert b"CREATE TABLE automation_outbox.deliveries" in dump
            for plain in (rotated.secret, secret_payload, "SECRETPATH", "sign-me-123"):
                assert plain.encode() not in dump, plain
            assert b"dr-sealed:v1:" in dump
    finally:
        for db in (registry, outbox, forwards):
            db.close()


def test_sealed_values_need_this_data_dirs_key(tmp_path: Path, pg_target: StoreTarget) -> None:
    target = pg_target
    registry = HookRegistry(tmp_path / "hooks.db", target)
    hook = registry.add(ROOM)
    registry.close()
    other = StoreTarget("postgres", target.connect_args, tmp_path / "other.key", target.where)
    stranger = HookRegistry(tmp_path / "hooks.db", other)
    try:
        with pytest.raises(Exception, match=r"does not open with this data dir's"):
            stranger.get(hook.hook_id)
    finally:
        stranger.close()


def test_audit_table(target: StoreTarget, tmp_path: Path) -> None:
    handler = audit.open_audit_table(target, tmp_path / "audit.jsonl")
    try:
        rec = audit.AuditRecord("tool_call", "ops", "@ops:localhost", "put_record", "http")
        rec.room = ROOM
        rec.deny("access:write")
        rec.emit()
        audit.auth_denied("bad token")
        db = handler.db  # type: ignore[attr-defined]
        rows = db.execute("SELECT audit, agent, tool, room, decision, capability FROM audit")
        assert sorted(map(tuple, rows)) == [
            ("auth", "-", "-", "-", "denied", "bad token"),
            ("tool_call", "ops", "put_record", ROOM, "denied", "access:write"),
        ]
    finally:
        audit.close_audit_file(handler)
    left = logging.getLogger(audit.AUDIT_LOGGER).handlers
    assert not [h for h in left if h is handler or type(h).__name__ == "_ToProcessLog"], left


def test_a_sqlite_store_copied_into_postgres(tmp_path: Path, pg_target: StoreTarget) -> None:
    target = pg_target
    outbox = HookOutbox(tmp_path / "outbox.db")
    for i in range(5):
        outbox.enqueue("h" * 16, ROOM, [Delivery("message", {"i": i})], dedupe=f"k{i}")
    outbox.close()
    source = SqliteDatabase(tmp_path / "outbox.db", HookOutbox.NAME)
    dest = target.open(HookOutbox.NAME, tmp_path / "x.db", HookOutbox.MIGRATIONS)
    try:
        assert copy_store(source, dest, HookOutbox.SEALED) == 5
        assert copy_store(source, dest, HookOutbox.SEALED) == 5  # again: replaced, not added
    finally:
        source.close()
        dest.close()
    moved = HookOutbox(tmp_path / "x.db", target)
    try:
        assert [r.payload["i"] for r in moved.pending()] == [0, 1, 2, 3, 4]
        assert moved.enqueue("h" * 16, ROOM, [Delivery("message", {})], dedupe="k1") is None
        new = moved.enqueue("h" * 16, ROOM, [Delivery("message", {"i": 5})])
        assert new is not None and new[0] == 6  # the serial carries on after the copied ids
    finally:
        moved.close()


def test_postgres_restart_and_unreachable(cluster: PostgresCluster, tmp_path: Path) -> None:
    target = StoreTarget(
        "postgres", cluster.services_connect_args(), tmp_path / "k.key", cluster.where
    )
    store = Store(tmp_path / "store.db", target)
    try:
        store.save_height(7)
        asyncio.run(cluster.stop())
        asyncio.run(cluster.start())
        assert store.load_height() == 7  # a fresh connection, once
    finally:
        store.close()
    gone = StoreTarget(
        "postgres", {**cluster.services_connect_args(), "port": free_port()}, tmp_path / "k.key"
    )
    with pytest.raises(StoreUnavailableError, match="cannot reach the services' PostgreSQL"):
        Store(tmp_path / "store.db", gone)


def test_the_profile_picks_the_backend(tmp_path: Path) -> None:
    def target(**env: str) -> StoreTarget:
        return store_target(load_settings(data_dir=tmp_path, env=env))

    assert target().backend == "sqlite"
    scale = {"DATAROOMS_HOMESERVER_PROFILE": "scale"}
    private = target(**scale)
    assert private.backend == "postgres" and private.connect_args["database"] == "datarooms"
    assert private.connect_args["user"] == "datarooms_services"
    assert private.key_path == tmp_path / "services" / "store.key"
    external = target(
        **scale,
        DATAROOMS_HOMESERVER_POSTGRES_URL="postgresql://syn:pw@db.example:5433/synapse",
    )
    assert external.connect_args == {
        "host": "db.example",
        "port": 5433,
        "database": "synapse",
        "user": "syn",
        "password": "pw",
    }
    assert "pw" not in external.where
    apart = target(
        **scale, DATAROOMS_HOMESERVER_SERVICES_POSTGRES_URL="postgresql://svc@db2.example/ours"
    )
    assert apart.connect_args == {"host": "db2.example", "database": "ours", "user": "svc"}
