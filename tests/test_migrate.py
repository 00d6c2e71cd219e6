"""`datarooms migrate-to-postgres`: an embedded platform with records, a file, keys and an
entity room moves into the scale profile's PostgreSQL (Synapse's synapse_port_db); after
`up` every record, the file and the entity room read back, on the same device and on a
fresh device restored from key backup. Refused while running; a second run is a no-op."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from datarooms.account import read_credentials
from datarooms.config import load_settings
from datarooms.homeserver.embedded import free_port
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

#: It starts a scale-profile homeserver (about 10 processes): with the scale tests.
pytestmark = pytest.mark.xdist_group("scale")


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


def test_migrate_an_embedded_platform_to_postgres(tmp_path: Path) -> None:
    require_program("redis-server", "redis-server")
    require_program("nginx", "nginx")
    require_program("pg_ctlcluster", "postgresql")
    data_dir = tmp_path / "org"
    port = free_port()
    env = clean_env(
        DATAROOMS_SERVICES="devchain,roomsbot",
        DATAROOMS_HOMESERVER_EVENT_PERSISTERS="1",
        DATAROOMS_HOMESERVER_INTERNAL_PORT_BASE=str(free_port_block()),
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
        # Not while it runs.
        busy = cli("migrate-to-postgres", data_dir=data_dir, env=env)
        assert busy.returncode == 1 and "running" in busy.stderr, busy.stderr
    finally:
        up.interrupt()
        up.kill()
    db = data_dir / "synapse" / "homeserver.db"
    assert db.exists()

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
    finally:
        up2.interrupt()
        up2.kill()


def test_profile_switch_keeps_the_rest_of_the_config() -> None:
    from datarooms.services.migrate import with_scale_profile

    assert with_scale_profile("") == '[homeserver]\nprofile = "scale"\n'
    text = 'data_dir = "x"\n\n[homeserver]\nport = 8010\nprofile = "embedded"\n\n[mcp]\nport = 1\n'
    out = with_scale_profile(text)
    assert out == text.replace('profile = "embedded"', 'profile = "scale"')
    out = with_scale_profile('[homeserver]  # ours\nport = 8010\n[mcp]\nprofile = "x"\n')
    assert out == '[homeserver]  # ours\nprofile = "scale"\nport = 8010\n[mcp]\nprofile = "x"\n'
    assert with_scale_profile("[mcp]\nport = 1\n").endswith('[homeserver]\nprofile = "scale"\n')
