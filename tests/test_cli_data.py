"""The data-room CLI commands, run as a user would, against the real homeserver."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from datarooms.testing import TestHomeserver
from tests._cli import DATAROOMS, clean_env, cli


async def test_cli_rooms_records_files_messages(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    alice = await homeserver.new_user("cli-alice")
    bob = await open_client(await homeserver.new_user("cli-bob"))
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=alice.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=alice.access_token,
    )
    data_dir = tmp_path / "cli"

    def run(*args: str, input: str | None = None) -> str:
        res = cli(*args, data_dir=data_dir, env=env, input=input)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return res.stdout

    room = run("room", "create", "device", "--name", "pump").split()[0]
    assert room.startswith("!")
    run("room", "grant", room, bob.user_id, "read")
    run("put", room, "temperature", '{"c": 21.5}')
    run("put", room, "temperature", "-", input='{"c": 22}')
    run("put", room, "note", "free text", "--text")
    assert json.loads(run("get", room, "temperature")) == {"c": 22}
    assert json.loads(run("get", room)) == {"temperature": {"c": 22}, "note": "free text"}
    assert "2" in run("history", room, "temperature")

    bad = cli("put", room, "k", "{not json", data_dir=data_dir, env=env)
    assert bad.returncode == 1 and "not JSON" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("get", room, "nope", data_dir=data_dir, env=env)
    assert missing.returncode == 1 and "no record 'nope'" in missing.stderr

    src = tmp_path / "report.pdf"
    src.write_bytes(os.urandom(300_000))
    out = run("file", "put", room, str(src))
    event_id = next(w for w in out.split() if w.startswith("$"))
    assert event_id.startswith("$")
    dest = tmp_path / "out"
    dest.mkdir()
    run("file", "get", room, event_id, str(dest))
    assert (dest / "report.pdf").read_bytes() == src.read_bytes()

    # Bob (an SDK device) reads what the CLI wrote.
    await bob.sync_once()
    await bob.rooms.join(room)
    assert (await bob.records.get(room, "temperature")).value == {"c": 22}

    members = run("room", "members", room)
    assert alice.user_id in members and bob.user_id in members and "read" in members

    # tail prints a message sent while it runs. It follows the room once its sync loop
    # runs, which it does not announce: send until it shows (no fixed wait).
    proc = subprocess.Popen(
        [DATAROOMS, "--data-dir", str(data_dir), "tail", room, "--json", "--recent", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            e["content"].get("body") == "hello from the CLI" for e in seen
        ):
            run("send", room, "hello from the CLI")
            patience = time.monotonic() + 3
            while time.monotonic() < patience:
                ready, _, _ = select.select([proc.stdout], [], [], 0.2)
                if ready:
                    line = proc.stdout.readline()
                    assert line, f"tail exited: {proc.stderr.read() if proc.stderr else ''}"
                    seen.append(json.loads(line))
                    break
        assert any(
            e["content"].get("body") == "hello from the CLI" and e["encrypted"] for e in seen
        ), seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
