"""`datarooms keys ...` as a user runs it: recovery key once, then a new device restores."""

from __future__ import annotations

import re
from pathlib import Path

from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli


async def test_cli_recovery_key_and_restore(homeserver: TestHomeserver, tmp_path: Path) -> None:
    user = await homeserver.new_user("keys")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_PASSWORD=user.password,
    )
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"

    def run(data_dir: Path, *args: str, input: str | None = None) -> str:
        res = cli(*args, data_dir=data_dir, env=env, input=input)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return res.stdout

    room = run(laptop, "room", "create", "verification").split()[0]
    run(laptop, "put", room, "evidence", '{"sha256": "ab12"}')
    out = run(laptop, "keys", "recovery-key")
    match = re.search(r"((?:[1-9A-HJ-NP-Za-km-z]{4} ){11}[1-9A-HJ-NP-Za-km-z]{1,4})", out)
    assert match, out
    key = match.group(1)
    status = run(laptop, "keys", "status")
    assert "device signed    yes" in status and "key backup       yes" in status

    # A second device of the same account: not signed, cannot read, until restored.
    assert "device signed    no" in run(phone, "keys", "status")
    bad = cli(
        "keys",
        "restore",
        "--recovery-key-stdin",
        data_dir=phone,
        env=env,
        input="EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d\n",
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    run(phone, "keys", "restore", "--recovery-key-stdin", input=key + "\n")
    assert "device signed    yes" in run(phone, "keys", "status")
    assert '"ab12"' in run(phone, "get", room, "evidence")
