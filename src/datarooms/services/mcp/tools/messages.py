"""Tools for messages: read, thread, wait, send, reply, react, edit, redact."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from datarooms.sdk.state import STATE_EVENT
from datarooms.services.mcp import audit
from datarooms.services.mcp.reading import event_json, parse_time
from datarooms.services.mcp.tools._common import EventArg, RoomArg, TextArg, TimeArg, ToolBase


class MessageTools(ToolBase):
    """Messages (end-to-end encrypted)."""

    async def read_messages(
        self,
        room: RoomArg,
        limit: Annotated[int, Field(description="At most this many events", ge=1, le=500)] = 20,
        since: TimeArg = None,
        until: TimeArg = None,
        include_state: Annotated[
            bool, Field(description="Also return state events (joins, name changes, ...)")
        ] = False,
    ) -> dict[str, Any]:
        """Read a room's messages, newest last, decrypted: the latest ones (by count), or
        those within a time range (since/until). Shows text, replies, edits, reactions,
        records and files (download files with download_file)."""
        rid = await self.rt.room(room)
        since_ms, until_ms = parse_time(since, "since"), parse_time(until, "until")
        page = await self._c.messages.read(
            rid, limit=limit, since_ms=since_ms, until_ms=until_ms, include_state=include_state
        )
        view = self._c.state.view(rid)
        events = []
        for e in page.events:
            out = event_json(e)
            if (
                e.type == STATE_EVENT
                and e.state_key is not None
                and not view.can_read(self.rt.user_id, view.acl(e.state_key))
            ):
                # The same rule as get_state: a key's ACL guards every way of reading it.
                out.pop("content", None)
                out["withheld"] = f"the ACL of key {e.state_key!r} does not let this agent read it"
            events.append(out)
        return {"room_id": rid, "events": events, "more": page.more}

    async def read_thread(
        self,
        room: RoomArg,
        thread_root: Annotated[str, Field(description="Event id of the thread's first message")],
        limit: Annotated[int, Field(description="At most this many replies", ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Read a thread: its root message and its latest replies, oldest first."""
        rid = await self.rt.room(room)
        events = await self._c.messages.thread(rid, thread_root, limit=limit)
        return {
            "room_id": rid,
            "thread_root": thread_root,
            "events": [event_json(e) for e in events],
        }

    async def wait_for_messages(
        self,
        room: Annotated[
            str | None,
            Field(description="Only this room (id or alias); omit for all of the agent's rooms"),
        ] = None,
        after: Annotated[
            str | None,
            Field(
                description="The cursor a previous call returned; omit to wait for new events "
                "from now on"
            ),
        ] = None,
        timeout_seconds: Annotated[
            float, Field(description="Wait at most this long", ge=0, le=3600)
        ] = 30,
        include_own: Annotated[
            bool, Field(description="Also return this agent's own events")
        ] = False,
    ) -> dict[str, Any]:
        """Wait for new events (messages, records, reactions, ...) in the agent's rooms and
        return them (at most 100) with a cursor. Pass the cursor as `after` next time so
        nothing is missed."""
        rid = None
        if room is not None:
            rid = await self.rt.room(room)
        else:
            audit.note_room("*")
        timeout = min(timeout_seconds, self.rt.settings.max_wait_seconds)
        start, reset = self.rt.parse_cursor(after)
        found, seq, gap = await self.rt.wait_events(start, rid, timeout, include_own=include_own)
        out: dict[str, Any] = {
            "events": [{"room_id": b.event.room_id, **event_json(b.event)} for b in found],
            "cursor": self.rt.cursor(seq),
            "timed_out": not found,
        }
        if reset or gap:
            out["missed"] = (
                "the server restarted since that cursor"
                if reset
                else "events older than the buffer were dropped"
            )
            out["catch_up_with"] = "read_messages"
        return out

    async def send_message(
        self,
        room: RoomArg,
        text: TextArg,
        thread_root: Annotated[
            str | None, Field(description="Post in the thread rooted at this event id")
        ] = None,
    ) -> dict[str, Any]:
        """Send an end-to-end encrypted text message to a room (optionally into a thread)."""
        rid = await self.rt.room(room, sends=True)
        if thread_root:
            event_id = await self._c.messages.thread_reply(rid, thread_root, text)
        else:
            event_id = await self._c.messages.send(rid, text)
        return {"room_id": rid, "event_id": event_id}

    async def reply(self, room: RoomArg, event_id: EventArg, text: TextArg) -> dict[str, Any]:
        """Reply to a message (encrypted)."""
        rid = await self.rt.room(room, sends=True)
        return {"room_id": rid, "event_id": await self._c.messages.reply(rid, event_id, text)}

    async def react(
        self,
        room: RoomArg,
        event_id: EventArg,
        key: Annotated[
            str,
            Field(
                description="The reaction, usually one emoji, e.g. 👍", min_length=1, max_length=64
            ),
        ],
    ) -> dict[str, Any]:
        """React to a message (encrypted, like every event here)."""
        rid = await self.rt.room(room, sends=True)
        return {"room_id": rid, "event_id": await self._c.messages.react(rid, event_id, key)}

    async def edit_message(
        self, room: RoomArg, event_id: EventArg, text: TextArg
    ) -> dict[str, Any]:
        """Replace the text of one of this agent's own messages."""
        rid = await self.rt.room(room, sends=True)
        return {"room_id": rid, "event_id": await self._c.messages.edit(rid, event_id, text)}

    async def redact_event(
        self,
        room: RoomArg,
        event_id: EventArg,
        reason: Annotated[str | None, Field(description="Why (visible to the homeserver)")] = None,
    ) -> dict[str, Any]:
        """Delete (redact) an event: its content is removed for everyone. A redacted record
        version disappears from the key's history."""
        rid = await self.rt.room(room)
        return {"room_id": rid, "event_id": await self._c.messages.redact(rid, event_id, reason)}
