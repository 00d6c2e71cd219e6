"""History sharing on grant (MSC4268 key bundles) vs restoring from key backup; CLI sessions.

Run from the repo root: python bench/sharing.py [--quick | --smoke]

Everything runs against a real embedded Synapse.

1. An owner (key backup on) writes R records into one room (``shared``
   visibility); nio rotates the Megolm session every 100 messages, so R records
   make R/100 sessions (full: 10,000 records, 100 sessions; quick: 1,000 and 10;
   smoke: 200 and 2).
   - grant_to_readable_s: from ``owner.rooms.grant(room, grantee)`` (which builds
     the bundle, uploads it, sends it over Olm, invites) until a fresh grantee
     device that joined (``rooms.join``: downloads, verifies and imports the
     bundle) and read the room's history (``fill_gaps``) has all R records
     decrypted in its index.
   - backup_restore_baseline_s: what people do by hand today: a fresh device of
     the OWNER's account runs ``keys.restore(recovery_key)`` (unlock, download and
     import every backed-up session) and reads the same history until all R
     records are decrypted. ``ratio`` = baseline / grant.
2. sessions_created_by_100_cli_puts: 100 consecutive ``datarooms put`` processes
   (quick: 20, smoke: 5) into one room: the number of distinct Megolm sessions
   their events use (before: one per process).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds platform.py, which shadows the stdlib module that uuid (and more)
# import: move this script's directory from the front of the import path to the end.
_HERE = Path(__file__).resolve().parent
for _p in [p for p in sys.path if Path(p or ".").resolve() == _HERE]:
    sys.path.remove(_p)
sys.path.append(str(_HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from _common import emit, machine  # noqa: E402
from datarooms import Credentials, DataroomsClient  # noqa: E402
from datarooms.testing import TestHomeserver  # noqa: E402

DATAROOMS = shutil.which("datarooms", path=str(Path(sys.executable).parent)) or "datarooms"


async def _read_all(client: DataroomsClient, room: str, want: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    await client.fill_gaps(room)
    while client.index.count(room) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {client.index.count(room)} of {want} records readable")
        await client.sync_once(timeout_ms=500)
        client.retry_decryption(room)


async def _sessions_of(client: DataroomsClient, room: str) -> set[str]:
    out: set[str] = set()
    token: str | None = None
    async with client.http() as http:
        while True:
            params = {"dir": "b", "limit": "500", **({"from": token} if token else {})}
            page = await http.request(
                "GET", f"/_matrix/client/v3/rooms/{room}/messages", params=params
            )
            for e in page.get("chunk", []):
                if e.get("type") == "m.room.encrypted":
                    out.add(e["content"]["session_id"])
            token = page.get("end")
            if not token or not page.get("chunk"):
                return out


async def bench_grant(hs: TestHomeserver, tmp: Path, records: int) -> dict[str, Any]:
    owner_user = await hs.new_user("owner")
    owner = await DataroomsClient.open(
        Credentials(hs.base_url, owner_user.user_id, owner_user.access_token), tmp / "owner"
    )
    grantee_user = await hs.new_user("grantee")
    grantee = await DataroomsClient.open(
        Credentials(hs.base_url, grantee_user.user_id, grantee_user.access_token),
        tmp / "grantee",
    )
    try:
        recovery_key = await owner.keys.setup_recovery()
        room = (await owner.rooms.create("device", name="bench sharing")).room_id
        t0 = time.perf_counter()
        batch = 25
        for start in range(0, records, batch):
            await asyncio.gather(
                *(
                    owner.records.put(room, f"k{i}", {"i": i})
                    for i in range(start, min(start + batch, records))
                )
            )
        write_s = time.perf_counter() - t0
        sessions = len(await _sessions_of(owner, room))
        print(f"  wrote {records:,} records in {write_s:.1f} s ({sessions} sessions)", flush=True)

        await grantee.sync_once()
        t0 = time.perf_counter()
        await owner.rooms.grant(room, grantee.user_id, "read")
        await grantee.sync_once()
        await grantee.rooms.join(room)
        await _read_all(grantee, room, records, 600)
        grant_s = time.perf_counter() - t0
        imported = len(grantee.index.shared_sessions(room))

        new = await DataroomsClient.open(
            Credentials(hs.base_url, owner_user.user_id, password=owner_user.password),
            tmp / "owner-new-device",
        )
        try:
            t0 = time.perf_counter()
            restored = await new.keys.restore(recovery_key)
            await _read_all(new, room, records, 600)
            baseline_s = time.perf_counter() - t0
        finally:
            await new.close()
    finally:
        await owner.close()
        await grantee.close()
    return {
        "records": records,
        "sessions": sessions,
        "write_s": write_s,
        "grant_to_readable_s": grant_s,
        "bundle_sessions_imported": imported,
        "backup_restore_baseline_s": baseline_s,
        "backup_sessions_restored": restored,
        "ratio": baseline_s / grant_s if grant_s else None,
    }


async def bench_cli(hs: TestHomeserver, tmp: Path, puts: int) -> dict[str, Any]:
    user = await hs.new_user("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAROOMS_")}
    env.update(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=hs.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=user.access_token,
    )
    data_dir = tmp / "cli"

    def run(*args: str) -> str:
        res = subprocess.run(
            [DATAROOMS, "--data-dir", str(data_dir), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"datarooms {' '.join(args)}: {res.stderr}")
        return res.stdout

    room = (await asyncio.to_thread(run, "room", "create", "device", "--name", "cli")).split()[0]
    t0 = time.perf_counter()
    for i in range(puts):
        await asyncio.to_thread(run, "put", room, f"k{i}", str(i))
    puts_s = time.perf_counter() - t0
    reader = await DataroomsClient.open(  # another device of the same user
        Credentials(hs.base_url, user.user_id, password=user.password), tmp / "cli-reader"
    )
    try:
        sessions = len(await _sessions_of(reader, room))
    finally:
        await reader.close()
    return {"cli_puts": puts, "cli_puts_s": puts_s, "sessions_created_by_100_cli_puts": sessions}


async def run(hs: TestHomeserver, tmp: Path, mode: str) -> dict[str, Any]:
    records = {"full": 10_000, "quick": 1_000, "smoke": 200}[mode]
    puts = {"full": 100, "quick": 20, "smoke": 5}[mode]
    result: dict[str, Any] = {}
    print(f"1/2 grant vs backup restore, {records:,} records ...", flush=True)
    result.update(await bench_grant(hs, tmp, records))
    print(f"2/2 {puts} consecutive CLI puts ...", flush=True)
    result.update(await bench_cli(hs, tmp, puts))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1,000 records, 20 CLI puts")
    ap.add_argument("--smoke", action="store_true", help="200 records, 5 CLI puts (CI)")
    args = ap.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    logging.getLogger("nio").setLevel(logging.ERROR)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sharing-"))
    try:
        with TestHomeserver(tmp / "homeserver") as hs:
            r = asyncio.run(run(hs, tmp, mode))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r["runtime_s"] = time.perf_counter() - started
    print(
        f"grant -> readable: {r['records']:,} records / {r['sessions']} sessions in "
        f"{r['grant_to_readable_s']:.2f} s; backup restore baseline "
        f"{r['backup_restore_baseline_s']:.2f} s (ratio {r['ratio']:.2f})"
    )
    print(f"{r['cli_puts']} CLI puts -> {r['sessions_created_by_100_cli_puts']} Megolm session(s)")
    emit({"bench": "sharing", "mode": mode, **r, **machine()})


if __name__ == "__main__":
    main()
