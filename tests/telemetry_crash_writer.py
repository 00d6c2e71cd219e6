"""A telemetry writer for the crash test: appends a known sequence until it is killed.

    python tests/telemetry_crash_writer.py CONFIG.json RUN [--finish]

Each run appends samples of metric ``crash`` whose value encodes (run, index):
``run * 1_000_000 + i``, with a distinct timestamp each, one at a time and in
bulk, from async code and through the synchronous API in a thread. After an
append returns, it writes ``run first last`` (the half-open range ``[first,
last)``) to the acknowledgements file: those samples were acknowledged as
durable. The test SIGKILLs it at random moments and starts it again; with
``--finish`` it appends a last range, waits for the homeserver to have
everything and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path

from datarooms import Credentials, DataroomsClient
from datarooms.sdk.telemetry import Telemetry, TelemetryConfig

BASE_TS = 1_700_000_000_000
PER_RUN = 1_000_000


async def main(config: dict[str, str], run: int, finish: bool) -> None:
    creds = Credentials(config["homeserver_url"], config["user_id"], config["access_token"])
    client = await DataroomsClient.open(creds, config["store"])
    # Small batches and a short interval: many batches, so kills land mid-send too.
    tel = Telemetry(client, TelemetryConfig(flush_interval=0.05, max_batch_samples=500))
    await tel.start()
    if tel.status().unacked_samples:
        print(f"RESUMING {tel.status().unacked_samples}", flush=True)
    fd = os.open(config["acks"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rng = random.Random()
    room = config["room"]
    i = 0
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
    asyncio.run(main(cfg, int(sys.argv[2]), "--finish" in sys.argv[3:]))
