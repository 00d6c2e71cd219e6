"""The MCP tools: thin over the SDK (``client.rooms``, ``.records``, ``.files``, ``.messages``).

Every tool is a method of :class:`AgentTools`; its name is the method's name,
its description the docstring, its JSON Schema the signature. The server checks
the tool capability (access level, allow-list) before a tool runs; each tool
checks its room (:meth:`AgentRuntime.room`) before its first SDK call.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import mimetypes
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from mcp.types import BlobResourceContents, EmbeddedResource, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from datarooms import events as ev
from datarooms._store.index import SyncBatch
from datarooms.errors import HomeserverError, NotFoundError, ValidationError
from datarooms.ids import user_id as check_user_id
from datarooms.sdk.attachments import download_decrypted, download_decrypted_bytes
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.rooms import DataRoom
from datarooms.sdk.telemetry import Bucket, Sample
from datarooms.sdk.telemetry.model import now_ms
from datarooms.sdk.timeline import error_from_response, is_error
from datarooms.services.mcp import audit
from datarooms.services.mcp.policy import CapabilityDenied
from datarooms.services.mcp.reading import (
    event_json,
    iso,
    members,
    parse_time,
    read_thread,
    read_timeline,
    record_json,
)
from datarooms.services.mcp.runtime import AgentRuntime

STATE_EVENT = "ixo.room.state"
STATE_ACL_EVENT = "ixo.room.state.acl"

RoomArg = Annotated[
    str,
    Field(description="Room id (!opaque:server) or alias (#name:server), as list_rooms shows"),
]
EventArg = Annotated[str, Field(description="Event id ($...), as read_messages shows")]
TimeArg = Annotated[
    str | int | None,
    Field(description="ISO 8601 time (e.g. 2025-05-01T12:00:00Z) or milliseconds since the epoch"),
]
KeyArg = Annotated[
    str,
    Field(description="Record key, e.g. 'temperature'", min_length=1, max_length=ev.MAX_KEY_LENGTH),
]
TextArg = Annotated[str, Field(description="Message text", min_length=1)]
MetricArg = Annotated[
    str,
    Field(
        description="Metric name, e.g. 'temperature' (telemetry_series lists a room's metrics)",
        min_length=1,
        max_length=255,
    ),
]
TagsArg = Annotated[
    dict[str, str] | None,
    Field(description='Only series whose tags include all of these, e.g. {"site": "a"}'),
]

#: Most samples one query_telemetry call returns, and buckets one aggregate_telemetry call.
MAX_TELEMETRY_SAMPLES = 10_000
MAX_TELEMETRY_BUCKETS = 10_000
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class TelemetrySampleArg(BaseModel):
    """One sample for append_telemetry."""

    model_config = ConfigDict(extra="forbid")

    metric: MetricArg
    value: Annotated[float, Field(description="The measured value (a finite number)")]
    ts: Annotated[
        str | int | None,
        Field(description="When: ISO 8601 time or milliseconds since the epoch; default now"),
    ] = None
    tags: Annotated[
        dict[str, str] | None, Field(description='Labels of the series, e.g. {"site": "a"}')
    ] = None


_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
ANNOTATIONS: dict[str, ToolAnnotations] = {
    "leave_room": _DESTRUCTIVE,
    "redact_event": _DESTRUCTIVE,
    "set_state": _DESTRUCTIVE,
    "join_room": ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    ),
}


def _room_json(r: DataRoom, rt: AgentRuntime) -> dict[str, Any]:
    room = rt.client.nio.rooms.get(r.room_id)
    out: dict[str, Any] = {"room_id": r.room_id, "name": r.name, "kind": r.kind or None}
    if r.alias:
        out["alias"] = r.alias
    if r.did:
        out["did"] = r.did
    if r.purpose:
        out["purpose"] = r.purpose
    if room is not None:
        out["encrypted"] = room.encrypted
        out["members"] = room.joined_count
    return out


class AgentTools:
    """The tools one agent calls; ``rt`` holds its device and policy."""

    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt

    @property
    def _c(self) -> DataroomsClient:
        return self.rt.client

    # -- rooms ----------------------------------------------------------------

    async def list_rooms(self) -> dict[str, Any]:
        """List the rooms this agent may use and is a member of (name, kind, alias, DID,
        encryption), and pending invitations. Start here to find room ids."""
        audit.note_room("*")
        rooms = [
            _room_json(r, self.rt)
            for r in self._c.rooms.list()
            if self.rt.policy.room_allowed(self.rt.facts(r.room_id))
        ]
        invites = []
        for rid in self._c.rooms.invites():
            explicit = rid in self.rt.policy.explicit_room_ids() or self.rt.policy.any_room
            if explicit or self.rt.policy.room_kinds or self.rt.policy.dids:
                invites.append({"room_id": rid, "join_with": "join_room"})
        return {
            "agent": self.rt.name,
            "user_id": self.rt.user_id,
            "rooms": rooms,
            "invites": invites,
        }

    async def room_info(self, room: RoomArg) -> dict[str, Any]:
        """Describe one room: name, topic, kind, purpose, DID, alias, encryption, member count,
        and this agent's own access level there."""
        rid = await self.rt.room(room)
        info = _room_json(self._c.rooms.info(rid), self.rt)
        nroom = self._c.nio.rooms[rid]
        info["topic"] = nroom.topic
        mine = [m for m in members(self._c, rid) if m["user_id"] == self.rt.user_id]
        info["my_access"] = mine[0]["access"] if mine else None
        return info

    async def room_members(self, room: RoomArg) -> dict[str, Any]:
        """List a room's members and invitees with their access (read, write, admin)."""
        rid = await self.rt.room(room)
        return {"room_id": rid, "members": members(self._c, rid)}

    async def join_room(self, room: RoomArg) -> dict[str, Any]:
        """Join a room this agent was invited to (by id or alias). Needed before reading it."""
        policy = self.rt.policy
        if not room.startswith(("!", "#")):
            raise ValidationError(
                f"room must be a room id (!opaque:server) or an alias (#name:server), got {room!r}"
            )
        explicit = False
        if room.startswith("#"):
            explicit = policy.alias_allowed(room)
        elif room.startswith("!"):
            explicit = policy.any_room or room in policy.explicit_room_ids()
            audit.note_room(room)
        if not explicit:
            if not room.startswith("!") or not (policy.room_kinds or policy.dids):
                raise CapabilityDenied(
                    self.rt.name, f"room:{room}", f"{room} is not one of its rooms"
                )
            if room not in self._c.nio.invited_rooms:
                raise CapabilityDenied(
                    self.rt.name,
                    f"room:{room}",
                    f"{room} is not one of its listed rooms, and it is not invited to it",
                )
        rid = await self._c.rooms.join(room)
        audit.note_room(rid)
        if not explicit:
            # Kind and DID are only readable from inside: check now, and leave if outside.
            facts = await self.rt.facts_after_join(rid)
            if not policy.room_allowed(facts):
                await self._c.rooms.leave(rid)
                policy.check_room(facts)
        return {"room_id": rid, "joined": True}

    async def leave_room(self, room: RoomArg) -> dict[str, Any]:
        """Leave a room. The agent can only come back if invited again."""
        rid = await self.rt.room(room)
        await self._c.rooms.leave(rid)
        return {"room_id": rid, "left": True}

    async def create_room(
        self,
        name: Annotated[
            str,
            Field(
                description="Room name (visible to the homeserver)", min_length=1, max_length=255
            ),
        ],
        topic: Annotated[
            str | None, Field(description="Room topic (visible to the homeserver)")
        ] = None,
        invite: Annotated[
            list[str] | None,
            Field(description="Matrix user ids (@name:server) to invite; they can write"),
        ] = None,
    ) -> dict[str, Any]:
        """Create an end-to-end encrypted conversation room (kind 'collaboration') and
        invite people to it. The agent is its admin."""
        self.rt.policy.check_new_room("collaboration", None)
        writers: list[str] = [check_user_id(u) for u in invite or []]
        r = await self._c.rooms.create("collaboration", name=name, topic=topic, writers=writers)
        audit.note_room(r.room_id)
        await self.rt.until_encrypted(r.room_id)
        return _room_json(r, self.rt)

    async def create_data_room(
        self,
        kind: Annotated[
            Literal["entity", "project", "device", "verification", "collaboration"],
            Field(description="What the room holds"),
        ],
        name: Annotated[
            str | None, Field(description="Room name (visible to the homeserver)")
        ] = None,
        did: Annotated[
            str | None,
            Field(
                description="The entity's DID (required for kind 'entity'), "
                "e.g. did:ixo:entity:1a2b"
            ),
        ] = None,
        purpose: Annotated[
            str | None,
            Field(description="What the room is for (visible to the homeserver)", max_length=1024),
        ] = None,
        alias: Annotated[bool, Field(description="Give an entity room IXO's DID alias")] = False,
    ) -> dict[str, Any]:
        """Create an end-to-end encrypted data room for records, files and messages.
        Room name, purpose and DID are room state, which the homeserver can read: no secrets."""
        self.rt.policy.check_new_room(kind, did)
        r = await self._c.rooms.create(kind, name=name, did=did, purpose=purpose, alias=alias)
        audit.note_room(r.room_id)
        await self.rt.until_encrypted(r.room_id)
        return _room_json(r, self.rt)

    async def invite_user(
        self,
        room: RoomArg,
        user_id: Annotated[str, Field(description="Matrix user id, @name:server")],
        access: Annotated[
            Literal["read", "write"], Field(description="read: may read; write: may also write")
        ],
    ) -> dict[str, Any]:
        """Invite a user into a room with read or write access (needs admin power in the
        room, e.g. a room this agent created)."""
        rid = await self.rt.room(room)
        uid = check_user_id(user_id)
        await self._c.rooms.grant(rid, uid, access)
        return {"room_id": rid, "user_id": uid, "access": access, "invited": True}

    # -- messages --------------------------------------------------------------

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
        events, more = await read_timeline(
            self._c,
            rid,
            limit=limit,
            since_ms=since_ms,
            until_ms=until_ms,
            include_state=include_state,
        )
        return {"room_id": rid, "events": [event_json(e) for e in events], "more": more}

    async def read_thread(
        self,
        room: RoomArg,
        thread_root: Annotated[str, Field(description="Event id of the thread's first message")],
        limit: Annotated[int, Field(description="At most this many replies", ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Read a thread: its root message and its latest replies, oldest first."""
        rid = await self.rt.room(room)
        events = await read_thread(self._c, rid, thread_root, limit=limit)
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

    # -- records ----------------------------------------------------------------

    async def put_record(
        self,
        room: RoomArg,
        key: KeyArg,
        value: Annotated[
            Any, Field(description="Any JSON value: object, array, string, number, boolean or null")
        ],
        schema: Annotated[
            str | None, Field(description="Validate against this JSON Schema the room publishes")
        ] = None,
        txn_id: Annotated[
            str | None,
            Field(
                description="Idempotency key: retrying with the same txn_id never makes a second "
                "version"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Write a new version of a record (end-to-end encrypted; history is kept).
        Records are the data of a data room: a twin's current state is the latest version
        of every key."""
        rid = await self.rt.room(room, sends=True)
        return record_json(await self._c.records.put(rid, key, value, schema=schema, txn_id=txn_id))

    async def get_record(self, room: RoomArg, key: KeyArg) -> dict[str, Any]:
        """Read the latest version of a record: value, version number, writer and time."""
        rid = await self.rt.room(room)
        return record_json(await self._c.records.get(rid, key))

    async def get_twin(
        self,
        room: RoomArg,
        with_metadata: Annotated[
            bool, Field(description="Include version, writer and time of each key")
        ] = False,
    ) -> dict[str, Any]:
        """Read a room's twin state: the latest value of every record key."""
        rid = await self.rt.room(room)
        if with_metadata:
            latest = await self._c.records.latest(rid)
            return {"room_id": rid, "state": {k: record_json(r) for k, r in latest.items()}}
        return {"room_id": rid, "state": await self._c.records.twin(rid)}

    async def record_history(
        self,
        room: RoomArg,
        key: KeyArg,
        since: TimeArg = None,
        until: TimeArg = None,
        limit: Annotated[int, Field(description="At most this many versions", ge=1, le=1000)] = 100,
        newest_first: Annotated[bool, Field(description="Newest version first")] = False,
    ) -> dict[str, Any]:
        """Every version of a record key, optionally within a time range."""
        rid = await self.rt.room(room)
        versions = await self._c.records.history(
            rid,
            key,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            limit=limit,
            newest_first=newest_first,
        )
        return {"room_id": rid, "key": key, "versions": [record_json(r) for r in versions]}

    # -- files ---------------------------------------------------------------------

    async def upload_file(
        self,
        room: RoomArg,
        path: Annotated[
            str | None, Field(description="File to upload, relative to the agent's files directory")
        ] = None,
        content_base64: Annotated[
            str | None, Field(description="Or the file's bytes, base64-encoded (small files only)")
        ] = None,
        filename: Annotated[str | None, Field(description="Name to give the file")] = None,
        mimetype: Annotated[str | None, Field(description="e.g. application/pdf")] = None,
    ) -> dict[str, Any]:
        """Encrypt and upload a file into a room (AES-256-CTR, SHA-256 checked by readers).
        Give either `path` (inside the agent's files directory) or `content_base64`."""
        if (path is None) == (content_base64 is None):
            raise ValidationError("give exactly one of path or content_base64")
        source: Path | bytes
        if path is not None:
            source = self.rt.policy.file_path(path, purpose="uploading from a path")
            if not source.is_file():
                raise ValidationError(f"{path!r} is not a file in the agent's files directory")
        else:
            assert content_base64 is not None
            cap = self.rt.settings.max_inline_file_bytes
            if len(content_base64) > (cap * 4) // 3 + 4:
                raise ValidationError(
                    f"content_base64 is over the inline limit of {cap} bytes; upload from a path"
                )
            try:
                source = base64.b64decode(content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValidationError("content_base64 is not valid base64") from None
        rid = await self.rt.room(room, sends=True)
        ref = await self._c.files.put(rid, source, filename=filename, mimetype=mimetype)
        return {
            "room_id": rid,
            "event_id": ref.event_id,
            "name": ref.name,
            "size": ref.size,
            "mimetype": ref.mimetype,
        }

    async def download_file(
        self,
        room: RoomArg,
        event_id: EventArg,
        save_as: Annotated[
            str | None,
            Field(
                description="Save into the agent's files directory under this relative path, "
                "instead of returning the content"
            ),
        ] = None,
        overwrite: Annotated[
            bool, Field(description="Replace an existing file at save_as")
        ] = False,
    ) -> list[TextContent | EmbeddedResource]:
        """Download, verify (SHA-256) and decrypt a file from a room. Small files come back
        as an embedded resource (base64); larger ones must be saved with `save_as`."""
        target = None
        if save_as is not None:
            target = self.rt.policy.file_path(save_as, purpose="saving a file")
        rid = await self.rt.room(room)
        ref = await self._c.files.ref(rid, event_id)
        meta = {
            "room_id": rid,
            "event_id": event_id,
            "name": ref.name,
            "size": ref.size,
            "mimetype": ref.mimetype,
        }
        if target is not None:
            if target.is_dir():
                target = self.rt.policy.file_path(
                    str(target / _safe_name(ref.name)), purpose="saving a file"
                )
            if target.exists() and not overwrite:
                raise ValidationError(f"{save_as!r} exists; pass overwrite=true to replace it")
            target.parent.mkdir(parents=True, exist_ok=True)
            await download_decrypted(self._c.homeserver_url, self._c.access_token, ref.file, target)
            meta["saved_to"] = str(target)
            return [TextContent(type="text", text=json.dumps(meta))]
        data = await self.read_file_bytes(rid, event_id)
        mime = ref.mimetype or mimetypes.guess_type(ref.name)[0] or "application/octet-stream"
        meta["size"] = len(data)
        return [
            TextContent(type="text", text=json.dumps(meta)),
            EmbeddedResource(
                type="resource",
                resource=BlobResourceContents(
                    uri=file_uri(rid, event_id),
                    mime_type=mime,
                    blob=base64.b64encode(data).decode(),
                ),
            ),
        ]

    async def read_file_bytes(self, rid: str, event_id: str) -> bytes:
        """A file's bytes, refused above the inline cap (checked while downloading)."""
        ref = await self._c.files.ref(rid, event_id)
        cap = self.rt.settings.max_inline_file_bytes
        if ref.size and ref.size > cap:
            raise ValidationError(
                f"the file is {ref.size} bytes, over the inline limit of {cap} bytes; "
                "download it with save_as into the agent's files directory"
            )
        try:
            return await download_decrypted_bytes(
                self._c.homeserver_url, self._c.access_token, ref.file, max_size=cap
            )
        except ValidationError:
            raise ValidationError(
                f"the file is over the inline limit of {cap} bytes; download it with save_as "
                "into the agent's files directory"
            ) from None

    # -- keyed state (IXO state-bot semantics) --------------------------------------

    async def get_state(
        self,
        room: RoomArg,
        key: Annotated[str, Field(description="State key", min_length=1, max_length=255)],
        path: Annotated[
            str | None, Field(description="Dot path into the value, e.g. 'config.threshold'")
        ] = None,
    ) -> dict[str, Any]:
        """Read a keyed room-state value (IXO `ixo.room.state`, state_key = key). Honours the
        key's `ixo.room.state.acl` read list. Room state is NOT end-to-end encrypted."""
        rid = await self.rt.room(room)
        self._check_acl(rid, key, "read")
        content = self._c.index.state(rid, STATE_EVENT, key)
        if content is None:
            async with self._c.http() as http:
                try:
                    content = await http.request(
                        "GET",
                        f"/_matrix/client/v3/rooms/{quote(rid, safe='')}/state/{STATE_EVENT}/"
                        f"{quote(key, safe='')}",
                    )
                except HomeserverError as exc:
                    if exc.errcode == "M_NOT_FOUND":
                        raise NotFoundError(f"room {rid} has no state for key {key!r}") from None
                    raise
        value: Any = content
        for part in (path or "").split("."):
            if not part:
                continue
            if not isinstance(value, dict) or part not in value:
                raise NotFoundError(f"state {key!r} in {rid} has nothing at path {path!r}")
            value = value[part]
        return {"room_id": rid, "key": key, "path": path, "value": value}

    async def set_state(
        self,
        room: RoomArg,
        key: Annotated[str, Field(description="State key", min_length=1, max_length=255)],
        value: Annotated[
            Any, Field(description="A JSON object; with `path`, any JSON value for that part")
        ],
        path: Annotated[
            str | None, Field(description="Dot path: set only this part of the current value")
        ] = None,
    ) -> dict[str, Any]:
        """Set a keyed room-state value (IXO `ixo.room.state`). Honours the key's
        `ixo.room.state.acl` write list. Room state is NOT end-to-end encrypted: the
        homeserver and every member can read it. Never store secrets here; use put_record."""
        rid = await self.rt.room(room)
        self._check_acl(rid, key, "write")
        if not path and not isinstance(value, dict):
            raise ValidationError("value must be a JSON object (or give a path to set a part)")
        content: dict[str, Any] = value if isinstance(value, dict) else {}
        if path:
            current = self._c.index.state(rid, STATE_EVENT, key) or {}
            content = json.loads(json.dumps(current))
            node = content
            parts = [p for p in path.split(".") if p]
            if not parts:
                raise ValidationError(f"invalid path {path!r}")
            for part in parts[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
            node[parts[-1]] = value
        resp = await self._c.nio.room_put_state(rid, STATE_EVENT, content, key)
        if is_error(resp):
            raise error_from_response(resp, f"setting state {key!r} in {rid}")
        # Read our own write: the index has it now, not only after the next sync.
        self._c.index.apply(
            SyncBatch([], [], [], [(rid, STATE_EVENT, key, content, self.rt.user_id)], [], [])
        )
        return {"room_id": rid, "key": key, "event_id": str(resp.event_id)}

    def _check_acl(self, rid: str, key: str, mode: Literal["read", "write"]) -> None:
        acl = self._c.index.state(rid, STATE_ACL_EVENT, key)
        if not isinstance(acl, dict):
            return
        write = acl.get("write") if isinstance(acl.get("write"), list) else None
        read = acl.get("read") if isinstance(acl.get("read"), list) else None
        me = self.rt.user_id
        if mode == "write" and write is not None and me not in write:
            raise CapabilityDenied(
                self.rt.name,
                f"acl:write:{key}",
                f"{me} is not in the write list of {key!r}'s ACL in {rid}",
            )
        if mode == "read" and read is not None and me not in read and me not in (write or []):
            raise CapabilityDenied(
                self.rt.name,
                f"acl:read:{key}",
                f"{me} is not in the read list of {key!r}'s ACL in {rid}",
            )

    # -- telemetry (end-to-end encrypted time series) ------------------------------

    async def telemetry_series(
        self,
        room: RoomArg,
        metric: Annotated[str | None, Field(description="Only this metric's series")] = None,
    ) -> dict[str, Any]:
        """List a room's telemetry series (metric + tags) with sample counts and first/last
        sample times. Call this first to learn which metrics query_telemetry and
        aggregate_telemetry can read."""
        rid = await self.rt.room(room)
        infos = await self._c.telemetry.series(rid, metric)
        return {
            "room_id": rid,
            "series": [
                {
                    "metric": i.metric,
                    "tags": dict(i.tags),
                    "count": i.count,
                    "first_ts": i.first_ts,
                    "first_time": iso(i.first_ts),
                    "last_ts": i.last_ts,
                    "last_time": iso(i.last_ts),
                }
                for i in infos
            ],
        }

    async def query_telemetry(
        self,
        room: RoomArg,
        metric: Annotated[
            str | None,
            Field(
                description="Only this metric (e.g. 'temperature'); omit for every metric",
                min_length=1,
                max_length=255,
            ),
        ] = None,
        since: TimeArg = None,
        until: TimeArg = None,
        tags: TagsArg = None,
        limit: Annotated[
            int, Field(description="At most this many samples", ge=1, le=MAX_TELEMETRY_SAMPLES)
        ] = 1000,
        newest_first: Annotated[
            bool, Field(description="The latest samples first (with limit: the latest N)")
        ] = False,
    ) -> dict[str, Any]:
        """Read raw telemetry samples (decrypted) of a room within [since, until), oldest
        first: time, metric, value, tags. `more` is true when the limit cut the result.
        For long ranges prefer aggregate_telemetry (per-bucket statistics)."""
        rid = await self.rt.room(room)
        since_ms, until_ms = _time_range(since, until)
        tel = self._c.telemetry
        if metric is not None:
            metrics = [metric]
            fresh = True  # query catches the room up
        else:
            metrics = sorted({i.metric for i in await tel.series(rid)})  # catches up
            fresh = False
        streams: list[list[Sample]] = []
        for m in metrics:
            streams.append(
                await tel.query(
                    rid,
                    m,
                    since=since_ms or 0,
                    until=until_ms,
                    tags=tags,
                    limit=limit + 1,
                    newest_first=newest_first,
                    catch_up=fresh,
                )
            )
        merged = list(heapq.merge(*streams, key=lambda s: s.ts, reverse=newest_first))
        return {
            "room_id": rid,
            "metric": metric,
            "samples": [_sample_json(s) for s in merged[:limit]],
            "more": len(merged) > limit,
        }

    async def aggregate_telemetry(
        self,
        room: RoomArg,
        metric: MetricArg,
        since: Annotated[
            str | int,
            Field(
                description="Start of the first bucket: ISO 8601 time (e.g. "
                "2025-05-01T12:00:00Z) or milliseconds since the epoch"
            ),
        ],
        step: Annotated[
            str | int,
            Field(
                description="Bucket width: milliseconds, or a duration such as '30s', '5m', "
                "'1h', '1d'"
            ),
        ],
        until: TimeArg = None,
        tags: TagsArg = None,
    ) -> dict[str, Any]:
        """Aggregate a telemetry metric per time bucket [start, start + step) from `since`
        to `until` (default now): count, min, max, mean and last value of each bucket.
        Buckets without samples are left out. All series of the metric matching `tags`
        are aggregated together."""
        rid = await self.rt.room(room)
        since_ms, until_ms = _time_range(since, until)
        assert since_ms is not None
        end = until_ms if until_ms is not None else now_ms() + 1
        if end <= since_ms:
            raise ValidationError("until must be after since")
        step_ms = parse_step(step)
        if -(-(end - since_ms) // step_ms) > MAX_TELEMETRY_BUCKETS:
            raise ValidationError(
                f"that range holds more than {MAX_TELEMETRY_BUCKETS:,} buckets of {step_ms} ms: "
                "choose a larger step or a shorter range"
            )
        buckets = await self._c.telemetry.aggregate(
            rid, metric, since=since_ms, until=end, step=step_ms, tags=tags
        )
        return {
            "room_id": rid,
            "metric": metric,
            "since": since_ms,
            "until": end,
            "step_ms": step_ms,
            "buckets": [_bucket_json(b, step_ms) for b in buckets],
        }

    async def append_telemetry(
        self,
        room: RoomArg,
        samples: Annotated[
            list[TelemetrySampleArg],
            Field(
                description="The samples to append", min_length=1, max_length=MAX_TELEMETRY_SAMPLES
            ),
        ],
        wait_seconds: Annotated[
            float,
            Field(
                description="Wait at most this long for the homeserver to acknowledge them",
                ge=0,
                le=120,
            ),
        ] = 30,
    ) -> dict[str, Any]:
        """Append telemetry samples to a room (end-to-end encrypted, batched). They are
        durable in the agent's outbox on return and sent even if acknowledgement times
        out; `acknowledged` says whether the homeserver has them already."""
        rid = await self.rt.room(room, sends=True)
        rows = [
            (
                parse_time(s.ts, f"samples[{i}].ts") if s.ts is not None else None,
                s.metric,
                s.value,
                s.tags,
            )
            for i, s in enumerate(samples)
        ]
        tel = self._c.telemetry
        n = await tel.append_many(rid, rows)
        acknowledged = True
        try:
            await tel.flush(timeout=wait_seconds)
        except TimeoutError:
            acknowledged = False
        return {"room_id": rid, "appended": n, "acknowledged": acknowledged}


def file_uri(room_id: str, event_id: str) -> str:
    return f"datarooms://rooms/{quote(room_id, safe='')}/files/{quote(event_id, safe='')}"


def _time_range(since: str | int | None, until: str | int | None) -> tuple[int | None, int | None]:
    since_ms, until_ms = parse_time(since, "since"), parse_time(until, "until")
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ValidationError(f"until ({until!r}) must be after since ({since!r})")
    return since_ms, until_ms


def parse_step(step: str | int) -> int:
    """A bucket width in ms: a positive number of ms, or '500ms', '30s', '5m', '1h', '1d'."""
    if isinstance(step, int) and not isinstance(step, bool):
        ms = step
    elif isinstance(step, str):
        m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)?\s*", step)
        if m is None:
            raise ValidationError(
                f"step must be milliseconds or a duration such as '30s', '5m', '1h', '1d'; "
                f"got {step!r}"
            )
        ms = int(m.group(1)) * _UNITS_MS[m.group(2) or "ms"]
    else:
        raise ValidationError("step must be milliseconds or a duration such as '5m'")
    if ms < 1:
        raise ValidationError("step must be at least 1 ms")
    return ms


def _sample_json(s: Sample) -> dict[str, Any]:
    return {
        "ts": s.ts,
        "time": iso(s.ts),
        "metric": s.metric,
        "value": s.value,
        "tags": dict(s.tags),
    }


def _bucket_json(b: Bucket, step: int) -> dict[str, Any]:
    return {
        "start": b.start,
        "start_time": iso(b.start),
        "end": b.start + step,
        "count": b.count,
        "min": b.min,
        "max": b.max,
        "mean": b.mean,
        "last": b.last,
        "last_ts": b.last_ts,
        "last_time": iso(b.last_ts),
    }


def _safe_name(name: str) -> str:
    base = Path(name).name
    if base in ("", ".", ".."):
        return "file.bin"
    return base


__all__ = ["ANNOTATIONS", "AgentTools", "file_uri", "parse_step"]
