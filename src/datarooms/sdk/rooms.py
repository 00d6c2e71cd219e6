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
import dataclasses
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from nio import JoinError, RoomCreateError, RoomPreset, RoomVisibility

from datarooms import events as ev
from datarooms._store.index import LocalIndex
from datarooms._transport.http import MatrixHttp
from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    ValidationError,
)
from datarooms.ids import (
    RoomID,
    entity_alias,
    entity_alias_localpart,
    is_ip_literal,
    server_host,
    server_of,
)
from datarooms.ids import room_id as check_room_id
from datarooms.ids import user_id as check_user_id
from datarooms.sdk.timeline import error_from_response, is_error

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient
    from datarooms.sdk.usage import RoomUsage

Access = Literal["read", "write", "admin"]
SERVER_ACL = "m.room.server_acl"
POWER: dict[str, int] = {"read": 0, "write": 50, "admin": 100}
ENCRYPTION = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "rotation_period_ms": 7 * 24 * 3600 * 1000,
    "rotation_period_msgs": 100,
}
#: Room creators in room versions 12 and later have unbounded power.
CREATOR_POWER = 2**53


def state_path(room_id: str, event_type: str, state_key: str = "") -> str:
    """The Client-Server API path of one state event, every part percent-encoded.

    The one place the SDK builds ``/rooms/{room}/state/{type}/{key}``: room ids,
    event types and state keys may hold ``/``, ``#``, ``?`` or ``%``.
    """
    return (
        f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/"
        f"{quote(event_type, safe='')}/{quote(state_key, safe='')}"
    )


@dataclass(frozen=True)
class DataRoom:
    room_id: RoomID
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
    display_name: str | None = None


@dataclass(frozen=True)
class ServerAcl:
    """A room's ``m.room.server_acl``: the homeservers allowed to take part (host globs;
    ports are ignored, as the spec says). ``None`` from :meth:`Rooms.server_acl`: no ACL,
    every server may take part."""

    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    allow_ip_literals: bool = False

    def allows(self, server_name: str) -> bool:
        """Whether ``server_name`` may take part, by the spec's matching rules."""
        host = server_host(server_name)
        if is_ip_literal(host) and not self.allow_ip_literals:
            return False
        if any(fnmatch.fnmatchcase(host.lower(), g.lower()) for g in self.deny):
            return False
        return any(fnmatch.fnmatchcase(host.lower(), g.lower()) for g in self.allow)

    def content(self) -> dict[str, Any]:
        return {
            "allow": list(self.allow),
            "deny": list(self.deny),
            "allow_ip_literals": self.allow_ip_literals,
        }


@dataclass(frozen=True)
class ServerCopy:
    """A homeserver that holds a copy of a room: every server with a joined member stores
    the room's (encrypted) history and sees its metadata."""

    server_name: str
    members: tuple[str, ...]
    allowed: bool


def _glob_of(name: str) -> str:
    """The ACL entry for a server name (or glob): its host, as ACLs ignore ports."""
    if not isinstance(name, str) or not _SERVER_GLOB.match(name):
        raise ValidationError(f"{name!r} is not a server name (or a glob of them)")
    return server_host(name)


def _acl_for(servers: Sequence[str], own: str) -> ServerAcl:
    hosts = [_glob_of(own)]
    if ":" in own and not own.endswith("]"):
        # Synapse checks that an ACL admits its own server by the whole server name,
        # port included (spec matchers strip the port); this entry satisfies it.
        hosts.append(own)
    for name in servers:
        host = _glob_of(name)
        if host not in hosts:
            hosts.append(host)
    return ServerAcl(tuple(hosts), (), any(is_ip_literal(server_host(h)) for h in hosts))


#: A server name, or a glob of them (``*.example.org``), with an optional port.
_SERVER_GLOB = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.*?\-]{1,255})(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class RoomDetails:
    """What this device knows about a joined room, without asking the homeserver."""

    room_id: str
    name: str | None
    alias: str | None
    topic: str | None
    encrypted: bool
    joined_count: int
    invited_count: int


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
        "redact": admin,  # redacting *other* users' events; everyone may redact their own
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


def _int(value: Any, default: int) -> int:
    """A power level; old rooms may hold them as strings."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


class RoomView:
    """One room's membership and power as this device's local index holds them.

    The one home of Matrix's power rules in the SDK: a user's power (room
    creators in room version 12+ are unbounded; no power levels at all means the
    creator has 100), and the power the room asks for sending an event type. Sync
    keeps the index current; nothing here does I/O.
    """

    def __init__(self, index: LocalIndex, room_id: str) -> None:
        self.index = index
        self.room_id = room_id
        self._power_levels: dict[str, Any] | None = None
        self._pl_loaded = False
        self._creators: set[str] | None = None

    def membership(self, user_id: str) -> str | None:
        content = self.index.state(self.room_id, "m.room.member", user_id)
        value = content.get("membership") if content else None
        return value if isinstance(value, str) else None

    def is_joined(self, user_id: str) -> bool:
        return self.membership(user_id) == "join"

    @property
    def encrypted(self) -> bool:
        return self.index.state(self.room_id, "m.room.encryption") is not None

    @property
    def power_levels(self) -> dict[str, Any] | None:
        if not self._pl_loaded:
            self._power_levels = self.index.state(self.room_id, "m.room.power_levels")
            self._pl_loaded = True
        return self._power_levels

    @property
    def creators(self) -> set[str]:
        """Users with unbounded power (room version 12+: the creator and additional ones)."""
        if self._creators is None:
            create = self.index.state(self.room_id, "m.room.create") or {}
            version = str(create.get("room_version", "1"))
            found: set[str] = set()
            if version.isdigit() and int(version) >= 12:
                extra = create.get("additional_creators", [])
                if isinstance(extra, list):
                    found.update(u for u in extra if isinstance(u, str))
                sender = self.index.state_sender(self.room_id, "m.room.create")
                if sender:
                    found.add(sender)
            self._creators = found
        return self._creators

    def power(self, user_id: str) -> int:
        if user_id in self.creators:
            return CREATOR_POWER
        pl = self.power_levels
        if pl is None:
            # No power levels at all: the creator has 100, everyone else 0 (spec).
            creator = self.index.state_sender(self.room_id, "m.room.create")
            return 100 if user_id == creator else 0
        users = pl.get("users")
        if isinstance(users, dict) and user_id in users:
            return _int(users[user_id], 0)
        return _int(pl.get("users_default"), 0)

    def access(self, user_id: str) -> Access:
        """``read``, ``write`` or ``admin``, as this SDK maps power (creators are admins)."""
        return access_for_power(self.power(user_id))

    def shown_power(self, user_id: str) -> int:
        """Power as people read it: a creator's unbounded power shows as admin's 100."""
        return POWER["admin"] if user_id in self.creators else self.power(user_id)

    def required(self, event_type: str, *, state: bool = True) -> int:
        """The power the room asks for sending ``event_type`` (a state event, or not)."""
        pl = self.power_levels
        if pl is None:
            return 0
        events = pl.get("events")
        if isinstance(events, dict) and event_type in events:
            return _int(events[event_type], 50 if state else 0)
        if state:
            return _int(pl.get("state_default"), 50)
        return _int(pl.get("events_default"), 0)


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
        servers: Sequence[str] | None = None,
    ) -> DataRoom:
        """Create an encrypted data room of ``kind``.

        For an ``entity`` room, ``did`` is required; with ``alias=True`` the room
        gets IXO's entity alias (``#did-ixo-entity-...:server``). Where a rooms bot
        runs, it owns those aliases: then it makes (or finds) the entity's rooms and
        invites the caller, who joins; ``name``, ``topic`` and ``purpose`` are the
        bot's (see :mod:`datarooms.sdk.roomsbot`).
        ``servers`` limits the homeservers that may take part to these and ours (an
        ``m.room.server_acl``); ``None`` leaves the room open to every server the
        homeserver federates with. Members of other servers cannot join it.
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
        acl = None if servers is None else _acl_for(servers, server_of(me))
        if acl is not None:
            for u in levels:
                if not acl.allows(server_of(u)):
                    raise ValidationError(
                        f"{u} is on a server the room's server ACL does not allow "
                        f"({server_of(u)}); add it to servers=[...]"
                    )
        if kind == "entity" and alias is True and did:
            from datarooms.sdk.roomsbot import entity_room_from_roomsbot

            found = await entity_room_from_roomsbot(self._c, did, self.roomsbot_url)
            if found is not None:
                made, bot_server = found
                await self.join(made)
                for user, level in levels.items():
                    if user != me:
                        await self.grant(made, user, access_for_power(level))
                room = self.info(made)
                return DataRoom(RoomID(made), kind, room.name, entity_alias(did, bot_server), did)
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
                *(
                    [{"type": SERVER_ACL, "state_key": "", "content": acl.content()}]
                    if acl is not None
                    else []
                ),
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
        return DataRoom(RoomID(room_id), kind, name, full_alias, did, purpose)

    async def _wait_known(self, room_id: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while room_id not in self._c.nio.rooms and loop.time() < deadline:
            await self._c.sync_once()
        if room_id not in self._c.nio.rooms:
            raise HomeserverError(f"room {room_id} did not appear in sync")

    async def join(self, room: str, *, timeout: float = 30.0) -> RoomID:
        """Join a room by id or alias (accepting an invite); return its id once sync has it.

        The one "join, then wait until this device's sync knows the room" in the SDK:
        after it returns, the room's state is in the local index.
        """
        inviters = self._c.invites()
        resp = await self._c.nio.join(room)
        if isinstance(resp, JoinError):
            raise _join_error(resp, room, self._c.user_id)
        room_id = RoomID(str(resp.room_id))
        sharing = self._c.keys.sharing
        sharing.joined(room_id, inviters.get(room_id))  # awaits the inviter's key bundle
        await self._wait_known(room_id, timeout)
        await sharing.accept(room_id)
        return room_id

    async def leave(self, room_id: str) -> None:
        await self._c.nio.room_leave(check_room_id(room_id))

    def invites(self) -> builtins.list[str]:
        """Rooms this user is invited to (as of the last sync)."""
        return self.invited_ids()

    # -- what this device knows (no homeserver call) ---------------------------

    def joined_ids(self) -> builtins.list[str]:
        """Ids of the rooms this user is joined to (as of the last sync; left and kicked
        rooms not, though nio may still list them)."""
        return self._c.joined_rooms()

    def invited_ids(self) -> builtins.list[str]:
        """Ids of the rooms this user is invited to (as of the last sync; kept across restarts)."""
        return list(self._c.invites())

    def is_joined(self, room_id: str) -> bool:
        return self._c.membership(room_id) == "join"

    def is_invited(self, room_id: str) -> bool:
        return self._c.membership(room_id) == "invite"

    def inviter(self, room_id: str) -> str | None:
        """Who invited this user to ``room_id``, if it is a pending invite."""
        return self._c.invites().get(room_id)

    def view(self, room_id: str) -> RoomView:
        """Membership and power of ``room_id`` from the local index (see :class:`RoomView`)."""
        return RoomView(self._c.index, room_id)

    def details(self, room_id: str) -> RoomDetails | None:
        """Name, alias, topic, encryption and member counts of a joined room; None if unknown."""
        room = self._c.nio.rooms.get(room_id)
        if room is None:
            return None
        return RoomDetails(
            room_id,
            room.display_name,
            room.canonical_alias,
            room.topic,
            bool(room.encrypted) or self.view(room_id).encrypted,
            int(room.joined_count),
            int(room.invited_count),
        )

    def is_encrypted(self, room_id: str) -> bool:
        """Whether this device knows the room to be end-to-end encrypted (no I/O)."""
        room = self._c.nio.rooms.get(room_id)
        return bool(room is not None and room.encrypted) or self.view(room_id).encrypted

    async def require_encrypted(self, room_id: str) -> None:
        """Never send in the clear: refuse unless the room is end-to-end encrypted.

        The one guard of the SDK (the send path and every service call it). nio learns
        a room is encrypted from sync, which may not have delivered
        ``m.room.encryption`` yet: the homeserver is asked before a "not encrypted" is
        believed. Raises :class:`AccessDeniedError` for a room in the clear.
        """
        if self.is_encrypted(room_id):
            self._mark_encrypted(room_id)
            return
        async with self._c.http() as http:
            try:
                content = await http.request("GET", state_path(room_id, "m.room.encryption"))
            except HomeserverError as exc:
                if exc.errcode != "M_NOT_FOUND":
                    raise
                content = None
        if not content or content.get("algorithm") != ENCRYPTION["algorithm"]:
            raise AccessDeniedError(
                f"room {room_id} is not end-to-end encrypted; datarooms does not send "
                "anything to a room in the clear"
            )
        self._mark_encrypted(room_id)

    def _mark_encrypted(self, room_id: str) -> None:
        room = self._c.nio.rooms.get(room_id)
        if room is not None and not room.encrypted:
            room.encrypted = True
        self._c.nio.encrypted_rooms.add(room_id)

    def members(self, room_id: str) -> builtins.list[MemberAccess]:
        """Members and invitees with their power and access, as this device knows them."""
        room = self._c.nio.rooms.get(room_id)
        if room is None:
            raise NotFoundError(f"room {room_id} is unknown to {self._c.user_id}")
        view = self.view(room_id)
        out = []
        for uid, member in sorted(room.users.items()):
            power = view.shown_power(uid)
            out.append(
                MemberAccess(
                    uid,
                    "invite" if member.invited else "join",
                    power,
                    access_for_power(power),
                    display_name=member.display_name,
                )
            )
        return out

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
            RoomID(room_id),
            str(info.get("kind", "")),
            room.display_name,
            room.canonical_alias,
            info.get("did"),
            info.get("purpose"),
        )

    async def resolve(self, room: str) -> RoomID:
        """A room id for a room id or alias."""
        if room.startswith("!"):
            return check_room_id(room)
        if room.startswith("#"):
            resp = await self._c.nio.room_resolve_alias(room)
            rid = getattr(resp, "room_id", None)
            if not rid:
                raise NotFoundError(f"no room has the alias {room}")
            return RoomID(str(rid))
        raise ValidationError(f"{room!r} is neither a room id (!...) nor an alias (#...)")

    # -- access control ------------------------------------------------------

    async def grant(self, room_id: str, user: str, access: Access = "read") -> None:
        """Give ``user`` read, write or admin access: invite them and set their power."""
        if access not in POWER:
            raise ValidationError(f"access must be read, write or admin, got {access!r}")
        user = check_user_id(user)
        await self._c.ensure_room(room_id)
        if user in self.view(room_id).creators:
            raise ValidationError(f"{user} created {room_id} and always has admin access")
        acl = self.server_acl(room_id)
        if acl is not None and not acl.allows(server_of(user)):
            raise AccessDeniedError(
                f"{user} is on {server_of(user)}, which the server ACL of {room_id} does not "
                f"allow (allowed: {', '.join(acl.allow) or 'none'}); "
                "allow it first (rooms.allow_server / datarooms room allow-server)"
            )
        await self._set_power(room_id, {user: POWER[access]})
        room = self._c.nio.rooms[room_id]
        if user not in room.users:
            # History first (MSC4268), as matrix-js-sdk does: the invitee's client then
            # holds the bundle when it accepts. Only for shared/world_readable rooms.
            await self._c.keys.sharing.share_history(room_id, user)
            resp = await self._c.nio.room_invite(room_id, user)
            if is_error(resp):
                err = error_from_response(resp, f"inviting {user} to {room_id}")
                text = str(err)
                if server_of(user) != server_of(self._c.user_id) and (
                    "connect to server" in text or "Federation denied" in text
                ):
                    raise HomeserverError(
                        f"{text}. The homeserver could not reach {server_of(user)}: "
                        "it is down, not on the federation allow-list of one of the two "
                        "servers, or its TLS certificate is not trusted (the homeserver's "
                        "log says which)",
                        errcode=getattr(resp, "status_code", None),
                    ) from None
                raise err
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
            path = state_path(room_id, "m.room.power_levels")
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

    # -- servers (federation) ------------------------------------------------------

    def server_acl(self, room_id: str) -> ServerAcl | None:
        """The room's server ACL as this device knows it; ``None``: every server may take part."""
        content = self._c.index.state(room_id, SERVER_ACL)
        if not content:
            return None
        return _parse_acl(content)

    def servers(self, room_id: str) -> builtins.list[ServerCopy]:
        """The homeservers holding a copy of the room (those of its joined members), each
        with its members and whether the room's ACL still allows it. Every one of them
        stores the room's history (ciphertext) and sees its metadata."""
        view = self.view(room_id)
        acl = self.server_acl(room_id)
        by_server: dict[str, builtins.list[str]] = {}
        for m in self.members(room_id):
            if m.membership == "join" or view.is_joined(m.user_id):
                by_server.setdefault(server_of(m.user_id), []).append(m.user_id)
        return [
            ServerCopy(name, tuple(sorted(users)), acl is None or acl.allows(name))
            for name, users in sorted(by_server.items())
        ]

    async def allow_server(self, room_id: str, server: str) -> ServerAcl | None:
        """Let ``server`` take part in the room: add it to the ACL's allow list and take it
        off the deny list. A room with no ACL already allows every server (returns None)."""
        host = _acl_for([server], server_of(self._c.user_id)).allow[-1]

        def change(acl: ServerAcl) -> ServerAcl:
            allow = (
                acl.allow
                if any(fnmatch.fnmatchcase(host, g) for g in acl.allow)
                else (
                    *acl.allow,
                    host,
                )
            )
            return ServerAcl(
                allow,
                tuple(g for g in acl.deny if g != host),
                acl.allow_ip_literals or is_ip_literal(host),
            )

        return await self._change_acl(room_id, change, create=False)

    async def deny_server(self, room_id: str, server: str) -> ServerAcl:
        """Shut ``server`` out of the room: deny it in the ACL, then revoke its members (they
        are removed and the room key rotates, so nothing written later reaches them)."""
        own = server_of(self._c.user_id)
        host = _glob_of(server)
        if host == server_host(own):
            raise ValidationError("a room cannot deny its own homeserver")

        def change(acl: ServerAcl) -> ServerAcl:
            return ServerAcl(
                tuple(g for g in acl.allow if g != host),
                acl.deny if host in acl.deny else (*acl.deny, host),
                acl.allow_ip_literals,
            )

        result = await self._change_acl(room_id, change, create=True)
        assert result is not None
        for m in self.members(room_id):
            if server_host(server_of(m.user_id)) == host:
                await self.revoke(room_id, m.user_id, reason=f"the room no longer allows {host}")
        return result

    async def _change_acl(
        self, room_id: str, change: Callable[[ServerAcl], ServerAcl], *, create: bool
    ) -> ServerAcl | None:
        await self._c.ensure_room(room_id)
        path = state_path(room_id, SERVER_ACL)
        async with self._c.http() as http:
            try:
                current = await http.request("GET", path)
            except HomeserverError as exc:
                if exc.errcode != "M_NOT_FOUND":
                    raise _as_access_error(exc, room_id) from None
                current = None
            if not current:
                if not create:
                    return None
                current = _acl_for(["*"], server_of(self._c.user_id)).content()
            new = change(_parse_acl(current))
            if not new.allows(server_of(self._c.user_id)):
                raise ValidationError("that ACL would shut this room's own homeserver out")
            try:
                await http.request("PUT", path, json=new.content())
            except HomeserverError as exc:
                raise _as_access_error(exc, room_id) from None
        await self._c.sync_once()
        return new

    def usage(
        self, server: Mapping[str, tuple[int | None, int]] | None = None
    ) -> builtins.list[RoomUsage]:
        """How big each room is, biggest first (see :mod:`datarooms.sdk.usage`); ``server``:
        the homeserver's own figures per room, (events or None, bytes)."""
        from datarooms.sdk.usage import room_usage

        return room_usage(self._c, server)

    async def review(self, room_id: str) -> builtins.list[MemberAccess]:
        """Who has access: members and invitees, their power, devices and last activity."""
        await self._c.ensure_room(room_id)
        await self._c.sync_once()  # membership and power as the server has them now
        nio = self._c.nio
        if nio.should_query_keys:
            await nio.keys_query()
        activity = self._c.index.activity(room_id)
        return [
            dataclasses.replace(
                m,
                devices=[
                    DeviceInfo(
                        d.id,
                        d.display_name,
                        nio.olm.is_device_verified(d) if nio.olm else False,
                        d.ed25519,
                    )
                    for d in nio.device_store.active_user_devices(m.user_id)
                ],
                last_active_ts=activity.get(m.user_id),
            )
            for m in self.members(room_id)
        ]


async def resolve_alias(homeserver_url: str, access_token: str, alias: str) -> str:
    """The room id of ``alias``, asked of the homeserver without a device."""
    if not alias.startswith("#"):
        raise ValidationError(f"{alias!r} is not a room alias (#name:server)")
    async with MatrixHttp(homeserver_url, access_token) as http:
        try:
            res = await http.request(
                "GET", f"/_matrix/client/v3/directory/room/{quote(alias, safe='')}"
            )
        except HomeserverError as exc:
            if exc.errcode == "M_NOT_FOUND":
                raise NotFoundError(f"no room has the alias {alias}") from None
            raise
    return str(res["room_id"])


def _parse_acl(content: dict[str, Any]) -> ServerAcl:
    def globs(key: str) -> tuple[str, ...]:
        value = content.get(key)
        return tuple(g for g in value if isinstance(g, str)) if isinstance(value, list) else ()

    return ServerAcl(globs("allow"), globs("deny"), content.get("allow_ip_literals", True) is True)


def _join_error(resp: JoinError, room: str, user: str) -> DataroomsError:
    """A refused join as the error its cause means (4xx the caller's to fix, else 502)."""
    code = resp.status_code or "M_UNKNOWN"
    transport = getattr(resp, "transport_response", None)
    status = int(getattr(transport, "status", 0) or 0)
    if code == "M_FORBIDDEN":
        return AccessDeniedError(
            f"{user} may not join {room}: invite it first ({resp.message})", errcode=code
        )
    if code == "M_NOT_FOUND" or status == 404:
        return NotFoundError(f"there is no room {room} that {user} can join ({resp.message})")
    if 400 <= status < 500 and status != 429:
        return ValidationError(
            f"the homeserver refused to join {room}: {resp.message}", errcode=code
        )
    return HomeserverError(f"joining {room} failed: {code}: {resp.message}", errcode=code)


def _as_access_error(exc: HomeserverError, room_id: str) -> Exception:
    if exc.errcode == "M_FORBIDDEN":
        return AccessDeniedError(
            f"changing access in {room_id} is not allowed: admin access is needed"
        )
    return exc
