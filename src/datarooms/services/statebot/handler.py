"""The state bot's logic: query and set keyed state, ACLs, joining rooms.

This is the *handler* layer (as in Synapse): the REST layer (:mod:`.api`) only
parses requests and calls it. The keyed-state rules are the SDK's
(:mod:`datarooms.sdk.state`, ``client.state``), applied to the verified caller
(``as_user=``) while the bot's own account writes the events; what is the bot's
own lives here: which rooms it answers for, which it joins, what its power lets
it do there.

Reads come from the bot's local index, which its sync loop keeps current, so a
query never waits on the homeserver. Writes go to the homeserver and then into
the index at once (read-your-writes); see the SDK for merges and secure values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from datarooms.errors import AccessDeniedError, NotFoundError, ValidationError
from datarooms.ids import is_room_alias, server_of
from datarooms.ids import room_id as check_room_id
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.state import (
    Acl,
    KeyInfo,
    Mode,
    SetResult,
    StateValue,
    StateView,
    check_key,
    secure_ref,
)
from datarooms.services.openid import Caller, TrustedServers
from datarooms.services.statebot import events as sev
from datarooms.services.statebot.errors import UnknownRoomError

log = logging.getLogger(__name__)

__all__ = [
    "KeyInfo",
    "RoomStatus",
    "SetResult",
    "StateHandler",
    "StateValue",
    "check_key",
    "secure_ref",
]


@dataclass(frozen=True)
class RoomStatus:
    room_id: str
    encrypted: bool
    bot_user_id: str
    bot_power: int
    state_power: int
    acl_power: int
    record_power: int
    caller_power: int
    #: What the bot's own power lets it do; the reasons when it cannot.
    bot_can_write_state: bool
    bot_can_write_acl: bool
    bot_can_write_secure: bool
    problems: list[str] = field(default_factory=list)


class StateHandler:
    """Everything the REST API can do, for a verified :class:`Caller`."""

    def __init__(
        self,
        client: DataroomsClient,
        *,
        trusted_servers: Iterable[str] | TrustedServers = (),
    ) -> None:
        self.client = client
        self.state = client.state
        self.state.writer_name = "the state bot"
        #: Homeservers whose rooms the bot may join when asked (its own, at least).
        if not isinstance(trusted_servers, TrustedServers):
            trusted_servers = TrustedServers(dict.fromkeys(trusted_servers, ""))
        own = server_of(client.user_id)
        if own not in trusted_servers.named:
            trusted_servers.named[own] = client.homeserver_url
        self.trusted_servers = trusted_servers

    @property
    def bot_id(self) -> str:
        return self.client.user_id

    async def close(self) -> None:
        await self.state.close()

    # -- rooms ---------------------------------------------------------------

    def joined_rooms(self) -> list[str]:
        # The SDK follows the bot's own joins, leaves and kicks in its sync transaction.
        return self.client.joined_rooms()

    def _room(self, room_id: str) -> StateView:
        room_id = check_room_id(room_id)
        if self.client.membership(room_id) != "join":
            raise UnknownRoomError(
                f"the state bot ({self.bot_id}) is not in room {room_id}, or the room does not "
                f"exist: invite {self.bot_id} to the room, then POST /v1/rooms/{room_id}/join"
            )
        return self.state.view(room_id)

    def _member(self, caller: Caller, room_id: str) -> StateView:
        view = self._room(room_id)
        if not view.is_joined(caller.user_id):
            raise AccessDeniedError(
                f"{caller.user_id} is not a joined member of {room_id}", errcode="M_FORBIDDEN"
            )
        return view

    async def join(self, caller: Caller, room: str) -> str:
        """Have the bot join a room it was invited to (or a public one); return its id.

        Only rooms on trusted homeservers: the bot never reaches out to a server it
        does not know because someone asked it to.
        """
        if not isinstance(room, str) or not (room.startswith("!") or is_room_alias(room)):
            raise ValidationError(f"{room!r} is neither a room id (!...) nor an alias (#...)")
        if room.startswith("!"):
            room = check_room_id(room)
            if self.client.membership(room) == "join":
                return room
        invited = self.client.membership(room) == "invite"
        server = room.split(":", 1)[1] if ":" in room else None
        if not invited and server is not None and server not in self.trusted_servers:
            raise AccessDeniedError(
                f"the state bot joins rooms on the homeservers it trusts only "
                f"({self.trusted_servers.describe()}), or rooms it was invited to; "
                f"invite {self.bot_id} to {room} first",
                errcode="M_FORBIDDEN",
            )
        log.info("joining a room", extra={"room": room, "asked_by": caller.user_id})
        try:
            room_id = await self.client.rooms.join(room)
        except UnknownRoomError:
            raise
        except NotFoundError as exc:
            raise UnknownRoomError(
                f"there is no room {room} the state bot can join ({exc.message})"
            ) from None
        return room_id

    def status(self, caller: Caller, room_id: str) -> RoomStatus:
        view = self._member(caller, room_id)
        bot = view.power(self.bot_id)
        state_p, acl_p = view.required(sev.STATE), view.required(sev.ACL)
        record_p = view.required("m.room.encrypted", state=False)
        problems = []
        message = self.state.power_message
        if bot < state_p:
            problems.append(message(room_id, bot, state_p, sev.STATE))
        if bot < acl_p:
            problems.append(message(room_id, bot, acl_p, sev.ACL))
        if not view.encrypted:
            problems.append("the room is not encrypted: values cannot be marked secure")
        elif bot < record_p:
            problems.append(message(room_id, bot, record_p, "encrypted records"))
        return RoomStatus(
            room_id=room_id,
            encrypted=view.encrypted,
            bot_user_id=self.bot_id,
            bot_power=bot,
            state_power=state_p,
            acl_power=acl_p,
            record_power=record_p,
            caller_power=view.power(caller.user_id),
            bot_can_write_state=bot >= state_p,
            bot_can_write_acl=bot >= acl_p,
            bot_can_write_secure=view.encrypted and bot >= max(state_p, record_p),
            problems=problems,
        )

    # -- keyed state: the SDK's rules, for the caller ----------------------------

    # The bot answers only for its rooms (``_room``); the SDK checks the caller's membership.

    def keys(self, caller: Caller, room_id: str) -> list[KeyInfo]:
        self._room(room_id)
        return self.state.keys(room_id, as_user=caller.user_id)

    async def get(self, caller: Caller, room_id: str, key: str, path: str = "") -> StateValue:
        key = check_key(key)
        self._room(room_id)
        return await self.state.get(room_id, key, path, as_user=caller.user_id)

    def get_acl(self, caller: Caller, room_id: str, key: str) -> Acl:
        key = check_key(key)
        view = self._room(room_id)
        acl = self.state.acl(room_id, key, as_user=caller.user_id)
        if acl is None:
            raise NotFoundError(
                f"key {key!r} in {room_id} has no ACL: every member may read it, and writing "
                f"it needs power {view.required(sev.STATE)}"
            )
        return acl

    async def set(
        self,
        caller: Caller,
        room_id: str,
        key: str,
        value: Any,
        *,
        path: str = "",
        mode: Mode = "merge",
        secure: bool | None = None,
    ) -> SetResult:
        """Merge (or replace) ``value`` at ``path`` of ``key``; return the state event id."""
        check_key(key)
        self._room(room_id)
        return await self.state.set(
            room_id, key, value, path=path, mode=mode, secure=secure, as_user=caller.user_id
        )

    async def set_acl(
        self, caller: Caller, room_id: str, key: str, read: list[str], write: list[str]
    ) -> tuple[str, Acl]:
        self._room(room_id)
        return await self.state.set_acl(
            room_id, key, read=read, write=write, as_user=caller.user_id
        )
