"""Reading a room for an agent: timelines by count or time range, threads, members,
and events rendered as compact JSON an LLM can use.

The reading itself is the SDK's (``client.messages.read``/``.thread``,
``client.rooms.members``, :func:`datarooms.sdk.timeline.parse_time`); this module
only renders for the agent. It reads what the SDK's device already has keys for
and does not wait for a sync round: the agent's background sync loop keeps keys
and state current (see docs/mcp.md, "Freshness").
"""

from __future__ import annotations

from typing import Any

from datarooms import events as ev
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.records import Record
from datarooms.sdk.timeline import RoomEvent, iso_time
from datarooms.sdk.timeline import parse_time as _parse_time

#: File events carry their decryption key; it is never shown to the agent.
_FILE_MSGTYPES = ("m.file", "m.image", "m.video", "m.audio")


# -- time -----------------------------------------------------------------------


def parse_time(value: str | int | None, name: str) -> int | None:
    """Milliseconds since the epoch (the SDK's rules), or None for no time."""
    return None if value is None else _parse_time(value, name)


iso = iso_time


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
    return {**r.to_json(), "time": iso(r.ts)}


# -- timelines and members ------------------------------------------------------------


async def read_timeline(
    client: DataroomsClient,
    room_id: str,
    *,
    limit: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    include_state: bool = False,
) -> tuple[list[RoomEvent], bool]:
    """Up to ``limit`` events, newest last, optionally within ``[since, until)``, and
    whether more matching events may exist beyond them."""
    page = await client.messages.read(
        room_id, limit=limit, since_ms=since_ms, until_ms=until_ms, include_state=include_state
    )
    return page.events, page.more


def members(client: DataroomsClient, room_id: str) -> list[dict[str, Any]]:
    """Members and invitees with their access, as this device's state has them."""
    return [
        {
            "user_id": m.user_id,
            "display_name": m.display_name,
            "membership": m.membership,
            "power": m.power,
            "access": m.access,
        }
        for m in client.rooms.members(room_id)
    ]
