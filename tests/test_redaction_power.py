"""Redacting another user's record takes admin, not write (issue 11, item 8).

With ``redact`` at write power, any writer could erase what another writer recorded (a
reading, a piece of evidence). Everyone may still redact their own events.
"""

from __future__ import annotations

from typing import Any

import pytest

from datarooms import AccessDeniedError
from datarooms.testing import TestHomeserver


async def test_writers_redact_only_their_own(homeserver: TestHomeserver, open_client: Any) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    bob = await open_client(await homeserver.new_user("bob"))
    carol = await open_client(await homeserver.new_user("carol"))
    room = (await alice.rooms.create("project", name="redaction")).room_id
    for writer in (bob, carol):
        await alice.rooms.grant(room, writer.user_id, "write")
        await writer.rooms.join(room)
    bobs = await bob.records.put(room, "reading", {"v": 1})
    carols = await carol.records.put(room, "reading", {"v": 2})

    with pytest.raises(AccessDeniedError):
        await carol.messages.redact(room, bobs.event_id, "erase a colleague's reading")
    await bob.messages.redact(room, bobs.event_id, "my own mistake")  # allowed
    await alice.messages.redact(room, carols.event_id, "moderation")  # admin: allowed
