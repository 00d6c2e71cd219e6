"""`datarooms doc show | edit | watch`, run as a user would, against the real homeserver."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli


async def test_doc_edit_show_watch(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    user = await homeserver.new_user("doc-cli")  # the CLI is this account's only device
    bob = await open_client(await homeserver.new_user("doc-cli-bob"))
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "draft, edited in the editor" > "$1"\n')
    editor.chmod(0o700)
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=user.access_token,
        EDITOR=str(editor),
    )
    data_dir = tmp_path / "cli"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, data_dir=data_dir, env=env)

    made = run("room", "create", "collaboration")
    assert made.returncode == 0, made.stderr
    room = made.stdout.split()[0]
    granted = run("room", "grant", room, bob.user_id, "write")
    assert granted.returncode == 0, granted.stderr
    await bob.sync_once()
    await bob.rooms.join(room)

    res = await asyncio.to_thread(run, "doc", "edit", room, "--set", "fields/status", '"open"')
    assert res.returncode == 0, res.stderr
    res = await asyncio.to_thread(run, "doc", "edit", room)  # $EDITOR on the text "body"
    assert res.returncode == 0, res.stderr
    bad = await asyncio.to_thread(run, "doc", "edit", room, "--set", "/", "1")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "ROOT" in bad.stderr or "path" in bad.stderr

    doc = await bob.docs.open(room, batch_ms=0)
    assert doc.to_json() == {"body": "draft, edited in the editor", "fields": {"status": "open"}}

    # `doc watch` prints the document, then again after bob's edit; `doc show` reads it.
    watcher = subprocess.Popen(
        [*_cmd(data_dir), "doc", "watch", room, "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = await asyncio.to_thread(watcher.stdout.readline)  # type: ignore[union-attr]
        assert json.loads(first)["fields"] == {"status": "open"}, watcher.stderr
        doc.replace_text("body", "final, by bob")
        await doc.flush()
        out, err = await asyncio.to_thread(watcher.communicate, timeout=60)
        assert watcher.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["body"] == "final, by bob"
    finally:
        if watcher.poll() is None:
            watcher.kill()
    shown = await asyncio.to_thread(run, "doc", "show", room)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"body": "final, by bob", "fields": {"status": "open"}}


def _cmd(data_dir: Path) -> list[str]:
    from tests._cli import DATAROOMS

    return [DATAROOMS, "--data-dir", str(data_dir)]
