"""`datarooms migrate-to-postgres`: an embedded platform with records, a file, keys, an
entity room and a webhook moves into the scale profile's PostgreSQL (Synapse's
synapse_port_db, and our services' stores); after `up` every record, the file and the
entity room read back, on the same device and on a fresh device restored from key
backup; the rooms bot's store and the hook (its secret, its outbox) are the same rows,
now in PostgreSQL, which holds none of the hook's secret or payloads in clear. Refused
while running; a second run is a no-op."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from datarooms.account import read_credentials
from datarooms.config import load_settings
from datarooms.homeserver.embedded import free_port
from datarooms.homeserver.postgres import SUPERUSER, postgres_bin_dir
from datarooms.services.stores import store_target
from tests._cli import (
    DATAROOMS,
    clean_env,
    cli,
    entity_rooms,
    free_port_block,
    pid_alive,
    start_up,
    wait_entity_rooms,
)
from tests._system import require_program

#: It runs scale-profile platforms of its own (about 10 processes each): a group of its
#: own, so that it runs beside the scale tests, not after them.
pytestmark = pytest.mark.xdist_group("migrate")


def _config(data_dir: Path) -> str:
    path = data_dir / "datarooms.toml"
    return path.read_text() if path.exists() else ""


def _wait_postgres_gone(data_dir: Path) -> None:
    """The killed migration's PostgreSQL exits on its own (it gets SIGTERM when its parent
    dies); the rerun starts a new one on the same cluster."""
    pg = data_dir / "synapse" / "postgres"
    location = Path((pg / "LOCATION").read_text().strip()) if (pg / "LOCATION").exists() else pg
    pid_file = location / "data" / "postmaster.pid"
    deadline = time.monotonic() + 30
    while pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        if not pid_alive(pid):
            return
        assert time.monotonic() < deadline, "the killed migration's PostgreSQL did not exit"
        time.sleep(0.1)


def _post_hook(hook: dict[str, Any], body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        hook["url"],
        data=json.dumps(body).encode(),
        headers={"X-Datarooms-Token": hook["secret"], "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.status)


def _services_sql(data_dir: Path, env: dict[str, str], sql: str) -> list[tuple[Any, ...]]:
    import psycopg2

    target = store_target(load_settings(data_dir=data_dir, env=env))
    conn = psycopg2.connect(**target.connect_args)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def _services_dump(data_dir: Path, env: dict[str, str]) -> bytes:
    args = store_target(load_settings(data_dir=data_dir, env=env)).connect_args
    argv = [str(postgres_bin_dir() / "pg_dump"), "-h", args["host"], "-p", str(args["port"])]
    argv += ["-U", SUPERUSER, args["database"]]
    return subprocess.run(argv, capture_output=True, check=True).stdout


@pytest.mark.timeout(900)  # three scale-profile starts on a shared machine
def test_migrate_an_embedded_platform_to_postgres(tmp_path: Path) -> None:
    require_program("redis-server", "redis-server")
    require_program("nginx", "nginx")
    require_program("pg_ctlcluster", "postgresql")
    data_dir = tmp_path / "org"
    port = free_port()
    env = clean_env(
        DATAROOMS_SERVICES="devchain,roomsbot,automation",
        DATAROOMS_HOMESERVER_EVENT_PERSISTERS="1",
        DATAROOMS_HOMESERVER_INTERNAL_PORT_BASE=str(free_port_block()),
        # The hook's URL stays the same across the restart.
        DATAROOMS_AUTOMATION_PORT=str(free_port()),
    )
    payload = tmp_path / "report.bin"
    payload.write_bytes(os.urandom(200_000))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()

    def run(
        *args: str, stdin: str | None = None, d: Path = data_dir, e: dict[str, str] = env
    ) -> str:
        res = cli(*args, data_dir=d, env=e, input=stdin)
        assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
        return res.stdout

    up = start_up(data_dir, "--port", str(port), env=env)
    try:
        up.wait_running()
        room = run("room", "create", "project", "--name", "kept").split()[0]
        for i in range(3):
            run("put", room, "reading", json.dumps({"i": i}))
        file_event = run("file", "put", room, str(payload)).splitlines()[-1].split()[0]
        run("entity", "register")
        before = wait_entity_rooms(data_dir, env, 1)
        out = run("keys", "recovery-key")
        match = re.search(r"((?:[1-9A-HJ-NP-Za-km-z]{4} ){11}[1-9A-HJ-NP-Za-km-z]{1,4})", out)
        assert match, out
        recovery_key = match.group(1)
        assert "key backup       yes" in run("keys", "status")
        # A webhook into the room (the automation service writes records with it).
        run("room", "grant", room, "@automation:localhost", "write")
        hook = json.loads(
            run(
                "hook",
                "add",
                room,
                "--target",
                "record",
                "--template",
                "alarm.${id}",
                "--mapping",
                '{"value": "v"}',
                "--json",
            )
        )
        assert _post_hook(hook, {"id": 1, "v": "coolant-sealed-41"}) == 202
        _wait_record(run, room, "alarm.1", "coolant-sealed-41")
        # Not while it runs.
        busy = cli("migrate-to-postgres", data_dir=data_dir, env=env)
        assert busy.returncode == 1 and "running" in busy.stderr, busy.stderr
    finally:
        up.interrupt()
        up.kill()
    db = data_dir / "synapse" / "homeserver.db"
    assert db.exists()
    with sqlite3.connect(data_dir / "roomsbot" / "store.db") as store:
        entity_rows = sorted(store.execute("SELECT did, created_at FROM entities"))
    assert len(entity_rows) == 1

    # SIGKILLed mid-port (it and its children, like a power cut): nothing switched.
    proc = subprocess.Popen(
        [DATAROOMS, "--data-dir", str(data_dir), "migrate-to-postgres"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        # synapse_port_db's own state line: it has prepared PostgreSQL and starts copying.
        if "Creating port tables" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any("porting with synapse_port_db" in ln for ln in seen), seen
    assert db.exists() and 'profile = "scale"' not in _config(data_dir)
    _wait_postgres_gone(data_dir)

    res = cli("migrate-to-postgres", data_dir=data_dir, env=env, timeout=180)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert "synapse_port_db" in res.stderr and "row counts match" in res.stderr, res.stderr
    assert not db.exists() and (data_dir / "synapse" / "homeserver.db.migrated").exists()
    assert "resuming an interrupted port" in res.stderr or "porting" in res.stderr
    config_text = _config(data_dir)
    assert 'profile = "scale"' in config_text
    again = cli("migrate-to-postgres", data_dir=data_dir, env=env)
    assert again.returncode == 0 and "already migrated" in again.stdout, again.stderr
    assert (data_dir / "datarooms.toml").read_text() == config_text
    for name in ("roomsbot/store.db", "automation/hooks.db", "automation/outbox.db"):
        assert not (data_dir / name).exists() and (data_dir / f"{name}.migrated").exists()
    assert "copied the store roomsbot: " in res.stderr, res.stderr

    creds = read_credentials(load_settings(data_dir=data_dir, env=env).credentials_file)
    assert creds is not None and creds.password
    up2 = start_up(data_dir, "--port", str(port), env=env)
    try:
        state = up2.wait_running(timeout=180)
        assert state.get("homeserver_processes"), state  # the scale profile runs
        # The same device.
        assert json.loads(run("get", room, "reading")) == {"i": 2}
        assert "3" in run("history", room, "reading")
        got = tmp_path / "got.bin"
        run("file", "get", room, file_event, str(got))
        assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
        assert entity_rooms(data_dir, env) == before
        # A fresh device of the same account, restored from key backup.
        phone = tmp_path / "phone"
        penv = clean_env(
            DATAROOMS_HOMESERVER_MODE="external",
            DATAROOMS_HOMESERVER_URL=str(state["homeserver_url"]),
            DATAROOMS_ACCOUNT_USER_ID=creds.user_id,
            DATAROOMS_ACCOUNT_PASSWORD=creds.password,
        )
        run("keys", "restore", "--recovery-key-stdin", stdin=recovery_key + "\n", d=phone, e=penv)
        assert json.loads(run("get", room, "reading", d=phone, e=penv)) == {"i": 2}
        got2 = tmp_path / "got2.bin"
        run("file", "get", room, file_event, str(got2), d=phone, e=penv)
        assert hashlib.sha256(got2.read_bytes()).hexdigest() == digest
        # The rooms bot carries on: a new entity gets its room, the old one keeps its own.
        run("entity", "register")
        after = wait_entity_rooms(data_dir, env, 2)
        assert {k: v for k, v in after.items() if k in before} == before
        # Our services' stores are in PostgreSQL: the same rows, not made again.
        moved = _services_sql(data_dir, env, "SELECT did, created_at FROM roomsbot.entities")
        assert entity_rows[0] in moved and len(moved) == 2
        # The hook works with its old secret; its outbox kept the first delivery.
        assert _post_hook(hook, {"id": 2, "v": "coolant-sealed-42"}) == 202
        _wait_record(run, room, "alarm.2", "coolant-sealed-42")
        states = _services_sql(
            data_dir, env, "SELECT state FROM automation_outbox.deliveries ORDER BY seq"
        )
        assert states == [("sent",), ("sent",)]
        dump = _services_dump(data_dir, env)
        assert b"automation_hooks.hooks" in dump and b"dr-sealed:v1:" in dump
        for plain in (hook["secret"], "coolant-sealed-41", "coolant-sealed-42"):
            assert plain.encode() not in dump, plain
        # A backup of the running scale platform: its PostgreSQL databases as dumps.
        archive = tmp_path / "scale.age"
        run("backup", str(archive), "--passphrase-stdin", stdin="correct horse\n")
    finally:
        up2.interrupt()
        up2.kill()

    # Restored elsewhere (another data dir, other ports): everything reads back, the hook
    # opens its sealed secret with the restored key and delivers.
    restored = tmp_path / "restored"
    renv = {
        **env,
        "DATAROOMS_HOMESERVER_INTERNAL_PORT_BASE": str(free_port_block()),
        "DATAROOMS_AUTOMATION_PORT": str(free_port()),
    }
    res = cli(
        "restore",
        str(archive),
        "--passphrase-stdin",
        data_dir=restored,
        env=renv,
        input="correct horse\n",
        timeout=180,
    )
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert "PostgreSQL: synapse, datarooms" in res.stdout, res.stdout
    assert not (restored / "synapse" / "postgres.dump").exists()
    up3 = start_up(restored, "--port", str(free_port()), env=renv)
    try:
        up3.wait_running(timeout=180)
        assert json.loads(run("get", room, "reading", d=restored, e=renv)) == {"i": 2}
        assert json.loads(run("get", room, "alarm.2", d=restored, e=renv)) == "coolant-sealed-42"
        assert entity_rooms(restored, renv) == after
        port = renv["DATAROOMS_AUTOMATION_PORT"]
        moved_hook = {**hook, "url": re.sub(r":\d+/hooks/", f":{port}/hooks/", hook["url"])}
        assert _post_hook(moved_hook, {"id": 3, "v": "coolant-sealed-43"}) == 202
        _wait_record(lambda *a: run(*a, d=restored, e=renv), room, "alarm.3", "coolant-sealed-43")
    finally:
        up3.interrupt()
        up3.kill()


def _wait_record(run: Any, room: str, key: str, value: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if json.loads(run("get", room, key)) == value:
                return
        except AssertionError:
            pass  # not there yet
        assert time.monotonic() < deadline, f"{key} did not arrive"
        time.sleep(0.5)


def test_profile_switch_keeps_the_rest_of_the_config() -> None:
    from datarooms.services.migrate import with_scale_profile

    assert with_scale_profile("") == '[homeserver]\nprofile = "scale"\n'
    text = 'data_dir = "x"\n\n[homeserver]\nport = 8010\nprofile = "embedded"\n\n[mcp]\nport = 1\n'
    out = with_scale_profile(text)
    assert out == text.replace('profile = "embedded"', 'profile = "scale"')
    out = with_scale_profile('[homeserver]  # ours\nport = 8010\n[mcp]\nprofile = "x"\n')
    assert out == '[homeserver]  # ours\nprofile = "scale"\nport = 8010\n[mcp]\nprofile = "x"\n'
    assert with_scale_profile("[mcp]\nport = 1\n").endswith('[homeserver]\nprofile = "scale"\n')
