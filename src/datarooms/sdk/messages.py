"""Messaging: text, replies, threads, edits, reactions, redactions, live events.

Uses the spec's standard shapes (``m.room.message``, ``m.relates_to`` with
``m.in_reply_to``, ``m.thread``, ``m.replace``, ``m.annotation``), so Element and
every other client render them. All of them are encrypted in encrypted rooms,
reactions included (nio alone would send those in the clear).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nio import MegolmEvent, RoomMessagesError
from nio.api import MessageDirection
from nio.exceptions import EncryptionError

from datarooms.errors import ValidationError
from datarooms.ids import EventID
from datarooms.sdk.timeline import (
    RoomEvent,
    TimelinePage,
    error_from_response,
    from_nio_event,
    is_error,
    room_event,
)

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

MAX_TEXT_BYTES = 32 * 1024
_PAGE = 100
#: At most this many events are scanned for one :meth:`Messages.read` (20 pages).
MAX_SCAN = 2000


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
    ) -> EventID:
        content = {"msgtype": msgtype, "body": _text(body)}
        return await self._c.send(room_id, "m.room.message", content, txn_id=txn_id)

    async def reply(self, room_id: str, event_id: str, body: str) -> EventID:
        content = {
            "msgtype": "m.text",
            "body": _text(body),
            "m.relates_to": {"m.in_reply_to": {"event_id": event_id}},
        }
        return await self._c.send(room_id, "m.room.message", content)

    async def thread_reply(self, room_id: str, root_event_id: str, body: str) -> EventID:
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

    async def edit(self, room_id: str, event_id: str, new_body: str) -> EventID:
        content = {
            "msgtype": "m.text",
            "body": "* " + _text(new_body),
            "m.new_content": {"msgtype": "m.text", "body": new_body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        }
        return await self._c.send(room_id, "m.room.message", content)

    async def react(self, room_id: str, event_id: str, key: str) -> EventID:
        if not key or len(key) > 64:
            raise ValidationError("a reaction key must be 1-64 characters")
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self._c.send(room_id, "m.reaction", content)

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> EventID:
        await self._c.ensure_room(room_id)
        resp = await self._c.nio.room_redact(room_id, event_id, reason)
        if is_error(resp):
            raise error_from_response(resp, f"redacting {event_id}")
        return EventID(str(resp.event_id))

    async def typing(self, room_id: str, typing: bool = True, timeout_ms: int = 10_000) -> None:
        await self._c.nio.room_typing(room_id, typing, timeout_ms)

    async def mark_read(self, room_id: str, event_id: str) -> None:
        await self._c.nio.room_read_markers(room_id, event_id, event_id)

    async def events(self, room_id: str | None = None) -> AsyncIterator[RoomEvent]:
        """Incoming events of a room (or of all rooms), live, decrypted where possible."""
        async for event in self._c.subscribe(room_id):
            yield event

    async def backwards(
        self, room_id: str, *, first_page: int = _PAGE, max_scan: int = MAX_SCAN
    ) -> AsyncIterator[RoomEvent]:
        """Timeline events newest first, paged back from the live end, decrypted by this
        device where it has the keys; stops after ``max_scan`` events or the room's start.

        The one timeline pager of the SDK (``/messages``, ``dir=b``).
        """
        token: str | None = None
        scanned = 0
        page = first_page
        while scanned < max_scan:
            resp = await self._c.nio.room_messages(
                room_id, start=token, direction=MessageDirection.back, limit=page
            )
            page = _PAGE
            if isinstance(resp, RoomMessagesError):
                raise error_from_response(resp, f"reading {room_id}")
            for raw in resp.chunk:
                scanned += 1
                e = from_nio_event(room_id, raw)
                if e is not None:
                    yield e
            if not resp.chunk or not resp.end:
                return
            token = resp.end

    async def read(
        self,
        room_id: str,
        *,
        limit: int,
        since_ms: int | None = None,
        until_ms: int | None = None,
        include_state: bool = False,
        max_scan: int = MAX_SCAN,
    ) -> TimelinePage:
        """Up to ``limit`` events, oldest first, optionally within ``[since, until)``.

        Pages back from the live end of the room; ``more`` says whether more matching
        events may exist beyond them (also when ``max_scan`` events were scanned).
        Reads what this device already has keys for; it does not wait for a sync.
        """
        if since_ms is not None and until_ms is not None and since_ms > until_ms:
            raise ValidationError("since must not be after until")
        out: list[RoomEvent] = []
        more = False
        scanned = 0
        # The first page fits the common case (the latest few events) without decrypting more.
        async for e in self.backwards(
            room_id, first_page=min(_PAGE, limit + 10), max_scan=max_scan
        ):
            scanned += 1
            if until_ms is not None and e.ts >= until_ms:
                continue
            if since_ms is not None and e.ts < since_ms:
                break
            if e.state_key is not None and not include_state:
                continue
            if len(out) >= limit:
                more = True
                break
            out.append(e)
        else:
            more = scanned >= max_scan
        out.reverse()
        return TimelinePage(out, more)

    async def event(self, room_id: str, event_id: str) -> RoomEvent:
        """One event, decrypted where this device has the key."""
        resp = await self._c.nio.room_get_event(room_id, event_id)
        if is_error(resp):
            raise error_from_response(resp, f"reading event {event_id}")
        return self._decrypt(room_id, resp.event.source)

    async def thread(self, room_id: str, root_event_id: str, *, limit: int) -> list[RoomEvent]:
        """The thread's root and up to ``limit`` of its latest replies, oldest first."""
        root = await self.event(room_id, root_event_id)
        path = (
            f"/_matrix/client/v1/rooms/{quote(room_id, safe='')}/relations/"
            f"{quote(root_event_id, safe='')}/m.thread"
        )
        async with self._c.http() as http:
            body = await http.request("GET", path, params={"dir": "b", "limit": str(limit)})
        replies = [self._decrypt(room_id, s) for s in body.get("chunk", [])]
        replies.reverse()
        return [root, *replies]

    def _decrypt(self, room_id: str, source: dict[str, Any]) -> RoomEvent:
        if source.get("type") != "m.room.encrypted":
            return room_event(room_id, source, encrypted=False)
        try:
            megolm = MegolmEvent.from_dict(source)
            if not isinstance(megolm, MegolmEvent):
                raise EncryptionError("not a Megolm event")
            megolm.room_id = room_id
            decrypted = self._c.nio.decrypt_event(megolm)
        except EncryptionError:
            return room_event(room_id, source, encrypted=True, decrypted=False)
        dsource = getattr(decrypted, "source", None)
        if not isinstance(dsource, dict):
            return room_event(room_id, source, encrypted=True, decrypted=False)
        return room_event(room_id, dsource, encrypted=True)

    async def recent(self, room_id: str, limit: int = 20) -> list[RoomEvent]:
        """The latest ``limit`` timeline events, newest last, decrypted where possible."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        await self._c.ensure_room(room_id)
        await self._c.sync_once()  # receive pending room keys before decrypting
        events = [e async for e in self.backwards(room_id, first_page=limit, max_scan=limit)]
        events.reverse()
        return events
