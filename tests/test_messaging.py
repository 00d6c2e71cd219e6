"""Messaging: text, replies, threads, edits, reactions, redactions, live events."""

from __future__ import annotations

import asyncio

from datarooms.sdk.timeline import RoomEvent
from tests._rooms import shared_room


async def test_conversation_features(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="collaboration")
    seen: list[RoomEvent] = []

    async def listen() -> None:
        async for event in bob.messages.events(room):
            seen.append(event)
            if event.type == "m.room.redaction":
                return

    listener = asyncio.create_task(listen())
    root = await alice.messages.send(room, "hello bob")
    reply = await bob.messages.reply(room, root, "hi alice")
    in_thread = await alice.messages.thread_reply(room, root, "in the thread")
    edit = await alice.messages.edit(room, root, "hello bob (edited)")
    reaction = await bob.messages.react(room, root, "👍")
    await alice.messages.typing(room, True)
    await bob.messages.mark_read(room, root)
    redaction = await alice.messages.redact(room, in_thread, "oops")
    await asyncio.wait_for(listener, 60)

    by_id = {e.event_id: e for e in seen}
    assert by_id[root].body == "hello bob" and by_id[root].encrypted
    assert by_id[reply].relates_to["m.in_reply_to"]["event_id"] == root
    assert by_id[in_thread].relates_to["rel_type"] == "m.thread"
    assert by_id[edit].content["m.new_content"]["body"] == "hello bob (edited)"
    assert by_id[reaction].type == "m.reaction" and by_id[reaction].encrypted
    assert by_id[reaction].relates_to == {"rel_type": "m.annotation", "event_id": root, "key": "👍"}
    assert by_id[redaction].type == "m.room.redaction"
    recent = await alice.messages.recent(room, limit=10)
    assert recent[-1].event_id == redaction
    assert all(e.decrypted for e in recent)
