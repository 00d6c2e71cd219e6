"""Run the dashboard alone, on a homeserver that runs already (``datarooms up`` runs it
for you): ``python -m datarooms.services.dashboard HOMESERVER_URL SERVER_NAME DATA_DIR
[PORT]``. It prints its URL on the first line and serves until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from datarooms.config import DashboardSettings
from datarooms.services.dashboard.service import Dashboard


async def serve(homeserver_url: str, server_name: str, data_dir: str, port: int) -> None:
    dashboard = Dashboard(
        homeserver_url, server_name, Path(data_dir), config=DashboardSettings(port=port)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(await dashboard.start(), flush=True)
    try:
        await stop.wait()
    finally:
        await dashboard.stop()


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    port = int(argv[3]) if len(argv) == 4 else DashboardSettings().port
    asyncio.run(serve(argv[0], argv[1], argv[2], port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
