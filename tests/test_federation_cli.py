"""Two organisations on one machine, run as a user would: two `datarooms up`, federation on,
one local CA (docs/federation.md), and the CLI on each side."""

from __future__ import annotations

from pathlib import Path

import pytest

from datarooms.homeserver.embedded import free_port
from tests._cli import UpProcess, clean_env, cli, start_up

pytestmark = pytest.mark.xdist_group("federation")


def _org(tmp_path: Path, name: str, ip: str, peer_ip: str, ports: dict[str, int]) -> dict[str, str]:
    return clean_env(
        DATAROOMS_SERVICES="none",
        DATAROOMS_HOMESERVER_PORT=str(free_port()),
        DATAROOMS_HOMESERVER_SERVER_NAME=f"{ip}:{ports[name]}",
        DATAROOMS_FEDERATION_ENABLED="true",
        DATAROOMS_FEDERATION_PORT=str(ports[name]),
        DATAROOMS_FEDERATION_ALLOW=f"{peer_ip}:{ports['peer' + name]}",
        DATAROOMS_FEDERATION_CA_DIR=str(tmp_path / "ca"),
    )


def test_two_organisations_share_a_data_room_from_the_cli(tmp_path: Path) -> None:
    pa, pb = free_port("127.0.0.5"), free_port("127.0.0.6")
    ports = {"a": pa, "b": pb, "peera": pb, "peerb": pa}
    env_a = _org(tmp_path, "a", "127.0.0.5", "127.0.0.6", ports)
    env_b = _org(tmp_path, "b", "127.0.0.6", "127.0.0.5", ports)
    dir_a, dir_b = tmp_path / "org-a", tmp_path / "org-b"
    ups: list[UpProcess] = [start_up(dir_a, env=env_a), start_up(dir_b, env=env_b)]
    try:
        info_a, info_b = (up.wait_running() for up in ups)
        assert info_a["federation_url"] == f"https://127.0.0.5:{pa}"
        assert info_a["federates_with"] == f"127.0.0.6:{pb}"
        status = cli("status", data_dir=dir_a, env=env_a)
        assert status.returncode == 0 and f"federation  https://127.0.0.5:{pa}" in status.stdout
        bob = str(info_b["service_user"])
        # Org b's CLI device exists before the grant, so the history's key bundle reaches it.
        assert cli("room", "list", data_dir=dir_b, env=env_b).returncode == 0

        made = cli(
            "room",
            "create",
            "device",
            "--name",
            "pump",
            "--server",
            f"127.0.0.6:{pb}",
            data_dir=dir_a,
            env=env_a,
        )
        assert made.returncode == 0, made.stderr
        room = made.stdout.splitlines()[0].strip()
        put = cli("put", room, "temperature", '{"c": 21.5}', data_dir=dir_a, env=env_a)
        assert put.returncode == 0, put.stderr
        grant = cli("room", "grant", room, bob, "write", data_dir=dir_a, env=env_a)
        assert grant.returncode == 0, grant.stderr

        joined = cli("room", "join", room, data_dir=dir_b, env=env_b)
        assert joined.returncode == 0, joined.stderr
        got = cli("get", room, data_dir=dir_b, env=env_b)
        assert got.returncode == 0 and '"c": 21.5' in got.stdout.replace("\n", " "), got

        members = cli("room", "members", room, data_dir=dir_a, env=env_a)
        assert members.returncode == 0, members.stderr
        assert f"127.0.0.5:{pa}" in members.stdout and f"127.0.0.6:{pb}" in members.stdout
        assert "server ACL: allow 127.0.0.5" in members.stdout

        bad = cli("room", "allow-server", room, "not a server", data_dir=dir_a, env=env_a)
        assert bad.returncode != 0 and "is not a server name" in bad.stderr
    finally:
        for up in ups:
            code, _out, err = up.interrupt()
            assert code == 0, err
    assert not (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077
