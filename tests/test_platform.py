"""The local platform through the real CLI: `datarooms up/down/status/user add`."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from datarooms._transport.http import MatrixHttp
from datarooms.homeserver.embedded import free_port
from tests._cli import clean_env, cli, pid_alive, start_up


def _homeserver_only() -> dict[str, str]:
    """`datarooms up` without its services: for tests of the homeserver's lifecycle."""
    return clean_env(DATAROOMS_SERVICES="none")


async def _login(url: str, user: str, password: str) -> str:
    async with MatrixHttp(url) as http:
        res = await http.login_password(user, password)
        return str(res["user_id"])


async def test_up_register_down_restart_keeps_data(data_dir: Path) -> None:
    port = free_port()
    up = start_up(data_dir, "--port", str(port))
    try:
        state = up.wait_running()
        url = f"http://127.0.0.1:{port}"
        assert state["homeserver_url"] == url
        creds = data_dir / "credentials.json"
        assert creds.stat().st_mode & 0o077 == 0, "credentials must be private to the owner"

        st = cli("status", data_dir=data_dir)
        assert st.returncode == 0 and "healthy" in st.stdout

        added = cli(
            "user", "add", "carol", "--password-stdin", data_dir=data_dir, input="s3cret-pass\n"
        )
        assert added.returncode == 0, added.stderr
        assert "@carol:localhost" in added.stdout
        assert await _login(url, "carol", "s3cret-pass") == "@carol:localhost"

        down = cli("down", data_dir=data_dir)
        assert down.returncode == 0, down.stderr
        assert up.proc.wait(timeout=60) == 0
        synapse_pid = int(str(state["synapse_pid"]))
        assert not pid_alive(synapse_pid), "synapse must stop with the platform"
        assert cli("status", data_dir=data_dir).returncode == 3
    finally:
        up.kill()

    # Restart: same data dir, data intact, service account reused.
    up2 = start_up(data_dir, "--port", str(port), env=_homeserver_only())
    try:
        up2.wait_running()
        assert await _login(url, "carol", "s3cret-pass") == "@carol:localhost"
        who = cli("whoami", data_dir=data_dir)
        assert who.returncode == 0 and "@datarooms:localhost" in who.stdout
        code, out, _ = up2.interrupt()
        assert code == 0 and "stopped" in out
    finally:
        up2.kill()


def test_second_up_is_refused_with_pid(data_dir: Path) -> None:
    up = start_up(data_dir, "--port", str(free_port()), env=_homeserver_only())
    try:
        state = up.wait_running()
        again = cli("up", "--port", str(free_port()), data_dir=data_dir)
        assert again.returncode == 1
        assert "already running" in again.stderr
        assert f"pid {state['pid']}" in again.stderr
        assert "Traceback" not in again.stderr
    finally:
        up.interrupt()
        up.kill()


def test_port_in_use_is_a_clear_error(data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        res = cli("up", "--port", str(port), data_dir=data_dir)
    assert res.returncode == 1
    assert f"port {port}" in res.stderr and "already in use" in res.stderr
    assert "Traceback" not in res.stderr
    # Nothing is left locked: a later run on a free port works.
    assert cli("status", data_dir=data_dir).returncode == 3


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = cli("up", "--port", str(free_port()), data_dir=blocker / "data")
    assert res.returncode == 1
    assert "not writable" in res.stderr
    assert "Traceback" not in res.stderr


def test_synapse_failing_to_start_shows_its_log(data_dir: Path) -> None:
    db = data_dir / "synapse" / "homeserver.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an sqlite database" * 100)
    res = cli("up", "--port", str(free_port()), data_dir=data_dir)
    assert res.returncode == 1
    assert "Synapse exited" in res.stderr
    assert "homeserver.log" in res.stderr or "stdout.log" in res.stderr
    assert "not a database" in res.stderr  # the log tail names the cause
    assert 'Traceback (most recent call last):\n  File "/' not in res.stderr.split("---")[0]


def test_ctrl_c_during_startup_leaves_nothing_behind(data_dir: Path) -> None:
    port = free_port()
    up = start_up(data_dir, "--port", str(port), env=_homeserver_only())
    pid_file = data_dir / "synapse" / "homeserver.pid"
    stdout_log = data_dir / "synapse" / "stdout.log"
    deadline = time.monotonic() + 60
    while not stdout_log.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stdout_log.exists(), "synapse was never spawned"
    code, _out, err = up.interrupt()
    assert code == 130, err
    assert "interrupted" in err
    assert not pid_file.exists()
    # No synapse left listening, lock released: a re-run works.
    up2 = start_up(data_dir, "--port", str(port), env=_homeserver_only())
    try:
        up2.wait_running()
    finally:
        code, _, err = up2.interrupt()
        up2.kill()
    assert code == 0, err


def test_killed_up_takes_synapse_with_it(data_dir: Path) -> None:
    port = free_port()
    up = start_up(data_dir, "--port", str(port), env=_homeserver_only())
    state = up.wait_running()
    up.kill()  # SIGKILL: no cleanup code runs in `up`
    synapse_pid = int(str(state["synapse_pid"]))
    deadline = time.monotonic() + 30
    while pid_alive(synapse_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(synapse_pid)
    up2 = start_up(data_dir, "--port", str(port), env=_homeserver_only())
    try:
        up2.wait_running()
    finally:
        up2.interrupt()
        up2.kill()


def test_down_when_not_running(data_dir: Path) -> None:
    res = cli("down", data_dir=data_dir)
    assert res.returncode == 1
    assert "not running" in res.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATAROOMS_HOMESERVER_PORT": "eighty"}, "expected a whole number"),
        ({"DATAROOMS_HOMESERVER_MODE": "cloud"}, "must be one of embedded, external"),
        ({"DATAROOMS_HOMESERVER_MODE": "external"}, "homeserver.url is not set"),
        ({"DATAROOMS_ACCOUNT_USER_ID": "alice"}, "must look like @name:server"),
    ],
)
def test_bad_config_is_a_clear_error(data_dir: Path, env: dict[str, str], message: str) -> None:
    res = cli("config", "show", data_dir=data_dir, env=clean_env(**env))
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_key_in_config_file(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "datarooms.toml").write_text("[homeserver]\nprot = 9000\n")
    res = cli("config", "show", data_dir=data_dir)
    assert res.returncode == 1
    assert "unknown setting(s) prot" in res.stderr


def test_config_show_masks_secrets(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "datarooms.toml").write_text(
        '[homeserver]\nport = 9123\n[account]\nuser_id = "@a:b"\npassword = "pw-in-file"\n'
    )
    env = clean_env(DATAROOMS_ACCOUNT_ACCESS_TOKEN="syt_very_secret_token")
    res = cli("config", "show", data_dir=data_dir, env=env)
    assert res.returncode == 0, res.stderr
    assert "9123" in res.stdout
    assert "syt_very_secret_token" not in res.stdout and "pw-in-file" not in res.stdout
    assert res.stdout.count("***") == 2


def test_config_show_masks_service_secrets_and_url_userinfo(data_dir: Path) -> None:
    """Service sections and URLs are masked too (issue 11): a chain node's basic-auth URL,
    a homeserver map entry with userinfo, any *token*/*secret* field."""
    data_dir.mkdir()
    (data_dir / "datarooms.toml").write_text(
        '[chain]\nmode = "external"\nrpc_url = "https://node:rpc-s3cr3t@rpc.example:443"\n'
        '[roomsbot.homeservers]\n"partner.example" = "https://bot:hs-s3cr3t@partner.example"\n'
    )
    res = cli("config", "show", data_dir=data_dir)
    assert res.returncode == 0, res.stderr
    assert "rpc-s3cr3t" not in res.stdout and "hs-s3cr3t" not in res.stdout
    assert "rpc.example:443" in res.stdout and "partner.example" in res.stdout
