"""Reading a room for an agent: timelines by count or time range, threads, members,
and events rendered as compact JSON an LLM can use.

These read what the SDK's device already has keys for. They do not wait for a
sync round: the agent's background sync loop keeps keys and state current (see
docs/mcp.md, "Freshness").
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from nio import MegolmEvent, RoomMessagesError
from nio.api import MessageDirection
from nio.exceptions import EncryptionError

from datarooms import events as ev
from datarooms._store.index import Record
from datarooms.errors import ValidationError
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.rooms import POWER, access_for_power
from datarooms.sdk.timeline import (
    RoomEvent,
    error_from_response,
    from_nio_event,
    is_error,
    room_event,
)

_PAGE = 100
#: At most this many events are scanned for one read (20 pages).
MAX_SCAN = 2000
#: File events carry their decryption key; it is never shown to the agent.
_FILE_MSGTYPES = ("m.file", "m.image", "m.video", "m.audio")


# -- time -----------------------------------------------------------------------


def parse_time(value: str | int | None, name: str) -> int | None:
    """Milliseconds since the epoch from an ISO 8601 time or a number of milliseconds."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValidationError(f"{name} must not be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"{name} must be an ISO 8601 time such as 2025-05-01T12:00:00Z, or milliseconds "
                f"since the epoch; got {value!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp() * 1000)
    raise ValidationError(f"{name} must be a time (ISO 8601 text or milliseconds)")


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


# -- rendering -------------------------------------------------------------------


def event_json(e: RoomEvent) -> dict[str, Any]:
    """A timeline event as the agent sees it; file keys and media URLs are left out."""
    out: dict[str, Any] = {
        "event_id": e.event_id,
        "sender": e.sender,
        "type": e.type,
        "time": iso(e.ts),
        "ts": e.ts,
        "encrypted": e.encrypted,
    }
    if not e.decrypted:
        out["decrypted"] = False
        out["note"] = "this device has no key for this event (yet)"
        return out
    c = e.content
    rel = e.relates_to
    if e.type == "m.room.message":
        msgtype = c.get("msgtype")
        out["msgtype"] = msgtype
        if msgtype in _FILE_MSGTYPES:
            raw_info = c.get("info")
            info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
            out["file"] = {
                "name": c.get("filename") or c.get("body"),
                "size": info.get("size"),
                "mimetype": info.get("mimetype"),
                "download": "download_file with this event_id",
            }
        else:
            new = c.get("m.new_content")
            out["body"] = new.get("body") if isinstance(new, dict) else c.get("body")
    elif e.type == ev.RECORD:
        out["record"] = {"key": c.get("key"), "value": c.get("value"), "schema": c.get("schema")}
    elif e.type == "m.reaction":
        out["reaction"] = rel.get("key")
    elif e.type == "m.room.redaction":
        out["redacts"] = c.get("redacts")
    elif e.state_key is not None:
        out["state_key"] = e.state_key
        out["content"] = c
    elif c and "file" not in c:
        out["content"] = c
    if rel:
        relation: dict[str, Any] = {}
        if rel.get("rel_type"):
            relation["rel_type"] = rel["rel_type"]
            relation["event_id"] = rel.get("event_id")
        reply_to = rel.get("m.in_reply_to")
        if (
            isinstance(reply_to, dict)
            and reply_to.get("event_id")
            and not rel.get("is_falling_back")
        ):
            relation["in_reply_to"] = reply_to["event_id"]
        if relation:
            out["relation"] = relation
    return out


def record_json(r: Record) -> dict[str, Any]:
    return {
        "key": r.key,
        "value": r.value,
        "version": r.version,
        "sender": r.sender,
        "time": iso(r.ts),
        "ts": r.ts,
        "event_id": r.event_id,
        "schema": r.schema,
    }


# -- timelines --------------------------------------------------------------------


def _wanted(e: RoomEvent, include_state: bool) -> bool:
    if e.state_key is not None:
        return include_state
    return True


async def read_timeline(
    client: DataroomsClient,
    room_id: str,
    *,
    limit: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    include_state: bool = False,
) -> tuple[list[RoomEvent], bool]:
    """Up to ``limit`` events, newest last, optionally within ``[since, until)``.

    Pages back from the live end of the room (``/messages``, decrypted by nio).
    Returns the events and whether more matching events may exist beyond them.
    """
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise ValidationError("since must not be after until")
    out: list[RoomEvent] = []
    token: str | None = None
    scanned = 0
    more = False
    # The first page fits the common case (the latest few events) without decrypting more.
    page = min(_PAGE, limit + 10)
    while scanned < MAX_SCAN:
        resp = await client.nio.room_messages(
            room_id, start=token, direction=MessageDirection.back, limit=page
        )
        page = _PAGE
        if isinstance(resp, RoomMessagesError):
            raise error_from_response(resp, f"reading {room_id}")
        done = not resp.chunk or not resp.end
        for raw in resp.chunk:
            scanned += 1
            e = from_nio_event(room_id, raw)
            if e is None:
                continue
            if until_ms is not None and e.ts >= until_ms:
                continue
            if since_ms is not None and e.ts < since_ms:
                done = True
                break
            if not _wanted(e, include_state):
                continue
            if len(out) >= limit:
                more = True
                done = True
                break
            out.append(e)
        if done:
            break
        token = resp.end
    else:
        more = True
    out.reverse()
    return out, more


async def read_thread(
    client: DataroomsClient, room_id: str, root_event_id: str, *, limit: int
) -> list[RoomEvent]:
    """The thread's root and up to ``limit`` of its latest replies, oldest first."""
    root = await get_event(client, room_id, root_event_id)
    path = (
        f"/_matrix/client/v1/rooms/{quote(room_id, safe='')}/relations/"
        f"{quote(root_event_id, safe='')}/m.thread"
    )
    async with client.http() as http:
        body = await http.request("GET", path, params={"dir": "b", "limit": str(limit)})
    replies = [decrypt_source(client, room_id, s) for s in body.get("chunk", [])]
    replies.reverse()
    return [root, *replies]


async def get_event(client: DataroomsClient, room_id: str, event_id: str) -> RoomEvent:
    resp = await client.nio.room_get_event(room_id, event_id)
    if is_error(resp):
        raise error_from_response(resp, f"reading event {event_id}")
    return decrypt_source(client, room_id, resp.event.source)


def decrypt_source(client: DataroomsClient, room_id: str, source: dict[str, Any]) -> RoomEvent:
    if source.get("type") != "m.room.encrypted":
        return room_event(room_id, source, encrypted=False)
    try:
        megolm = MegolmEvent.from_dict(source)
        if not isinstance(megolm, MegolmEvent):
            raise EncryptionError("not a Megolm event")
        megolm.room_id = room_id
        decrypted = client.nio.decrypt_event(megolm)
    except EncryptionError:
        return room_event(room_id, source, encrypted=True, decrypted=False)
    dsource = getattr(decrypted, "source", None)
    if not isinstance(dsource, dict):
        return room_event(room_id, source, encrypted=True, decrypted=False)
    return room_event(room_id, dsource, encrypted=True)


# -- members -----------------------------------------------------------------------


def members(client: DataroomsClient, room_id: str) -> list[dict[str, Any]]:
    """Members and invitees with their access, as this device's state has them."""
    room = client.nio.rooms[room_id]
    creators = _creators(client, room_id)
    out = []
    for uid, member in sorted(room.users.items()):
        power = POWER["admin"] if uid in creators else room.power_levels.get_user_level(uid)
        out.append(
            {
                "user_id": uid,
                "display_name": member.display_name,
                "membership": "invite" if member.invited else "join",
                "power": power,
                "access": access_for_power(power),
            }
        )
    return out


def _creators(client: DataroomsClient, room_id: str) -> set[str]:
    # Room version 12+: the creator (and additional creators) are implicitly all-powerful.
    create = client.index.state(room_id, "m.room.create") or {}
    version = str(create.get("room_version", "1"))
    if not (version.isdigit() and int(version) >= 12):
        return set()
    found = {str(u) for u in create.get("additional_creators", []) if isinstance(u, str)}
    sender = client.index.state_sender(room_id, "m.room.create")
    if sender:
        found.add(sender)
    return found
