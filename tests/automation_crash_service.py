"""The automation service in a process of its own, for the kill test.

    python tests/automation_crash_service.py DATA_DIR LOCALPART [--pause-after N]

Starts the platform service ``automation`` on the data dir (whose homeserver and
service account the test wrote), prints ``URL <url>`` once it listens, and runs until
SIGTERM. With ``--pause-after N``, the N-th delivery the homeserver accepted freezes
the process *before* the outbox records it as sent (it prints ``PAUSED`` and blocks
the event loop until the test's SIGKILL): the restart must send that one again with
the same transaction id, and the homeserver must keep one event.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from datarooms.account import read_credentials
from datarooms.config import load_settings
from datarooms.sdk.automation import HookOutbox
from datarooms.services.automation import AutomationService
from datarooms.services.platform import PlatformContext


def pause_after(n: int) -> None:
    original = HookOutbox.mark_sent
    count = 0

    def mark_sent(self: HookOutbox, seq: int, event_id: str) -> None:
        nonlocal count
        count += 1
        if count == n:
            print("PAUSED", flush=True)
            time.sleep(3600)  # blocking on purpose: the test SIGKILLs us here
        original(self, seq, event_id)

    HookOutbox.mark_sent = mark_sent  # type: ignore[method-assign]


async def main(data_dir: Path, localpart: str) -> None:
    settings = load_settings(data_dir=data_dir, env={})
    creds = read_credentials(settings.credentials_file)
    assert creds is not None
    ctx = PlatformContext(settings, creds.homeserver_url, creds, None)
    svc = AutomationService(port=0, localpart=localpart)
    info = await svc.start(ctx)
    print(f"URL {info['url']}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await svc.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--pause-after" in args:
        i = args.index("--pause-after")
        pause_after(int(args[i + 1]))
        del args[i : i + 2]
    asyncio.run(main(Path(args[0]), args[1]))
