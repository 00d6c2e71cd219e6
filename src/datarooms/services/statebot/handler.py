"""The state bot's logic: query and set keyed state, ACLs, joining rooms.

This is the *handler* layer (as in Synapse): the REST layer (:mod:`.api`) only
parses requests and calls it, and every rule lives here or in :mod:`.access`.

Reads come from the bot's local index, which its sync loop keeps current, so a
query never waits on the homeserver. Writes go to the homeserver and then into
the index at once (read-your-writes), under a per-key lock so two merges at the
same key in this process never lose each other's update; the current value is
read from the homeserver right before a merge, so writes made outside the bot
are merged into, not overwritten.

Secure values: see docs/statebot.md. The value goes into an end-to-end
encrypted ``io.datarooms.record`` (key ``ixo.room.state/<key>``) in the same
room; the ``ixo.room.state`` event holds only a reference to that exact event.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from nio import JoinError, SyncResponse

from datarooms._store.index import Record, SyncBatch
from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    ValidationError,
)
from datarooms.homeserver.api import MatrixApi
from datarooms.ids import is_room_alias, server_of
from datarooms.ids import room_id as check_room_id
from datarooms.ids import user_id as check_user_id
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.rooms import ENCRYPTION
from datarooms.services.openid import Caller
from datarooms.services.scaffold import KeyedLocks
from datarooms.services.statebot import events as sev
from datarooms.services.statebot import values
from datarooms.services.statebot.access import Acl, RoomView, dedupe
from datarooms.services.statebot.errors import BotPowerError, TooLargeError, UnknownRoomError

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class StateValue:
    room_id: str
    key: str
    path: str
    value: Any
    secure: bool


@dataclass(frozen=True)
class SetResult:
    room_id: str
    key: str
    event_id: str
    secure: bool
    #: The record event holding the value, for a secure value.
    record_event_id: str | None = None


@dataclass(frozen=True)
class KeyInfo:
    key: str
    secure: bool
    has_acl: bool
    readable: bool
    writable: bool


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


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError("a state key must be a non-empty string")
    if len(key) > sev.MAX_KEY_LENGTH:
        raise ValidationError(f"a state key is at most {sev.MAX_KEY_LENGTH} characters")
    if _CONTROL.search(key):
        raise ValidationError("a state key may not contain control characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("a state key must be valid Unicode") from None
    return key


def secure_ref(content: Any) -> dict[str, Any] | None:
    """The secure reference in an ``ixo.room.state`` content, if it is one."""
    if isinstance(content, dict):
        ref = content.get(sev.SECURE)
        if isinstance(ref, dict):
            return ref
    return None


class StateHandler:
    """Everything the REST API can do, for a verified :class:`Caller`."""

    def __init__(
        self,
        client: DataroomsClient,
        http: MatrixApi | None = None,
        *,
        trusted_servers: Iterable[str] = (),
    ) -> None:
        self.client = client
        #: Homeservers whose rooms the bot may join when asked (its own, at least).
        self.trusted_servers = {server_of(client.user_id), *trusted_servers}
        self.http = http or MatrixApi(client.homeserver_url, client.access_token)
        self._own_http = http is None
        self._locks = KeyedLocks()
        #: Rooms the bot has left or been removed from since it started (the index
        #: only follows joined rooms, so it would not tell).
        self._left: set[str] = set()
        self._watch_leaves()

    @property
    def bot_id(self) -> str:
        return self.client.user_id

    async def close(self) -> None:
        if self._own_http:
            await self.http.close()

    def _watch_leaves(self) -> None:
        """Follow the ``leave`` section of every sync: the bot may be kicked."""
        nio = self.client.nio
        original = nio.sync

        async def sync(*args: Any, **kwargs: Any) -> Any:
            resp = await original(*args, **kwargs)
            if isinstance(resp, SyncResponse):
                for room_id in resp.rooms.leave:
                    self._left.add(room_id)
                for room_id in resp.rooms.join:
                    self._left.discard(room_id)
            return resp

        nio.sync = sync

    # -- rooms ---------------------------------------------------------------

    def joined_rooms(self) -> list[str]:
        return [r for r in self.client.nio.rooms if r not in self._left]

    def _room(self, room_id: str) -> RoomView:
        room_id = check_room_id(room_id)
        if room_id not in self.client.nio.rooms or room_id in self._left:
            raise UnknownRoomError(
                f"the state bot ({self.bot_id}) is not in room {room_id}, or the room does not "
                f"exist: invite {self.bot_id} to the room, then POST /v1/rooms/{room_id}/join"
            )
        return RoomView(self.client.index, room_id)

    def _member(self, caller: Caller, room_id: str) -> RoomView:
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
            if room in self.client.nio.rooms and room not in self._left:
                return room
        invited = room in self.client.nio.invited_rooms
        server = room.split(":", 1)[1] if ":" in room else None
        if not invited and server is not None and server not in self.trusted_servers:
            raise AccessDeniedError(
                f"the state bot joins rooms on the homeservers it trusts only "
                f"({', '.join(sorted(self.trusted_servers))}), or rooms it was invited to; "
                f"invite {self.bot_id} to {room} first",
                errcode="M_FORBIDDEN",
            )
        log.info("joining a room", extra={"room": room, "asked_by": caller.user_id})
        resp = await self.client.nio.join(room)
        if isinstance(resp, JoinError):
            raise _join_error(resp, room, self.bot_id)
        room_id = str(resp.room_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while room_id not in self.client.nio.rooms and loop.time() < deadline:
            await self.client.sync_once()
        if room_id not in self.client.nio.rooms:
            raise HomeserverError(f"the state bot joined {room_id} but it did not appear in sync")
        self._left.discard(room_id)
        return room_id

    def status(self, caller: Caller, room_id: str) -> RoomStatus:
        view = self._member(caller, room_id)
        bot = view.power(self.bot_id)
        state_p, acl_p = view.required(sev.STATE), view.required(sev.ACL)
        record_p = view.required("m.room.encrypted", state=False)
        problems = []
        if bot < state_p:
            problems.append(_power_message(self.bot_id, room_id, bot, state_p, sev.STATE))
        if bot < acl_p:
            problems.append(_power_message(self.bot_id, room_id, bot, acl_p, sev.ACL))
        if not view.encrypted:
            problems.append("the room is not encrypted: values cannot be marked secure")
        elif bot < record_p:
            problems.append(
                _power_message(self.bot_id, room_id, bot, record_p, "encrypted records")
            )
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

    # -- reading ---------------------------------------------------------------

    def keys(self, caller: Caller, room_id: str) -> list[KeyInfo]:
        view = self._member(caller, room_id)
        acls = view.acls()
        out = []
        for key, content in sorted(self.client.index.state_of_type(room_id, sev.STATE).items()):
            acl = acls.get(key)
            out.append(
                KeyInfo(
                    key=key,
                    secure=secure_ref(content) is not None,
                    has_acl=acl is not None,
                    readable=view.can_read(caller.user_id, acl),
                    writable=view.can_write(caller.user_id, acl),
                )
            )
        return out

    async def get(self, caller: Caller, room_id: str, key: str, path: str = "") -> StateValue:
        key = check_key(key)
        tokens = values.parse_path(path)
        view = self._member(caller, room_id)
        acl = view.acl(key)
        if not view.can_read(caller.user_id, acl):
            raise AccessDeniedError(
                f"{caller.user_id} may not read {key!r} in {room_id}: the key's ACL does not "
                "list them (ask someone who can set the ACL to add them to 'read')",
                errcode="M_FORBIDDEN",
            )
        content = self.client.index.state(room_id, sev.STATE, key)
        if content is None:
            raise NotFoundError(f"room {room_id} has no state key {key!r}")
        ref = secure_ref(content)
        value = await self._secure_value(view, key, ref) if ref is not None else content
        return StateValue(
            room_id,
            key,
            values.format_path(tokens),
            values.get_at(value, tokens, key=key),
            ref is not None,
        )

    async def _secure_value(self, view: RoomView, key: str, ref: dict[str, Any]) -> Any:
        record_key, event_id = ref.get("record"), ref.get("event_id")
        if not isinstance(record_key, str) or not isinstance(event_id, str):
            raise NotFoundError(
                f"the secure reference of key {key!r} is malformed", errcode="DR_SECURE_UNAVAILABLE"
            )
        setter = self.client.index.state_sender(view.room_id, sev.STATE, key)
        for attempt in range(2):
            record = self._find_record(view.room_id, record_key, event_id)
            if record is not None:
                if setter and record.sender != setter:
                    break  # a reference to someone else's record: not ours to vouch for
                return record.value
            if attempt == 0:
                await self.client.fill_gaps(view.room_id)
                self.client.retry_decryption(view.room_id)
        raise NotFoundError(
            f"the secure value of key {key!r} is not readable by the state bot's device "
            "(its record is missing, or its room key is not on this device)",
            errcode="DR_SECURE_UNAVAILABLE",
        )

    def _find_record(self, room_id: str, record_key: str, event_id: str) -> Record | None:
        index = self.client.index
        latest = index.latest(room_id, record_key)
        if latest is not None and latest.event_id == event_id:
            return latest
        for record in index.history(room_id, record_key, newest_first=True):
            if record.event_id == event_id:
                return record
        return None

    def get_acl(self, caller: Caller, room_id: str, key: str) -> Acl:
        key = check_key(key)
        view = self._member(caller, room_id)
        acl = view.acl(key)
        if acl is None:
            raise NotFoundError(
                f"key {key!r} in {room_id} has no ACL: every member may read it, and writing "
                f"it needs power {view.required(sev.STATE)}"
            )
        return acl

    # -- writing ---------------------------------------------------------------

    async def set(
        self,
        caller: Caller,
        room_id: str,
        key: str,
        value: Any,
        *,
        path: str = "",
        mode: values.Mode = "merge",
        secure: bool | None = None,
    ) -> SetResult:
        """Merge (or replace) ``value`` at ``path`` of ``key``; return the state event id."""
        key = check_key(key)
        tokens = values.parse_path(path)
        if mode not in ("merge", "replace"):
            raise ValidationError(f"mode must be 'merge' or 'replace', got {mode!r}")
        values.check_json(value, canonical=False)
        view = self._member(caller, room_id)
        acl = view.acl(key)
        if not view.can_write(caller.user_id, acl):
            need = view.required(sev.STATE)
            raise AccessDeniedError(
                f"{caller.user_id} may not write {key!r} in {room_id}: not in the key's write "
                f"list{'' if acl else ' (it has no ACL)'} and power "
                f"{view.power(caller.user_id)} is below the {need} the room asks for "
                f"{sev.STATE}",
                errcode="M_FORBIDDEN",
            )
        async with self._locks.hold((room_id, key)):
            current = await self._fresh_state(room_id, sev.STATE, key)
            ref = secure_ref(current)
            make_secure = secure if secure is not None else ref is not None
            if ref is not None:
                current = await self._secure_value(view, key, ref)
            new = values.put_at(current, tokens, value, mode)
            if not isinstance(new, dict):
                raise ValidationError(
                    f"the value of a key must be a JSON object (it is the content of a Matrix "
                    f"state event); to store {values.kind_of(new)}, put it under a path, "
                    "e.g. path=/value"
                )
            if make_secure:
                result = await self._set_secure(view, key, new)
            else:
                result = await self._set_clear(view, key, new)
        log.info(
            "state set",
            extra={"room": room_id, "key": key, "by": caller.user_id, "secure": make_secure},
        )
        return result

    async def _set_clear(self, view: RoomView, key: str, new: dict[str, Any]) -> SetResult:
        if sev.SECURE in new:
            raise ValidationError(
                f"the member {sev.SECURE!r} is reserved for references to secure values"
            )
        values.check_json(new, canonical=True)
        values.check_size(
            values.encoded_size(new),
            self._content_limit(view.room_id, key),
            f"the value of key {key!r}",
        )
        self._check_bot_power(view, sev.STATE)
        event_id = await self._put_state(view.room_id, sev.STATE, key, new)
        return SetResult(view.room_id, key, event_id, False)

    async def _set_secure(self, view: RoomView, key: str, new: dict[str, Any]) -> SetResult:
        if not view.encrypted:
            raise ValidationError(
                f"room {view.room_id} is not encrypted, so a value cannot be kept secret in it; "
                f"enable encryption ({ENCRYPTION['algorithm']}) or store the value in the clear"
            )
        self._check_bot_power(view, sev.STATE)
        self._check_bot_power(view, "m.room.encrypted", state=False)
        record_key = sev.SECURE_RECORD_PREFIX + key
        size = values.encoded_size(new)
        limit = _record_limit(record_key)
        values.check_size(size, limit, f"the secure value of key {key!r}")
        try:
            record = await self.client.records.put(view.room_id, record_key, new)
        except TooLargeError:
            raise
        except HomeserverError as exc:
            raise _client_error(exc, f"storing the secure value of {key!r}") from None
        ref = {
            sev.SECURE: {
                "v": sev.SECURE_VERSION,
                "record": record_key,
                "event_id": record.event_id,
                "algorithm": ENCRYPTION["algorithm"],
            }
        }
        event_id = await self._put_state(view.room_id, sev.STATE, key, ref)
        return SetResult(view.room_id, key, event_id, True, record.event_id)

    async def set_acl(
        self, caller: Caller, room_id: str, key: str, read: list[str], write: list[str]
    ) -> tuple[str, Acl]:
        key = check_key(key)
        for name, users in (("read", read), ("write", write)):
            if not isinstance(users, list):
                raise ValidationError(f"'{name}' must be a list of Matrix user ids")
            if len(users) > sev.MAX_ACL_ENTRIES:
                raise TooLargeError(
                    f"'{name}' lists {len(users)} users; the most is {sev.MAX_ACL_ENTRIES}"
                )
            for u in users:
                check_user_id(u)
        acl = Acl(tuple(dedupe(read)), tuple(dedupe(write)))
        view = self._member(caller, room_id)
        if not view.can_set_acl(caller.user_id):
            raise AccessDeniedError(
                f"{caller.user_id} may not change ACLs in {room_id}: that needs power "
                f"{view.required(sev.ACL)} ({sev.ACL}); they have {view.power(caller.user_id)}",
                errcode="M_FORBIDDEN",
            )
        content = acl.to_content()
        values.check_size(
            values.encoded_size(content),
            self._content_limit(room_id, key),
            f"the ACL of key {key!r}",
        )
        self._check_bot_power(view, sev.ACL)
        event_id = await self._put_state(room_id, sev.ACL, key, content)
        log.info("acl set", extra={"room": room_id, "key": key, "by": caller.user_id})
        return event_id, acl

    # -- homeserver calls --------------------------------------------------------

    def _content_limit(self, room_id: str, key: str) -> int:
        overhead = len(key.encode()) + len(self.bot_id) + len(room_id) + sev.EVENT_ENVELOPE_BYTES
        return sev.MAX_EVENT_BYTES - overhead

    def _check_bot_power(self, view: RoomView, event_type: str, *, state: bool = True) -> None:
        have, need = view.power(self.bot_id), view.required(event_type, state=state)
        if have < need:
            what = event_type if state else "encrypted records"
            raise BotPowerError(_power_message(self.bot_id, view.room_id, have, need, what))

    async def _fresh_state(self, room_id: str, event_type: str, key: str) -> Any:
        path = (
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/"
            f"{quote(event_type, safe='')}/{quote(key, safe='')}"
        )
        try:
            return await self.http.request("GET", path)
        except HomeserverError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise _client_error(exc, f"reading {event_type} {key!r} in {room_id}") from None

    async def _put_state(
        self, room_id: str, event_type: str, key: str, content: dict[str, Any]
    ) -> str:
        path = (
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/"
            f"{quote(event_type, safe='')}/{quote(key, safe='')}"
        )
        try:
            res = await self.http.request("PUT", path, json=content)
        except HomeserverError as exc:
            if exc.errcode == "M_FORBIDDEN":
                raise BotPowerError(
                    f"the homeserver refused the state bot's {event_type} event in {room_id}: "
                    f"{exc.message}. Give {self.bot_id} enough power in the room"
                ) from None
            raise _client_error(exc, f"writing {event_type} {key!r} in {room_id}") from None
        event_id = str(res.get("event_id", "")) if isinstance(res, dict) else ""
        # Read our own write at once; sync brings the same event again later.
        self.client.index.apply(
            SyncBatch([], [], [], [(room_id, event_type, key, content, self.bot_id)], [], [])
        )
        return event_id


def _record_limit(record_key: str) -> int:
    from datarooms import events as ev

    return ev.MAX_RECORD_BYTES - len(record_key.encode()) - 128 - 64


def _power_message(bot: str, room_id: str, have: int, need: int, what: str) -> str:
    return (
        f"the state bot ({bot}) has power {have} in {room_id} but needs {need} to write "
        f"{what}; a room admin must raise it, e.g. `datarooms room grant {room_id} {bot} admin`"
    )


def _join_error(resp: JoinError, room: str, bot: str) -> DataroomsError:
    code = resp.status_code or "M_UNKNOWN"
    transport = getattr(resp, "transport_response", None)
    status = int(getattr(transport, "status", 0) or 0)
    if code == "M_FORBIDDEN":
        return AccessDeniedError(
            f"the state bot ({bot}) may not join {room}: invite it first ({resp.message})",
            errcode=code,
        )
    if code == "M_NOT_FOUND" or status == 404:
        return UnknownRoomError(f"there is no room {room} the state bot can join ({resp.message})")
    if 400 <= status < 500 and status != 429:
        return ValidationError(
            f"the homeserver refused to join {room}: {resp.message}", errcode=code
        )
    return HomeserverError(f"joining {room} failed: {code}: {resp.message}", errcode=code)


def _client_error(exc: HomeserverError, what: str) -> DataroomsError:
    """A homeserver refusal that is the caller's to fix, as a 4xx; the rest stays 502."""
    code = exc.errcode or ""
    if code == "M_TOO_LARGE":
        return TooLargeError(f"{what}: the homeserver says it is too large ({exc.message})")
    if code in ("M_BAD_JSON", "M_NOT_JSON", "M_INVALID_PARAM", "M_BAD_ALIAS"):
        return ValidationError(f"{what}: the homeserver refused it: {exc.message}", errcode=code)
    if code == "M_FORBIDDEN":
        return AccessDeniedError(f"{what}: the homeserver refused it: {exc.message}", errcode=code)
    if code == "M_NOT_FOUND":
        return NotFoundError(f"{what}: not found: {exc.message}", errcode=code)
    return exc
