"""Data rooms: creation by kind, and access control mapped onto Matrix.

Access levels map onto power levels and membership:

=========  ===============  =====================================================
access     power level      may
=========  ===============  =====================================================
``read``   0                read records, files and messages (member of the room)
``write``  50               also put records, upload files, send messages
``admin``  100              also grant/revoke, publish schemas, change room state
=========  ===============  =====================================================

Every data room is encrypted (``m.megolm.v1.aes-sha2``, keys rotated weekly or
every 100 messages), invite-only, and has ``shared`` history visibility so a
member can read the room's history (given the keys). In collaboration rooms,
members write by default; in the other kinds, they read by default.

Revoking kicks the user and discards the room's outbound Megolm session, so
the next write starts a session the revoked user never receives.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from nio import RoomCreateError, RoomPreset, RoomVisibility

from datarooms import events as ev
from datarooms.errors import AccessDeniedError, HomeserverError, NotFoundError, ValidationError
from datarooms.ids import entity_alias, entity_alias_localpart, server_of
from datarooms.ids import room_id as check_room_id
from datarooms.ids import user_id as check_user_id
from datarooms.sdk.timeline import error_from_response, is_error

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

Access = Literal["read", "write", "admin"]
POWER: dict[str, int] = {"read": 0, "write": 50, "admin": 100}
ENCRYPTION = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "rotation_period_ms": 7 * 24 * 3600 * 1000,
    "rotation_period_msgs": 100,
}


@dataclass(frozen=True)
class DataRoom:
    room_id: str
    kind: str
    name: str | None = None
    alias: str | None = None
    did: str | None = None
    purpose: str | None = None


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    display_name: str | None
    verified: bool
    ed25519: str


@dataclass(frozen=True)
class MemberAccess:
    user_id: str
    membership: str  # join | invite
    power: int
    access: Access
    devices: list[DeviceInfo] = field(default_factory=list)
    last_active_ts: int | None = None


def access_for_power(power: int) -> Access:
    if power >= POWER["admin"]:
        return "admin"
    if power >= POWER["write"]:
        return "write"
    return "read"


def power_levels(kind: str, levels: dict[str, int]) -> dict[str, Any]:
    """The power levels of a data room of ``kind`` with these user levels."""
    # Since room version 12 the creator's power is unbounded and implicit: it
    # must not be listed in ``users``.
    admin, write = POWER["admin"], POWER["write"]
    return {
        "users": levels,
        "users_default": write if kind == "collaboration" else POWER["read"],
        "events_default": write,
        "state_default": admin,
        "ban": admin,
        "kick": admin,
        "invite": admin,
        "redact": write,
        "events": {
            "m.room.name": admin,
            "m.room.topic": admin,
            "m.room.power_levels": admin,
            "m.room.history_visibility": admin,
            "m.room.encryption": admin,
            "m.room.tombstone": admin,
            "m.room.canonical_alias": admin,
            ev.ROOM_INFO: admin,
            ev.SCHEMA: admin,
            "m.reaction": write,
        },
    }


class Rooms:
    """``client.rooms``: create data rooms and control who can read and write them."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client
        #: The rooms bot that makes entity rooms, or a function that finds it (see
        #: :mod:`datarooms.sdk.roomsbot`); None: the one the settings or the running
        #: platform name, if any.
        self.roomsbot_url: str | Callable[[], str | None] | None = None

    async def create(
        self,
        kind: str,
        *,
        name: str | None = None,
        topic: str | None = None,
        did: str | None = None,
        purpose: str | None = None,
        readers: list[str] | tuple[str, ...] = (),
        writers: list[str] | tuple[str, ...] = (),
        admins: list[str] | tuple[str, ...] = (),
        alias: bool | str = False,
    ) -> DataRoom:
        """Create an encrypted data room of ``kind``.

        For an ``entity`` room, ``did`` is required; with ``alias=True`` the room
        gets IXO's entity alias (``#did-ixo-entity-...:server``). Where a rooms bot
        runs, it owns those aliases: then it makes (or finds) the entity's rooms and
        invites the caller, who joins; ``name``, ``topic`` and ``purpose`` are the
        bot's (see :mod:`datarooms.sdk.roomsbot`).
        Room state (name, topic, kind, purpose, DID) is not encrypted by Matrix:
        never put secrets there.
        """
        if kind not in ev.ROOM_KINDS:
            raise ValidationError(
                f"unknown room kind {kind!r}; choose one of {', '.join(ev.ROOM_KINDS)}"
            )
        if kind == "entity" and not did:
            raise ValidationError("an entity room needs the entity's DID (did=...)")
        info: dict[str, Any] = {"kind": kind, "version": 1}
        if did:
            alias_local = entity_alias_localpart(did)  # validates the DID
            info["did"] = did
        if purpose:
            if len(purpose) > 1024:
                raise ValidationError("purpose is longer than 1024 characters")
            info["purpose"] = purpose
        levels: dict[str, int] = {}
        for users, access in ((readers, "read"), (writers, "write"), (admins, "admin")):
            for u in users:
                levels[check_user_id(u)] = POWER[access]
        alias_name: str | None = None
        if alias is True:
            if not did:
                raise ValidationError("alias=True needs a DID; or pass the alias localpart")
            alias_name = alias_local
        elif isinstance(alias, str) and alias:
            alias_name = alias
        me = self._c.user_id
        if kind == "entity" and alias is True and did:
            from datarooms.sdk.roomsbot import entity_room_from_roomsbot

            made = await entity_room_from_roomsbot(self._c, did, self.roomsbot_url)
            if made is not None:
                await self.join(made)
                for user, level in levels.items():
                    if user != me:
                        await self.grant(made, user, access_for_power(level))
                room = self.info(made)
                return DataRoom(made, kind, room.name, entity_alias(did, server_of(me)), did)
        resp = await self._c.nio.room_create(
            visibility=RoomVisibility.private,
            alias=alias_name,
            name=name,
            topic=topic,
            preset=RoomPreset.private_chat,
            invite=[u for u in levels if u != me],
            initial_state=[
                {"type": "m.room.encryption", "state_key": "", "content": ENCRYPTION},
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "shared"},
                },
                {
                    "type": "m.room.guest_access",
                    "state_key": "",
                    "content": {"guest_access": "forbidden"},
                },
                {"type": ev.ROOM_INFO, "state_key": "", "content": info},
            ],
            power_level_override=power_levels(kind, {u: p for u, p in levels.items() if u != me}),
        )
        if isinstance(resp, RoomCreateError):
            if resp.status_code == "M_ROOM_IN_USE":
                raise ValidationError(f"the alias for this room is taken: {resp.message}")
            if resp.status_code == "M_EXCLUSIVE":
                raise AccessDeniedError(
                    f"the homeserver reserves this alias for an application service (a rooms "
                    f"bot): {resp.message}. Entity rooms there are the rooms bot's: set "
                    "client.rooms.roomsbot_url, or [roomsbot] url (DATAROOMS_ROOMSBOT_URL)",
                    errcode="M_EXCLUSIVE",
                )
            raise HomeserverError(
                f"creating the room failed: {resp.status_code}: {resp.message}",
                errcode=resp.status_code,
            )
        room_id = str(resp.room_id)
        await self._wait_known(room_id)
        # It was created with m.room.encryption in its initial state.
        self._c.nio.rooms[room_id].encrypted = True
        self._c.nio.encrypted_rooms.add(room_id)
        for user in levels:
            if user != me:
                self._now_member(room_id, user)
        full_alias = None
        if alias_name:
            full_alias = (
                entity_alias(did, server_of(me))
                if alias is True and did
                else f"#{alias_name}:{server_of(me)}"
            )
        return DataRoom(room_id, kind, name, full_alias, did, purpose)

    async def _wait_known(self, room_id: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while room_id not in self._c.nio.rooms and loop.time() < deadline:
            await self._c.sync_once()
        if room_id not in self._c.nio.rooms:
            raise HomeserverError(f"room {room_id} did not appear in sync")

    async def join(self, room: str) -> str:
        """Join a room by id or alias (accepting an invite)."""
        resp = await self._c.nio.join(room)
        if is_error(resp):
            raise error_from_response(resp, f"{self._c.user_id} joining {room}")
        await self._wait_known(str(resp.room_id))
        return str(resp.room_id)

    async def leave(self, room_id: str) -> None:
        await self._c.nio.room_leave(check_room_id(room_id))

    def invites(self) -> builtins.list[str]:
        """Rooms this user is invited to (as of the last sync)."""
        return list(self._c.nio.invited_rooms)

    def list(self) -> builtins.list[DataRoom]:
        """Joined rooms, with their kind where they are data rooms."""
        out = []
        for rid, room in self._c.nio.rooms.items():
            info = self._c.index.state(rid, ev.ROOM_INFO) or {}
            out.append(
                DataRoom(
                    rid,
                    str(info.get("kind", "")),
                    room.display_name,
                    room.canonical_alias,
                    info.get("did"),
                    info.get("purpose"),
                )
            )
        return out

    def info(self, room_id: str) -> DataRoom:
        room = self._c.nio.rooms.get(room_id)
        if room is None:
            raise NotFoundError(f"room {room_id} is unknown to {self._c.user_id}")
        info = self._c.index.state(room_id, ev.ROOM_INFO) or {}
        return DataRoom(
            room_id,
            str(info.get("kind", "")),
            room.display_name,
            room.canonical_alias,
            info.get("did"),
            info.get("purpose"),
        )

    async def resolve(self, room: str) -> str:
        """A room id for a room id or alias."""
        if room.startswith("!"):
            return check_room_id(room)
        if room.startswith("#"):
            resp = await self._c.nio.room_resolve_alias(room)
            rid = getattr(resp, "room_id", None)
            if not rid:
                raise NotFoundError(f"no room has the alias {room}")
            return str(rid)
        raise ValidationError(f"{room!r} is neither a room id (!...) nor an alias (#...)")

    # -- access control ------------------------------------------------------

    async def grant(self, room_id: str, user: str, access: Access = "read") -> None:
        """Give ``user`` read, write or admin access: invite them and set their power."""
        if access not in POWER:
            raise ValidationError(f"access must be read, write or admin, got {access!r}")
        user = check_user_id(user)
        await self._c.ensure_room(room_id)
        if user in _creators(self._c, room_id):
            raise ValidationError(f"{user} created {room_id} and always has admin access")
        await self._set_power(room_id, {user: POWER[access]})
        room = self._c.nio.rooms[room_id]
        if user not in room.users:
            resp = await self._c.nio.room_invite(room_id, user)
            if is_error(resp):
                raise error_from_response(resp, f"inviting {user} to {room_id}")
            self._now_member(room_id, user)

    def _now_member(self, room_id: str, user: str) -> None:
        """Make a new invitee known at once, so the next write shares the key with them
        without waiting for sync (history visibility is ``shared``)."""
        nio = self._c.nio
        room = nio.rooms[room_id]
        if user not in room.users:
            room.add_member(user, None, None, invited=True)
        if nio.olm is not None:
            nio.olm.users_for_key_query.add(user)
            nio.invalidate_outbound_session(room_id)

    async def revoke(self, room_id: str, user: str, reason: str = "access revoked") -> None:
        """Remove ``user``: kick them and rotate the room key so later writes are unreadable."""
        user = check_user_id(user)
        await self._c.ensure_room(room_id)
        room = self._c.nio.rooms[room_id]
        if user in room.users:
            resp = await self._c.nio.room_kick(room_id, user, reason)
            if is_error(resp):
                raise error_from_response(resp, f"removing {user} from {room_id}")
            room.remove_member(user)
        await self._set_power(room_id, {user: None})
        # The next write must use a Megolm session the revoked user never gets.
        self._c.nio.invalidate_outbound_session(room_id)

    async def _set_power(self, room_id: str, changes: dict[str, int | None]) -> None:
        async with self._c.http() as http:
            path = f"/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/"
            try:
                current = await http.request("GET", path)
            except HomeserverError as exc:
                raise _as_access_error(exc, room_id) from None
            users = dict(current.get("users", {}))
            for user, level in changes.items():
                if level is None:
                    users.pop(user, None)
                else:
                    users[user] = level
            if users == current.get("users", {}):
                return
            current["users"] = users
            try:
                await http.request("PUT", path, json=current)
            except HomeserverError as exc:
                raise _as_access_error(exc, room_id) from None

    async def review(self, room_id: str) -> builtins.list[MemberAccess]:
        """Who has access: members and invitees, their power, devices and last activity."""
        await self._c.ensure_room(room_id)
        await self._c.sync_once()  # membership and power as the server has them now
        room = self._c.nio.rooms[room_id]
        nio = self._c.nio
        if nio.should_query_keys:
            await nio.keys_query()
        activity = self._c.index.activity(room_id)
        out = []
        creators = _creators(self._c, room_id)
        for uid, member in sorted(room.users.items()):
            power = POWER["admin"] if uid in creators else room.power_levels.get_user_level(uid)
            devices = [
                DeviceInfo(
                    d.id,
                    d.display_name,
                    nio.olm.is_device_verified(d) if nio.olm else False,
                    d.ed25519,
                )
                for d in nio.device_store.active_user_devices(uid)
            ]
            out.append(
                MemberAccess(
                    uid,
                    "invite" if member.invited else "join",
                    power,
                    access_for_power(power),
                    devices,
                    activity.get(uid),
                )
            )
        return out


def _creators(client: DataroomsClient, room_id: str) -> set[str]:
    """Room creators (room version 12+: implicitly all-powerful)."""
    create = client.index.state(room_id, "m.room.create") or {}
    version = str(create.get("room_version", "1"))
    if not (version.isdigit() and int(version) >= 12):
        return set()
    found = {str(u) for u in create.get("additional_creators", []) if isinstance(u, str)}
    sender = client.index.state_sender(room_id, "m.room.create")
    if sender:
        found.add(sender)
    return found


def _as_access_error(exc: HomeserverError, room_id: str) -> Exception:
    if exc.errcode == "M_FORBIDDEN":
        return AccessDeniedError(
            f"changing access in {room_id} is not allowed: admin access is needed"
        )
    return exc
