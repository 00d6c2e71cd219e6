"""Messaging: text, replies, threads, edits, reactions, redactions, live events.

Uses the spec's standard shapes (``m.room.message``, ``m.relates_to`` with
``m.in_reply_to``, ``m.thread``, ``m.replace``, ``m.annotation``), so Element and
every other client render them. All of them are encrypted in encrypted rooms,
reactions included (nio alone would send those in the clear).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from nio import RoomMessagesError
from nio.api import MessageDirection

from datarooms.errors import ValidationError
from datarooms.sdk.timeline import RoomEvent, error_from_response, from_nio_event, is_error

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

MAX_TEXT_BYTES = 32 * 1024


def _text(body: str) -> str:
    if not isinstance(body, str) or not body:
        raise ValidationError("a message needs a non-empty text body")
    if len(body.encode()) > MAX_TEXT_BYTES:
        raise ValidationError(f"message is longer than {MAX_TEXT_BYTES} bytes; send a file")
    return body


class Messages:
    """``client.messages``."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client

    async def send(
        self, room_id: str, body: str, *, msgtype: str = "m.text", txn_id: str | None = None
    ) -> str:
        content = {"msgtype": msgtype, "body": _text(body)}
        return await self._c.send(room_id, "m.room.message", content, txn_id=txn_id)

    async def reply(self, room_id: str, event_id: str, body: str) -> str:
        content = {
            "msgtype": "m.text",
            "body": _text(body),
            "m.relates_to": {"m.in_reply_to": {"event_id": event_id}},
        }
        return await self._c.send(room_id, "m.room.message", content)

    async def thread_reply(self, room_id: str, root_event_id: str, body: str) -> str:
        """Reply in the thread rooted at ``root_event_id`` (with the spec's fallback)."""
        content = {
            "msgtype": "m.text",
            "body": _text(body),
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": root_event_id,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": root_event_id},
            },
        }
        return await self._c.send(room_id, "m.room.message", content)

    async def edit(self, room_id: str, event_id: str, new_body: str) -> str:
        content = {
            "msgtype": "m.text",
            "body": "* " + _text(new_body),
            "m.new_content": {"msgtype": "m.text", "body": new_body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        }
        return await self._c.send(room_id, "m.room.message", content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        if not key or len(key) > 64:
            raise ValidationError("a reaction key must be 1-64 characters")
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self._c.send(room_id, "m.reaction", content)

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        await self._c.ensure_room(room_id)
        resp = await self._c.nio.room_redact(room_id, event_id, reason)
        if is_error(resp):
            raise error_from_response(resp, f"redacting {event_id}")
        return str(resp.event_id)

    async def typing(self, room_id: str, typing: bool = True, timeout_ms: int = 10_000) -> None:
        await self._c.nio.room_typing(room_id, typing, timeout_ms)

    async def mark_read(self, room_id: str, event_id: str) -> None:
        await self._c.nio.room_read_markers(room_id, event_id, event_id)

    async def events(self, room_id: str | None = None) -> AsyncIterator[RoomEvent]:
        """Incoming events of a room (or of all rooms), live, decrypted where possible."""
        async for event in self._c.subscribe(room_id):
            yield event

    async def recent(self, room_id: str, limit: int = 20) -> list[RoomEvent]:
        """The latest ``limit`` timeline events, newest last, decrypted where possible."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        await self._c.ensure_room(room_id)
        await self._c.sync_once()  # receive pending room keys before decrypting
        resp = await self._c.nio.room_messages(
            room_id, start=None, direction=MessageDirection.back, limit=limit
        )
        if isinstance(resp, RoomMessagesError):
            raise error_from_response(resp, f"reading {room_id}")
        events = (from_nio_event(room_id, e) for e in reversed(resp.chunk))
        return [e for e in events if e is not None]
