"""An auditor's device for the anchoring crash test: anchors a room, and is SIGKILLed.

    python tests/audit_crash_anchor.py CONFIG.json {after-commit|before-broadcast|none}

CONFIG holds ``homeserver``, ``user_id``, ``access_token``, ``store``, ``room``, ``rpc``.
The device joins the room if invited, then anchors its audit trail on the chain at
``rpc``. With ``after-commit`` it SIGKILLs itself the moment the anchor transaction is
committed on chain, before its height is persisted; with ``before-broadcast``, just
before the transaction is sent; with ``none`` it finishes and prints the anchor.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from datarooms import Credentials, DataroomsClient
from datarooms.chain.anchor import ChainAnchor


class Dying(ChainAnchor):
    mode = "none"

    async def broadcast(self, tx: bytes) -> int:
        if self.mode == "before-broadcast":
            os.kill(os.getpid(), signal.SIGKILL)
        height = await super().broadcast(tx)
        if self.mode == "after-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        return height


async def main(config: dict[str, str], mode: str) -> None:
    creds = Credentials(config["homeserver"], config["user_id"], config["access_token"])
    async with await DataroomsClient.open(creds, Path(config["store"])) as client:
        if client.membership(config["room"]) == "invite":
            await client.rooms.join(config["room"])
        chain = Dying(config["rpc"])
        chain.mode = mode
        anchor = await client.audit.anchor(config["room"], chain)
        done = [a.to_json() for a in client.audit.anchors(config["room"])]
        print(json.dumps({"new": anchor.to_json() if anchor else None, "anchors": done}))


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2]))
