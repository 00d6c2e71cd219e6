"""Tools for rooms: list, describe, join, leave, create, invite."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from datarooms.errors import ValidationError
from datarooms.ids import user_id as check_user_id
from datarooms.services.mcp import audit
from datarooms.services.mcp.policy import CapabilityDenied
from datarooms.services.mcp.reading import members
from datarooms.services.mcp.tools._common import RoomArg, ToolBase, room_json


class RoomTools(ToolBase):
    """Rooms and membership."""

    async def list_rooms(self) -> dict[str, Any]:
        """List the rooms this agent may use and is a member of (name, kind, alias, DID,
        encryption), and pending invitations. Start here to find room ids."""
        audit.note_room("*")
        rooms = [
            room_json(r, self.rt)
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
        info = room_json(self._c.rooms.info(rid), self.rt)
        details = self._c.rooms.details(rid)
        info["topic"] = details.topic if details is not None else None
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
            explicit = policy.any_room or room in policy.rooms
            if not explicit and not policy.did_alias(room, self.rt.server_name):
                raise CapabilityDenied(
                    self.rt.name, f"room:{room}", f"{room} is not one of its rooms"
                )
        elif room.startswith("!"):
            explicit = policy.any_room or room in policy.explicit_room_ids()
            audit.note_room(room)
        if not explicit and room.startswith("!"):
            # In scope only by kind or DID (checked after joining, from trusted senders).
            if not (policy.room_kinds or policy.dids):
                raise CapabilityDenied(
                    self.rt.name, f"room:{room}", f"{room} is not one of its rooms"
                )
            if not self._c.rooms.is_invited(room):
                raise CapabilityDenied(
                    self.rt.name,
                    f"room:{room}",
                    f"{room} is not one of its listed rooms, and it is not invited to it",
                )
        rid = await self._c.rooms.join(room)
        audit.note_room(rid)
        if not explicit:
            # Kind and DID are only readable from inside: check now, and leave if outside.
            # (A DID alias too: the room it names must say so, from a trusted sender.)
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
        await self.rt.facts_after_join(r.room_id)  # its kind, for the scope of later calls
        return room_json(r, self.rt)

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
        await self.rt.facts_after_join(r.room_id)  # its kind, for the scope of later calls
        return room_json(r, self.rt)

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
