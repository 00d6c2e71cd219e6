"""`datarooms claim ...` and `datarooms audit ...`, run as a user would."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli
from tests._roomsbot import running_devchain


async def test_cli_claims_and_audit(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    alice = await homeserver.new_user("cli-verifier")
    bob = await open_client(await homeserver.new_user("cli-reader"))
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=alice.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=alice.access_token,
    )
    data_dir = tmp_path / "cli"

    async def run(*args: str, code: int = 0) -> str:
        res = await asyncio.to_thread(cli, *args, data_dir=data_dir, env=env)
        assert res.returncode == code, f"{args}: {res.stdout} {res.stderr}"
        assert "Traceback" not in res.stderr
        return res.stdout

    room = (await run("room", "create", "verification", "--name", "evidence")).split()[0]
    await run("room", "grant", room, bob.user_id, "read")
    await run("put", room, "meter", '{"kwh": 3}')
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"\xff\xd8 a photo")
    photo = next(w for w in (await run("file", "put", room, str(src))).split() if w.startswith("$"))
    issued = json.loads(
        await run(
            "claim",
            "issue",
            room,
            "did:ixo:entity:cli",
            "MeterChecked",
            "--data",
            '{"kwh": 3}',
            "--evidence-file",
            photo,
            "--evidence-record",
            "meter",
            "--collection",
            "meters",
        )
    )
    assert issued["cid"].startswith("bagaaiera") and issued["issuer"].startswith("did:key:")
    verdict = json.loads(await run("claim", "verify", room, issued["cid"]))
    assert verdict["ok"] is True and len(verdict["checked"]) == 4
    listed = json.loads(await run("claim", "list", room, "--collection", "meters"))
    assert [c["cid"] for c in listed] == [issued["cid"]]
    missing = json.loads(await run("claim", "verify", room, "bagaaieranotthere", code=1))
    assert missing["reason"] == "not_found"

    async with running_devchain(tmp_path / "chain") as srv:
        anchored = json.loads(await run("audit", "anchor", room, "--rpc", srv.url))
        assert anchored["height"] >= 1 and anchored["first_seq"] == 1
        log = await run("audit", "log", room)
        assert "m.room.create" in log and f"height {anchored['height']}" in log
        bundle = tmp_path / "bundle.json"
        await run("audit", "export", room, str(bundle), "--rpc", srv.url)
        assert bundle.stat().st_mode & 0o077 == 0, "a bundle discloses the room: private"
        report = json.loads(await run("audit", "verify", str(bundle), "--rpc", srv.url))
    assert report["verdict"] == "ok" and report["layers"]["claims"]["checked"] == 1
    # Offline, the validator key taken from the bundle itself: verified but said so.
    offline = json.loads(await run("audit", "verify", str(bundle), code=2))
    assert offline["breaks"] == [] and any("validator key" in u for u in offline["unverified"])
