"""The automation service killed mid-burst: every acknowledged webhook lands in its room
exactly once (issue 16). The kill comes at a point of the service's own progress: after
the homeserver accepted a delivery and before the outbox recorded it, the case the
stored transaction ids are for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from datarooms import DataroomsClient
from datarooms.sdk.automation import HookOutbox, HookRegistry
from datarooms.services.automation import outbox_path, registry_path
from datarooms.testing import TestHomeserver
from tests._automation import hook_messages, room_with_bot, start_service

HELPER = Path(__file__).with_name("automation_crash_service.py")
BURST = 24


def _start(data: Path, localpart: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root)])
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(data), localpart, *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("URL "), f"the service did not start: {line!r}"
    return proc, line.split()[1]


async def test_killed_mid_burst_delivers_each_acknowledged_hook_once(
    homeserver: TestHomeserver, tmp_path: Path, open_client: Any
) -> None:
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    data = tmp_path / "data"
    # First in-process: the bot's account, device and room membership, and a hook.
    ctx, svc, _url = await start_service(homeserver, data)
    assert svc.bot is not None
    localpart = svc.bot.client.user_id[1:].split(":")[0]
    try:
        room = await room_with_bot(alice, svc)
    finally:
        await svc.stop()
    reg = HookRegistry(registry_path(ctx.settings))
    hook = reg.add(room, template="burst ${i}")
    reg.close()

    proc, url = _start(data, localpart, "--pause-after", "5")
    acked: set[int] = set()
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s:

            async def post(i: int) -> None:
                try:
                    async with s.post(
                        f"{url}/hooks/{hook.hook_id}",
                        data=json.dumps({"i": i}),
                        headers={"Authorization": f"Bearer {hook.secret}"},
                    ) as r:
                        if r.status == 202:
                            acked.add(i)
                except (aiohttp.ClientError, TimeoutError):
                    pass  # the service froze or died before answering: not acknowledged

            async def kill_when_paused() -> None:
                assert proc.stdout is not None
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line.strip() == "PAUSED", line
                proc.send_signal(signal.SIGKILL)

            killer = asyncio.create_task(kill_when_paused())
            await asyncio.gather(*(post(i) for i in range(BURST)))
            await asyncio.wait_for(killer, 60)
        proc.wait(30)
        assert len(acked) >= 5, f"only {len(acked)} acknowledged before the kill"
        box = HookOutbox(outbox_path(ctx.settings))
        left = len(box.pending())
        box.close()
        assert left >= 1, "the kill left nothing to resend; the test proved nothing"

        proc, url = _start(data, localpart)  # the restart resends what was left
        box = HookOutbox(outbox_path(ctx.settings))
        try:
            for _ in range(600):
                if not box.pending():
                    break
                await asyncio.sleep(0.1)
            assert not box.pending() and box.counts()["failed"] == 0
        finally:
            box.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    bodies = [c["body"] for c in await hook_messages(alice, room)]
    for i in range(BURST):
        n = bodies.count(f"burst {i}")
        assert n <= 1, f"burst {i} posted {n} times"
        if i in acked:
            assert n == 1, f"acknowledged burst {i} was lost"
