"""`datarooms backup` of a running platform, `datarooms restore` on a fresh data dir:
every record, file and entity room is back and the rooms bot carries on; a bad
passphrase, a damaged archive, a non-empty or running target are refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from datarooms.homeserver.embedded import free_port
from tests._cli import clean_env, cli, entity_rooms, start_up, wait_entity_rooms

PASS = "correct horse battery staple\n"


def test_backup_a_running_platform_and_restore_it_elsewhere(tmp_path: Path) -> None:
    data_dir = tmp_path / "org"
    env = clean_env(DATAROOMS_SERVICES="devchain,roomsbot")
    up = start_up(data_dir, "--port", str(free_port()), env=env)
    payload = tmp_path / "report.bin"
    payload.write_bytes(os.urandom(300_000))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    try:
        up.wait_running()

        def run(*args: str, stdin: str | None = None) -> str:
            res = cli(*args, data_dir=data_dir, env=env, input=stdin)
            assert res.returncode == 0, f"{args}: {res.stderr}"
            return res.stdout

        room = run("room", "create", "project", "--name", "kept").split()[0]
        for i in range(5):
            run("put", room, "reading", json.dumps({"i": i}))
        file_event = run("file", "put", room, str(payload)).splitlines()[-1].split()[0]
        run("entity", "register")
        before = wait_entity_rooms(data_dir, env, 1)

        # While it runs: a passphrase archive, and one for an age recipient.
        archive = tmp_path / "backups" / "org.tar.age"
        archive.parent.mkdir()
        out = run("backup", str(archive), "--passphrase-stdin", stdin=PASS)
        assert "databases copied online" in out, out
        assert archive.stat().st_mode & 0o077 == 0
        from pyrage import x25519

        identity = x25519.Identity.generate()
        key_file = tmp_path / "key.txt"
        key_file.write_text(f"# a key\n{identity}\n")
        to_key = tmp_path / "backups" / "org-key.tar.age"
        run("backup", str(to_key), "--recipient", str(identity.to_public()))
        assert to_key.read_bytes().startswith(b"age-encryption.org/v1")
        assert payload.read_bytes()[:4096] not in archive.read_bytes()
        again = cli(
            "backup", str(archive), "--passphrase-stdin", data_dir=data_dir, env=env, input=PASS
        )
        assert again.returncode == 1 and "exists" in again.stderr

        # Not onto a running platform.
        busy = cli(
            "restore", str(archive), "--passphrase-stdin", data_dir=data_dir, env=env, input=PASS
        )
        assert busy.returncode == 1 and "running" in busy.stderr, busy.stderr
    finally:
        up.interrupt()
        up.kill()

    # The machine is lost.
    shutil.rmtree(data_dir)
    new_dir = tmp_path / "new-machine" / "org"

    def restore(archive_path: Path, *extra: str, stdin: str | None = PASS, target: Path = new_dir):
        return cli("restore", str(archive_path), *extra, data_dir=target, env=env, input=stdin)

    wrong = restore(archive, "--passphrase-stdin", stdin="not it\n")
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr, wrong.stderr
    assert not new_dir.exists()
    no_key = restore(to_key, stdin=None)
    assert no_key.returncode == 1 and "identity" in no_key.stderr
    # A damaged archive (one byte in the middle) is refused, and leaves nothing behind.
    damaged = tmp_path / "damaged.tar.age"
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    damaged.write_bytes(bytes(raw))
    bad = restore(damaged, "--passphrase-stdin")
    assert bad.returncode == 1 and "cannot decrypt" in bad.stderr, bad.stderr
    assert not new_dir.exists() and not list(new_dir.parent.glob(".*restoring*"))
    # An archive cut short.
    short = tmp_path / "short.tar.age"
    short.write_bytes(archive.read_bytes()[: len(raw) - 100])
    assert restore(short, "--passphrase-stdin").returncode == 1
    assert not new_dir.exists()

    # The age-recipient archive restores with the identity; then the passphrase one
    # elsewhere is refused on the non-empty target.
    restored = restore(to_key, "--identity", str(key_file), stdin=None)
    assert restored.returncode == 0, restored.stderr
    full = restore(archive, "--passphrase-stdin")
    assert full.returncode == 1 and "not empty" in full.stderr
    assert not (new_dir / "run" / "cli.sock").exists()

    up2 = start_up(new_dir, "--port", str(free_port()), env=env)
    try:
        up2.wait_running()

        def run2(*args: str) -> str:
            res = cli(*args, data_dir=new_dir, env=env)
            assert res.returncode == 0, f"{args}: {res.stderr}"
            return res.stdout

        assert json.loads(run2("get", room, "reading")) == {"i": 4}
        assert "5" in run2("history", room, "reading")
        got = tmp_path / "got.bin"
        run2("file", "get", room, file_event, str(got))
        assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
        assert entity_rooms(new_dir, env) == before
        # The rooms bot carries on from where it was: a new entity gets its room.
        run2("entity", "register")
        after = wait_entity_rooms(new_dir, env, 2)
        assert {k: v for k, v in after.items() if k in before} == before
    finally:
        up2.interrupt()
        up2.kill()


def test_backup_refuses_bad_requests(tmp_path: Path) -> None:
    env = clean_env()
    data_dir = tmp_path / "data"
    (data_dir / "run").mkdir(parents=True)
    inside = cli(
        "backup",
        str(data_dir / "b.age"),
        "--passphrase-stdin",
        data_dir=data_dir,
        env=env,
        input=PASS,
    )
    assert inside.returncode == 1 and "outside the data directory" in inside.stderr
    neither = cli("backup", str(tmp_path / "b.age"), data_dir=data_dir, env=env)
    assert neither.returncode == 1 and "recipients" in neither.stderr
    bad_key = cli("backup", str(tmp_path / "b.age"), "-r", "age1nope", data_dir=data_dir, env=env)
    assert bad_key.returncode == 1 and "not an age recipient" in bad_key.stderr
    not_ours = tmp_path / "x.tar.age"
    not_ours.write_bytes(b"hello")
    res = cli(
        "restore", str(not_ours), "--passphrase-stdin", data_dir=tmp_path / "t", env=env, input=PASS
    )
    assert res.returncode == 1 and "not a datarooms backup" in res.stderr


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "data/../../evil"])
def test_restore_refuses_paths_outside_the_data_dir(tmp_path: Path, name: str) -> None:
    import io
    import tarfile

    import pyrage
    from pyrage import x25519

    from datarooms.errors import DataroomsError
    from datarooms.services.backup import restore

    identity = x25519.Identity.generate()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    archive = tmp_path / "evil.tar.age"
    archive.write_bytes(pyrage.encrypt(buf.getvalue(), [identity.to_public()]))
    with pytest.raises(DataroomsError, match="outside the data dir"):
        restore(archive, tmp_path / "target", identities=[str(identity)])
    assert not (tmp_path / "target").exists() and not (tmp_path / "evil").exists()
