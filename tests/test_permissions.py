"""Nothing datarooms writes is readable by other local users (issue 11, items 2 and 3).

The data dir holds the homeserver's registration secret and database (access tokens), the
service accounts' credentials, and device stores whose index holds decrypted data (the state
bot's holds decrypted secure values). Each test runs with the common umask 022, as a user's
shell would, and then looks for any file or directory that the group or others may open.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarooms.homeserver.embedded import free_port
from datarooms.testing import TestHomeserver
from tests._cli import cli, start_up


@pytest.fixture(autouse=True)
def _user_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _open_to_others(root: Path) -> list[str]:
    """Like ``find ROOT -perm /g+rwx,o+rwx``: every path the group or others can use."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                found.append(f"{path.relative_to(root)} {oct(stat.S_IMODE(st.st_mode))}")
    return sorted(set(found))


def test_platform_data_dir_is_private_and_repaired(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)  # noqa: S103 - as `mkdir` in a user's shell would leave it
    port = free_port()
    up = start_up(data_dir, "--port", str(port))
    try:
        up.wait_running()
        # A device store, a record and the services' stores (state bot, rooms bot, MCP, chain).
        room = cli("room", "create", "device", "--name", "perm", data_dir=data_dir)
        assert room.returncode == 0, room.stderr
        room_id = room.stdout.split()[0]
        put = cli("put", room_id, "temperature", '{"c": 21.5}', data_dir=data_dir)
        assert put.returncode == 0, put.stderr
        assert (data_dir / "synapse" / "homeserver.yaml").exists()
        assert (data_dir / "synapse" / "homeserver.db").exists()
        assert any((data_dir / "devices").rglob("index.db")), "the CLI device has an index"
        assert _open_to_others(data_dir) == []
        code, _, err = up.interrupt()
        assert code == 0, err
    finally:
        up.kill()

    # Someone loosens the secrets: the next start repairs them (and says so in its log).
    secrets = [
        data_dir / "synapse" / "homeserver.yaml",
        data_dir / "synapse" / "homeserver.db",
        data_dir / "credentials.json",
    ]
    for path in [data_dir, data_dir / "synapse", *secrets]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert _open_to_others(data_dir) != []
    up = start_up(data_dir, "--port", str(port))
    try:
        up.wait_running()
        assert _open_to_others(data_dir) == []
        up.interrupt()
    finally:
        up.kill()


async def test_sdk_device_and_outbox_stores_are_private(
    homeserver: TestHomeserver, tmp_path: Path
) -> None:
    from datarooms import Credentials, DataroomsClient

    user = await homeserver.new_user("perm")
    parent = tmp_path / "devices"
    parent.mkdir(mode=0o755)
    os.chmod(parent, 0o755)  # noqa: S103 - a user's umask-022 directory
    store = parent / "nested" / "device"  # parents made here must be private too
    creds = Credentials(homeserver.base_url, user.user_id, user.access_token)
    async with await DataroomsClient.open(creds, store) as dr:
        room = await dr.rooms.create("device", name="perm")
        await dr.records.put(room.room_id, "k", {"v": 1})
        await dr.telemetry.append(room.room_id, "temp", 21.5)
        await dr.telemetry.flush(timeout=60)
    assert (store / "index.db").exists() and any((store / "crypto").iterdir())
    assert any(store.rglob("*outbox*")), "the telemetry outbox lives in the device store"
    assert _open_to_others(parent / "nested") == []

    # An existing store someone loosened is tightened when the device opens.
    os.chmod(store, 0o755)  # noqa: S103 - loosened on purpose
    os.chmod(store / "index.db", 0o644)
    async with await DataroomsClient.open(creds, store, initial_sync=False):
        pass
    assert _open_to_others(parent / "nested") == []
