"""The CLI's device held by `datarooms up`: record and message commands run on it
over run/cli.sock, without importing typer, nio or the SDK, and print exactly what
the in-process path prints; one process uses a device at a time."""

from __future__ import annotations

import json
import os
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.config import load_settings
from datarooms.errors import DataroomsError, DeviceBusyError
from datarooms.homeserver.embedded import free_port
from datarooms.services import clidevice
from datarooms.services.platform import PlatformContext
from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli, start_up
from tests.test_cli_fast import SERVICE_MODULES, cli_modules, loaded

#: What a served command must not import: the command-line framework and the E2EE stack.
HEAVY = (*SERVICE_MODULES, "typer", "nio", "vodozemac", "aiohttp", "datarooms.sdk")


def test_record_commands_run_on_the_platforms_device(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(DATAROOMS_SERVICES="none")
    local = {**env, clidevice.ENV_MODE: "local"}
    up = start_up(data_dir, "--port", str(free_port()), env=env)
    try:
        up.wait_running()
        sock = data_dir / "run" / "cli.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600

        def run(*args: str, e: dict[str, str] = env, stdin: str | None = None) -> str:
            res = cli(*args, data_dir=data_dir, env=e, input=stdin)
            assert res.returncode == 0, f"{args}: {res.stderr}"
            return res.stdout

        room = run("room", "create", "project", "--name", "p").split()[0]
        put, modules = cli_modules(
            tmp_path, "put", room, "k", '{"v": 1}', data_dir=data_dir, env=env
        )
        assert put.returncode == 0, put.stderr
        assert put.stdout.startswith("k v1 $")
        assert not loaded(modules, HEAVY), loaded(modules, HEAVY)

        # The same output, served or in-process, for every command and its options.
        run("put", room, "--text", "note", "plain words")
        run("put", room, "piped", "-", stdin='{"from": "stdin"}')
        run("put", room, "k", '{"v": 2}', "--txn", "t-1", e=local)
        for args in (
            ("get", room, "k"),
            ("get", room, "k", "--json"),
            ("get", room),
            ("get", "--json", room),
            ("history", room, "k"),
            ("history", room, "k", "--limit", "1"),
            ("get", room, "piped"),
            ("get", room, "note"),
        ):
            assert run(*args) == run(*args, e=local), args
        # A repeated transaction is the same version either way.
        again = run("put", room, "k", '{"v": 2}', "--txn", "t-1")
        assert again.startswith("k v2 "), again
        assert json.loads(run("get", room, "k")) == {"v": 2}

        # Errors: the same message and exit code.
        served = cli("get", room, "missing", data_dir=data_dir, env=env)
        here = cli("get", room, "missing", data_dir=data_dir, env=local)
        assert served.returncode == here.returncode == 1
        assert served.stderr == here.stderr and "no record 'missing'" in served.stderr
        # What the fast parser does not know goes to the full CLI, which says what is wrong.
        bad = cli("put", room, "k", data_dir=data_dir, env=env)
        assert bad.returncode == 2 and "Missing argument" in bad.stderr

        # An in-process command takes the device from the platform and gives it back.
        assert "server ACL" in run("room", "members", room)
        put, modules = cli_modules(
            tmp_path, "put", room, "k", '{"v": 3}', data_dir=data_dir, env=env
        )
        assert put.returncode == 0 and put.stdout.startswith("k v3 "), put.stderr
        assert not loaded(modules, HEAVY)

        # Processes in parallel, served and in-process mixed: each write lands once.
        def put_n(n: int) -> str:
            return run("put", room, f"p{n}", str(n), e=local if n % 2 else env)

        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(put_n, range(6)))
        assert all(o.startswith(f"p{n} v1 $") for n, o in enumerate(outs)), outs
        twin = json.loads(run("get", room))
        assert {k: twin[k] for k in twin if k.startswith("p")} == {
            **{f"p{n}": n for n in range(6)},
            "piped": {"from": "stdin"},
        }
        assert run("send", room, "hello").startswith("$")
    finally:
        up.interrupt()
        up.kill()
    assert not (data_dir / "run" / "cli.sock").exists()


async def test_a_stale_socket_falls_back_to_the_process(
    homeserver: TestHomeserver, tmp_path: Path
) -> None:
    """A killed platform leaves its socket behind: commands run in-process, nothing lost."""
    alice = await homeserver.new_user("stale-alice")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=alice.user_id,
        DATAROOMS_ACCOUNT_PASSWORD=alice.password,
    )
    data_dir = tmp_path / "cli"
    made = cli("room", "create", "project", "--name", "s", data_dir=data_dir, env=env)
    assert made.returncode == 0, made.stderr
    room = made.stdout.split()[0]
    (data_dir / "run").mkdir(exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(data_dir / "run" / "cli.sock"))
    stale.close()
    put = cli("put", room, "k", "1", data_dir=data_dir, env=env)
    assert put.returncode == 0 and put.stdout.startswith("k v1 "), put.stderr
    got = cli("get", room, "k", data_dir=data_dir, env=env)
    assert got.returncode == 0 and got.stdout.strip() == "1", got.stderr


async def test_only_this_user_may_ask(homeserver: TestHomeserver, tmp_path: Path) -> None:
    """The platform checks each connection's peer (SO_PEERCRED): a process of another
    user is refused before anything runs."""
    alice = await homeserver.new_user("peer-alice")
    settings = load_settings(data_dir=tmp_path / "data")
    settings.run_dir.mkdir(parents=True)
    creds = Credentials(homeserver.base_url, alice.user_id, password=alice.password)
    ctx = PlatformContext(settings, homeserver.base_url, creds, None)
    service = clidevice.CliDeviceService(uid=os.getuid() + 1)  # some other user's platform
    await service.start(ctx)
    try:
        with pytest.raises(DataroomsError, match="refused"):
            await _call_in_thread(settings, creds)
    finally:
        await service.stop()
    assert not clidevice.socket_path(settings).exists()


async def _call_in_thread(settings, creds):  # type: ignore[no-untyped-def]
    import asyncio

    return await asyncio.to_thread(
        clidevice.call, settings, creds, "get", {"room": "!r:x", "key": "k"}
    )


async def test_an_exclusive_user_waits_for_no_one(
    homeserver: TestHomeserver, tmp_path: Path
) -> None:
    """Commands share a device; the platform's copy opens it only when nobody has it."""
    alice = await homeserver.new_user("lock-alice")
    creds = Credentials(homeserver.base_url, alice.user_id, password=alice.password)
    store = tmp_path / "device"
    async with await DataroomsClient.open(creds, store, share="shared"):
        async with await DataroomsClient.open(creds, store, share="shared", initial_sync=False):
            pass  # two commands at once, as ever
        with pytest.raises(DeviceBusyError, match="in use by another datarooms process"):
            await DataroomsClient.open(creds, store, share="exclusive")
    async with await DataroomsClient.open(creds, store, share="exclusive"):
        with pytest.raises(DeviceBusyError, match=r"waited 0.3 s"):
            await DataroomsClient.open(creds, store, share="shared", share_wait=0.3)
    async with await DataroomsClient.open(creds, store, share="exclusive") as again:
        assert again.user_id == alice.user_id
