"""Retention against the real homeserver: a dry run says exactly what would go; the
cleanup redacts old record versions (never a key's latest) and old files, deletes
their media on our homeserver, every device forgets them; a legal hold blocks it;
a policy that would delete everything is refused."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from datarooms import AccessDeniedError, ValidationError
from datarooms.events import RETENTION
from datarooms.sdk.retention import DAY_MS, RetentionPolicy
from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli


async def _media_status(homeserver: TestHomeserver, token: str, url: str) -> int:
    server, _, media_id = url[len("mxc://") :].partition("/")
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"{homeserver.base_url}/_matrix/client/v1/media/download/{server}/{media_id}",
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            return r.status


async def test_cleanup_by_policy(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    alice_user = await homeserver.new_user("ret-alice", admin=True)  # a server admin
    alice = await open_client(alice_user)
    bob = await open_client(await homeserver.new_user("ret-bob"))
    room = (await alice.rooms.create("device", name="kept short")).room_id
    await alice.rooms.grant(room, bob.user_id, "write")
    await bob.sync_once()
    await bob.rooms.join(room)
    for v in range(3):
        await alice.records.put(room, "temp", v)
    await bob.records.put(room, "temp", 3)  # the latest: stays
    await bob.records.put(room, "mode", "old")  # bob's own old version
    await alice.records.put(room, "mode", "new")
    ref = await alice.files.put(room, b"old report", filename="old.txt")
    url = alice.files.list(room)[0].url
    assert url.startswith("mxc://")
    later = int(time.time() * 1000) + 2 * DAY_MS

    with pytest.raises(ValidationError, match="would delete everything"):
        await alice.retention.set_policy(room, RetentionPolicy(record_versions_days=0))
    with pytest.raises(AccessDeniedError):
        await bob.retention.set_policy(room, RetentionPolicy(files_days=1))
    assert (await alice.retention.cleanup(room)).refused == (
        "the room has no retention policy: everything is kept"
    )

    await alice.retention.set_policy(room, RetentionPolicy(1, 1, legal_hold=True))
    held = await alice.retention.cleanup(room, now_ms=later)
    assert held.refused and "legal hold" in held.refused and held.redacted == 0
    await alice.retention.set_policy(room, RetentionPolicy(1, 1))
    await bob.sync_once()
    assert bob.retention.policy(room) == RetentionPolicy(1, 1)
    assert bob.index.state(room, RETENTION) == {
        "legal_hold": False,
        "record_versions_days": 1,
        "files_days": 1,
    }

    # Today nothing is a day old.
    assert not (await alice.retention.cleanup(room, dry_run=True)).items
    # A dry run two days on: exactly what would go, nothing changed.
    dry = await alice.retention.cleanup(room, dry_run=True, now_ms=later)
    assert sorted((i.kind, i.what) for i in dry.items) == [
        ("file", "old.txt"),
        ("record_version", "mode"),
        ("record_version", "temp"),
        ("record_version", "temp"),
        ("record_version", "temp"),
    ]
    assert dry.bytes == len(b"old report") and dry.redacted == 0
    assert len(await alice.records.history(room, "temp")) == 4
    # Bob (write, not admin) may redact only his own.
    assert [i.what for i in bob.retention.plan(room, now_ms=later).items] == ["mode"]
    assert len(bob.retention.plan(room, now_ms=later).not_allowed) == 4

    done = await alice.retention.cleanup(room, now_ms=later)
    assert done.redacted == 5 and done.media_deleted == 1 and done.media_kept == 0
    assert [r.value for r in await alice.records.history(room, "temp")] == [3]
    assert (await alice.records.get(room, "mode")).value == "new"
    assert alice.files.list(room) == []
    # Every device forgets them when the redactions reach it; the server keeps no content.
    await bob.sync_once()
    assert [r.value for r in await bob.records.history(room, "temp")] == [3]
    assert bob.files.list(room) == []
    async with alice.http() as http:
        raw = await http.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{ref.event_id}")
    assert raw["content"] == {} and "redacted_because" in raw.get("unsigned", {})
    assert await _media_status(homeserver, alice_user.access_token, url) == 404
    # Run again (after an interruption, say): nothing left, nothing done twice.
    again = await alice.retention.cleanup(room, now_ms=later)
    assert again.items == [] and again.redacted == 0


async def test_retention_from_the_cli(homeserver: TestHomeserver, tmp_path: Path) -> None:
    alice = await homeserver.new_user("retc-alice")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=alice.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=alice.access_token,
    )
    data_dir = tmp_path / "cli"

    def run(*args: str, code: int = 0) -> str:
        res = cli(*args, data_dir=data_dir, env=env)
        assert res.returncode == code, f"{args}: {res.stdout} {res.stderr}"
        return res.stdout + res.stderr

    room = run("room", "create", "project", "--name", "r").split()[0]
    run("put", room, "k", "1")
    run("put", room, "k", "2")
    assert "no retention policy" in run("room", "retention", room)
    assert "would delete everything" in run(
        "room", "retention", room, "--record-versions-days", "0", code=1
    )
    out = run("room", "retention", room, "--record-versions-days", "30", "--legal-hold")
    assert "record versions 30 days, files kept; LEGAL HOLD" in out
    assert "legal hold" in run("cleanup", room, "--dry-run")
    run("room", "retention", room, "--no-legal-hold")
    assert "0 would go" in run("cleanup", "--all", "--dry-run")
    assert "name the rooms" in run("cleanup", code=1)
