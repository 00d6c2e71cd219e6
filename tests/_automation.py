"""Shared steps for the automation tests: a data dir on the test homeserver with the
automation service, a room it posts into, and reading what it posted."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from datarooms import DataroomsClient
from datarooms.sdk.automation import ALERT_KEY, SOURCE_KEY
from datarooms.services.automation import AutomationService
from datarooms.services.platform import PlatformContext
from datarooms.testing import TestHomeserver
from tests._mcp import platform_for
from tests._wait import until


def localpart() -> str:
    """A bot account no other test uses (accounts live on the shared homeserver)."""
    return f"automation-{uuid.uuid4().hex[:8]}"


async def start_service(
    hs: TestHomeserver, data_dir: Path, **overrides: Any
) -> tuple[PlatformContext, AutomationService, str]:
    ctx = await platform_for(hs, data_dir)
    overrides.setdefault("localpart", localpart())
    svc = AutomationService(port=0, **overrides)
    info = await svc.start(ctx)
    return ctx, svc, str(info["url"])


async def room_with_bot(owner: DataroomsClient, svc: AutomationService) -> str:
    """``owner`` creates a data room and grants the automation bot write access; the
    bot joins on its own (it accepts invites from its homeserver's users)."""
    assert svc.bot is not None
    bot = svc.bot.client
    room = await owner.rooms.create("device", name="alerts room")
    await owner.rooms.grant(room.room_id, bot.user_id, "write")
    await until(lambda: bot.membership(room.room_id) == "join", 30, "the bot to join")
    return room.room_id


async def hook_messages(client: DataroomsClient, room_id: str) -> list[dict[str, Any]]:
    """The decrypted contents of the messages automation posted in the room, oldest first."""
    events = await client.messages.recent(room_id, 200)
    out = []
    for e in events:
        if e.type == "m.room.message" and SOURCE_KEY in e.content:
            assert e.decrypted and e.encrypted
            out.append(e.content)
    return out


__all__ = ["ALERT_KEY", "hook_messages", "localpart", "room_with_bot", "start_service"]
