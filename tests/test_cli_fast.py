"""The CLI starts fast and tells the truth, through the real `datarooms` command.

- `--help` lists every command without importing the services, nio or Synapse;
- a record command imports none of the services either, and opens its device from
  its index (an incremental sync) without losing what a full sync guarantees: a
  reader's new device gets the key, nothing is sent in the clear;
- `datarooms status` says "starting" and exits non-zero until the platform is up;
- in embedded mode the CLI talks to the running platform's homeserver (its run
  file), whoever it acts as.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from datarooms import Credentials, DataroomsClient
from datarooms._fs import ProcessLock
from datarooms._transport.http import MatrixHttp
from datarooms.homeserver.embedded import free_port
from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli, start_up

#: What a `--help` or a `put` must not import: the services and their frameworks.
SERVICE_MODULES = (
    "fastapi",
    "uvicorn",
    "mcp",
    "synapse",
    "datarooms.services.mcp",
    "datarooms.services.statebot",
    "datarooms.services.roomsbot.bot",
    "datarooms.chain",
)

# Runs the CLI in this interpreter and writes the modules it imported to a file.
_PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "datarooms"
from datarooms.cli import main
main()
"""


def cli_modules(
    tmp_path: Path, *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `datarooms ARGS` and return its result and the modules it imported."""
    out = tmp_path / f"modules-{time.monotonic_ns()}.json"
    argv = [*(["--data-dir", str(data_dir)] if data_dir else []), *args]
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *argv],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=120,
        check=False,
    )
    return res, set(json.loads(out.read_text())) if out.exists() else set()


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_help_lists_every_command_without_importing_them(tmp_path: Path) -> None:
    from datarooms.cli.app import LAZY_COMMANDS

    res, modules = cli_modules(tmp_path, "--help")
    assert res.returncode == 0, res.stderr
    assert not loaded(modules, (*SERVICE_MODULES, "nio", "aiohttp", "datarooms.sdk")), (
        "--help imported more than it shows"
    )
    for name, (_module, _attr, _kind, short_help) in LAZY_COMMANDS.items():
        assert name in res.stdout
        assert short_help.split()[0] in res.stdout
    for name in ("up", "status", "put", "get", "history", "room", "file"):
        assert f" {name} " in res.stdout


def test_lazy_commands_help_is_the_commands_own() -> None:
    """The one-line help `--help` shows for a service's command is that command's."""
    from datarooms.cli.app import LAZY_COMMANDS, load_lazy_command

    for name, (_module, _attr, _kind, short_help) in LAZY_COMMANDS.items():
        cmd = load_lazy_command(name)
        own = (cmd.help or "").strip().splitlines()[0]
        assert own == short_help, f"{name}: LAZY_COMMANDS says {short_help!r}, it says {own!r}"


def test_a_service_command_still_runs(tmp_path: Path) -> None:
    res = cli("agents", "list", data_dir=tmp_path / "data")
    assert res.returncode == 0, res.stderr
    res = cli("keys", "--help", data_dir=tmp_path / "data")
    assert res.returncode == 0 and "recovery-key" in res.stdout


def test_status_while_starting(data_dir: Path) -> None:
    """`up` holds the lock but has not written its state yet: "starting", exit 4;
    written, but the homeserver does not answer: exit 5; only healthy is 0."""
    lock = ProcessLock(data_dir / "run" / "up.lock", what="test")
    # What a killed run leaves behind must not pass for a running platform.
    (data_dir / "run").mkdir(parents=True)
    (data_dir / "run" / "state.json").write_text(
        json.dumps({"homeserver_url": "http://127.0.0.1:9", "services": {}})
    )
    st = cli("status", data_dir=data_dir)
    assert st.returncode == 3 and "not running" in st.stdout
    (data_dir / "run" / "state.json").unlink()
    lock.acquire()
    try:
        st = cli("status", data_dir=data_dir)
        assert st.returncode == 4, st.stdout + st.stderr
        assert "starting" in st.stdout and "unknown" not in st.stdout
        as_json = cli("status", "--json", data_dir=data_dir)
        assert as_json.returncode == 4
        assert json.loads(as_json.stdout)["starting"] is True
        # The next `up` holds the lock before it removes what a killed run left:
        # a state file that names another pid is not this run's.
        (data_dir / "run" / "state.json").write_text(
            json.dumps({"pid": 1, "homeserver_url": "http://127.0.0.1:9", "services": {}})
        )
        st = cli("status", data_dir=data_dir)
        assert st.returncode == 4 and "127.0.0.1:9 " not in st.stdout, st.stdout + st.stderr
        # Started, but its homeserver does not answer: not healthy either.
        (data_dir / "run" / "state.json").write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "homeserver_url": f"http://127.0.0.1:{free_port()}",
                    "services": {},
                }
            )
        )
        st = cli("status", data_dir=data_dir)
        assert st.returncode == 5 and "NOT answering" in st.stdout, st.stdout + st.stderr
    finally:
        lock.release()


async def test_embedded_platform_on_another_port_any_account(
    data_dir: Path, tmp_path: Path
) -> None:
    """`up --port N` with [account] from the environment: the CLI follows the run file.

    Also: `status` is never 0 before the platform is ready, says "starting" while it
    starts, and a stale state file from a killed run is not taken for the platform.
    """
    port = free_port()
    (data_dir / "run").mkdir(parents=True)
    (data_dir / "run" / "state.json").write_text(
        json.dumps({"homeserver_url": "http://127.0.0.1:9", "services": {}})
    )
    env = clean_env(DATAROOMS_SERVICES="none")
    up = start_up(data_dir, "--port", str(port), env=env)
    try:
        codes = []
        while True:
            st = cli("status", data_dir=data_dir, env=env)
            codes.append(st.returncode)
            if st.returncode == 0:
                assert f"http://127.0.0.1:{port}" in st.stdout and "healthy" in st.stdout
                break
            assert st.returncode in (3, 4), st.stdout + st.stderr
            assert "127.0.0.1:9 " not in st.stdout
            assert up.proc.poll() is None, up.proc.communicate()
        assert 4 in codes, f"status never said starting: {codes}"
        url = f"http://127.0.0.1:{port}"
        assert up.state()["homeserver_url"] == url

        added = cli(
            "user", "add", "alice", "--password-stdin", data_dir=data_dir, input="pw-al1ce\n"
        )
        assert added.returncode == 0, added.stderr
        alice = {
            **env,
            "DATAROOMS_ACCOUNT_USER_ID": "@alice:localhost",
            "DATAROOMS_ACCOUNT_PASSWORD": "pw-al1ce",
        }
        who = cli("whoami", data_dir=data_dir, env=alice)
        assert who.returncode == 0, who.stderr
        assert "@alice:localhost" in who.stdout and url in who.stdout
        made = cli("room", "create", "project", "--name", "p", data_dir=data_dir, env=alice)
        assert made.returncode == 0, made.stderr
        room = made.stdout.split()[0]
        put, modules = cli_modules(
            tmp_path, "put", room, "k", '{"v": 1}', data_dir=data_dir, env=alice
        )
        assert put.returncode == 0, put.stderr
        assert not loaded(modules, SERVICE_MODULES), "a put imported the services"
        got = cli("get", room, "k", data_dir=data_dir, env=alice)
        assert got.returncode == 0 and json.loads(got.stdout) == {"v": 1}, got.stderr
    finally:
        up.interrupt()
        up.kill()


async def test_put_from_the_index_reaches_a_new_device_and_never_sends_in_clear(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    """Record commands open the CLI's device from its index and an incremental sync (no
    full-state sync): they see what others wrote since, a device the reader logged in
    since the writer's last run still gets the key, and nothing goes out in the clear."""
    alice = await homeserver.new_user("fast-alice")
    bob_user = await homeserver.new_user("fast-bob")
    bob = await open_client(bob_user)
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=alice.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=alice.access_token,
        # Share with every device the writer knows of: this test is about knowing it.
        DATAROOMS_TRUST_POLICY="all",
    )
    data_dir = tmp_path / "cli"

    def run(*args: str) -> str:
        res = cli(*args, data_dir=data_dir, env=env)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return res.stdout

    room = run("room", "create", "device", "--name", "pump").split()[0]
    run("room", "grant", room, bob.user_id, "write")
    await bob.sync_once()
    await bob.rooms.join(room)
    run("put", room, "first", '"before the new device"')

    # What others wrote since the CLI's last run reaches it (the incremental sync).
    await bob.records.put(room, "from-bob", {"n": 1})
    assert json.loads(run("get", room, "from-bob")) == {"n": 1}
    await bob.records.put(room, "from-bob", {"n": 2})
    assert "2" in run("history", room, "from-bob")
    assert json.loads(run("get", room)) == {"first": "before the new device", "from-bob": {"n": 2}}

    # Bob logs in a new device after the CLI's last sync.
    creds = Credentials(homeserver.base_url, bob.user_id, password=bob_user.password)
    async with await DataroomsClient.open(creds, tmp_path / "bob-second-device") as bob2:
        assert bob2.device_id != bob.device_id
        run("put", room, "second", '"after the new device"')
        await bob2.sync_once()
        assert (await bob2.records.get(room, "second")).value == "after the new device"

    # A room someone made without encryption: the CLI refuses to write into it.
    async with MatrixHttp(homeserver.base_url, bob.access_token) as http:
        clear = (
            await http.request(
                "POST",
                "/_matrix/client/v3/createRoom",
                json={"preset": "private_chat", "invite": [alice.user_id]},
            )
        )["room_id"]
    run("room", "join", clear)
    res = cli("put", clear, "k", '"secret"', data_dir=data_dir, env=env)
    assert res.returncode == 1 and "not end-to-end encrypted" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    await bob.sync_once()
    assert bob.index.latest(clear, "k") is None
