"""A telemetry writer for the crash test: appends a known sequence until it is killed.

    python tests/telemetry_crash_writer.py CONFIG.json RUN SEED [--finish | --pause-at POINT]

Each run appends samples of metric ``crash`` whose value encodes (run, index):
``run * 1_000_000 + i``, with a distinct timestamp each, one at a time and in
bulk, from async code and through the synchronous API in a thread. After an
append returns, it writes ``run first last`` (the half-open range ``[first,
last)``) to the acknowledgements file: those samples were acknowledged as
durable. The test SIGKILLs it and starts it again; with ``--finish`` it appends
a last range, waits for the homeserver to have everything and exits 0.

Everything the writer chooses comes from ``random.Random(f"{SEED}-{RUN}")``, and
where it is killed is a point in its own progress (``--pause-at``), not a time:

``open``
    print ``OPENING`` just before opening the device and carry on (the test kills
    it as soon as it sees that: during the device's start-up);
``started:MS`` / ``acks:N:MS``
    once the writer has started (its resend of earlier runs' samples under way), or
    right after the N-th acknowledged append, let the event loop run MS
    milliseconds more (sends in flight), then print ``PAUSED`` and freeze the event
    loop (nothing more is sent) until the test's SIGKILL. With MS = 0 the samples
    just acknowledged cannot have reached the homeserver yet.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

from datarooms import Credentials, DataroomsClient
from datarooms.sdk.telemetry import Telemetry, TelemetryConfig

BASE_TS = 1_700_000_000_000
PER_RUN = 1_000_000


def pause() -> None:
    """Print PAUSED and freeze this process's event loop (and so its sends) for good."""
    print("PAUSED", flush=True)
    time.sleep(3600)  # blocking on purpose: the test SIGKILLs us here


async def main(
    config: dict[str, str], run: int, seed: str, finish: bool, pause_at: str | None
) -> None:
    point, *args = (pause_at or "none").split(":")
    if point == "open":
        print("OPENING", flush=True)
    creds = Credentials(config["homeserver_url"], config["user_id"], config["access_token"])
    client = await DataroomsClient.open(creds, config["store"])
    # Small batches and a short interval: many batches, so kills land mid-send too.
    tel = Telemetry(client, TelemetryConfig(flush_interval=0.05, max_batch_samples=500))
    await tel.start()
    if tel.status().unacked_samples:
        print(f"RESUMING {tel.status().unacked_samples}", flush=True)
    if point == "started":
        await asyncio.sleep(float(args[0]) / 1000)
        pause()
    pause_after = int(args[0]) if point == "acks" else None
    fd = os.open(config["acks"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rng = random.Random(f"{seed}-{run}")
    room = config["room"]
    i = appends = 0
    limit = 300 if finish else PER_RUN
    try:
        while i < limit:
            k = 1 if rng.random() < 0.3 else rng.randint(2, 40)
            k = min(k, limit - i)
            base = run * PER_RUN + i
            samples = [(BASE_TS + base + j, "crash", float(base + j)) for j in range(k)]
            how = rng.random()
            if k == 1 and how < 0.5:
                await tel.append(room, "crash", samples[0][2], ts=samples[0][0])
            elif how < 0.75:
                await asyncio.to_thread(tel.append_many_sync, room, samples)
            else:
                await tel.append_many(room, samples)
            os.write(fd, f"{run} {i} {i + k}\n".encode())  # acknowledged: durable
            i += k
            appends += 1
            if appends == pause_after:
                if float(args[1]):
                    await asyncio.sleep(float(args[1]) / 1000)
                pause()
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() * 0.02)
        if finish:
            await tel.flush(timeout=120)
            print("FLUSHED", flush=True)
    finally:
        os.close(fd)
        await tel.close()
        await client.close()


if __name__ == "__main__":
    cfg = json.loads(Path(sys.argv[1]).read_text())
    rest = sys.argv[4:]
    at = rest[rest.index("--pause-at") + 1] if "--pause-at" in rest else None
    asyncio.run(main(cfg, int(sys.argv[2]), sys.argv[3], "--finish" in rest, at))
