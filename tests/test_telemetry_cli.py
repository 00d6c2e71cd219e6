"""`datarooms telemetry push | query | tail`, run as a user would, against the real homeserver."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datarooms.cli.telemetry import parse_duration, parse_time
from datarooms.errors import ValidationError
from datarooms.sdk.telemetry import Telemetry
from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli

CLI = [sys.executable, "-m", "datarooms.cli"]


def test_time_parsing() -> None:
    now = 1_700_000_000_000
    assert parse_time("now", now) == now
    assert parse_time("-15m", now) == now - 900_000
    assert parse_time("-1.5h", now) == now - 5_400_000
    assert parse_time("1700000000123", now) == 1_700_000_000_123
    assert parse_time("2023-11-14T22:13:20Z", now) == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20.5+00:00", now) == 1_700_000_000_500
    assert parse_duration("1m") == 60_000 and parse_duration("250ms") == 250
    with pytest.raises(ValidationError, match="cannot read the time"):
        parse_time("yesterday", now)
    with pytest.raises(ValidationError, match="cannot read the duration"):
        parse_duration("0s")


async def test_push_query_tail(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    user = await homeserver.new_user("tlm-cli")  # the CLI is this account's only device
    bob = await open_client(await homeserver.new_user("tlm-cli-bob"))
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=user.access_token,
    )
    data_dir = tmp_path / "cli"
    made = cli("room", "create", "device", data_dir=data_dir, env=env)
    assert made.returncode == 0, made.stderr
    room = made.stdout.split()[0]
    granted = cli("room", "grant", room, bob.user_id, "write", data_dir=data_dir, env=env)
    assert granted.returncode == 0, granted.stderr
    await bob.sync_once()
    await bob.rooms.join(room)

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return cli("telemetry", *args, data_dir=data_dir, env=env, input=input)

    csv_in = "ts,metric,value,site\n" + "".join(
        f"{1_700_000_000_000 + i * 1000},temp,{20 + i / 100},{'a' if i % 2 else 'b'}\n"
        for i in range(5000)
    )
    res = run("push", room, input=csv_in)
    assert res.returncode == 0, res.stderr
    assert "pushed 5,000 samples" in res.stderr and "acknowledged" in res.stderr
    assert "samples/s" in res.stderr  # progress and rate

    jsonl = "".join(
        json.dumps({"ts": "2023-11-14T22:13:20Z", "metric": "rpm", "value": v, "tags": {"m": "1"}})
        + "\n"
        for v in (1500, 1510)
    )
    res = run("push", room, "--format", "jsonl", input=jsonl)
    assert res.returncode == 0 and "pushed 2 samples" in res.stderr, res.stderr

    bad = "ts,metric,value\n1,temp,1.5\n2,temp,not-a-number\n3,temp,2\n"
    res = run("push", room, input=bad)
    assert res.returncode == 1 and "line 3: the value is not a number" in res.stderr
    assert "Traceback" not in res.stderr and "the 1 samples before it were pushed" in res.stderr
    res = run("push", room, "--skip-invalid", input=bad)
    assert res.returncode == 0 and "1 invalid lines skipped" in res.stderr, res.stderr

    # Another device (Bob) reads what the CLI pushed.
    async with Telemetry(bob) as tb:
        rows = await tb.query(room, "temp", limit=10_000)
        assert len(rows) == 5000 + 1 + 2  # the bad push's first sample, then 1 and 2 again
        a = await tb.query(room, "temp", tags={"site": "a"}, limit=10_000)
        assert len(a) == 2500 and a[0].value == 20.01

    res = run(
        "query",
        room,
        "temp",
        "--since",
        "1700000000000",
        "--until",
        "1700000005000",
        "--tag",
        "site=b",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [(x["ts"], x["value"], x["tags"]) for x in lines] == [
        (1_700_000_000_000 + i * 1000, 20 + i / 100, {"site": "b"}) for i in (0, 2, 4)
    ]
    res = run(
        "query",
        room,
        "temp",
        "--since",
        "1700000040000",
        "--until",
        "1700000160000",
        "--step",
        "1m",
        "--json",
    )
    buckets = [json.loads(x) for x in res.stdout.splitlines()]
    assert [(b["start"], b["count"]) for b in buckets] == [
        (1_700_000_040_000, 60),
        (1_700_000_100_000, 60),
    ], res.stderr
    table = run("query", room, "rpm")
    assert table.returncode == 0 and "1500" in table.stdout and "m=1" in table.stdout
    res = run("query", room, "temp", "--since", "yesterday")
    assert res.returncode == 1 and "cannot read the time" in res.stderr

    # tail prints samples pushed while it runs.
    proc = subprocess.Popen(
        [
            *CLI,
            "--data-dir",
            str(data_dir),
            "telemetry",
            "tail",
            room,
            "--metric",
            "live",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        async with Telemetry(bob) as tb:
            seen: list[dict[str, object]] = []
            deadline = time.monotonic() + 60
            assert proc.stdout is not None
            i = 0
            while time.monotonic() < deadline and len(seen) < 3:
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if ready:
                    seen.append(json.loads(proc.stdout.readline()))
                    continue
                i += 1
                await tb.append(room, "live", float(i))
            assert [s["metric"] for s in seen] == ["live"] * 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
