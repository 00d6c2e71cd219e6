"""Who may do what with a key: membership, power levels and IXO's ACLs.

The rules (docs/statebot.md has the full table):

- every call needs the caller to be a *joined* member of the room;
- **read** a key: no ACL on the key, or the caller is in its ``read`` list (or
  its ``write`` list: a writer merges into the value, so it may read it);
- **write** a key: the caller is in its ``write`` list, or has the power the
  room's ``m.room.power_levels`` asks for sending an ``ixo.room.state`` event;
- **set an ACL**: the power the room asks for sending ``ixo.room.state.acl``;
- a malformed ACL fails closed: it grants nobody anything (power still writes).

Everything here reads a snapshot of the room's state from the bot's local index,
which its sync loop keeps current; nothing here does I/O to the homeserver.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from datarooms._store.index import LocalIndex
from datarooms.services.statebot import events as sev

#: Room creators in room versions 12 and later have unbounded power.
CREATOR_POWER = 2**53


@dataclass(frozen=True)
class Acl:
    """An ``ixo.room.state.acl``: who may read and who may write one key."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @classmethod
    def from_content(cls, content: Any) -> Acl:
        """Parse an ACL event's content; anything malformed grants nobody (fail closed)."""
        if not isinstance(content, dict):
            return cls()
        return cls(_users(content.get("read")), _users(content.get("write")))

    def to_content(self) -> dict[str, list[str]]:
        return {"read": list(self.read), "write": list(self.write)}


def _users(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(u for u in value if isinstance(u, str))


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
    """The state of one room as the bot's index holds it, with the access rules on top."""

    def __init__(self, index: LocalIndex, room_id: str) -> None:
        self.index = index
        self.room_id = room_id
        self._power_levels: dict[str, Any] | None = None
        self._pl_loaded = False
        self._creators: set[str] | None = None

    # -- raw state -------------------------------------------------------------

    def membership(self, user_id: str) -> str | None:
        content = self.index.state(self.room_id, "m.room.member", user_id)
        value = content.get("membership") if content else None
        return value if isinstance(value, str) else None

    def is_joined(self, user_id: str) -> bool:
        return self.membership(user_id) == "join"

    @property
    def encrypted(self) -> bool:
        return self.index.state(self.room_id, "m.room.encryption") is not None

    def acl(self, key: str) -> Acl | None:
        content = self.index.state(self.room_id, sev.ACL, key)
        return None if content is None else Acl.from_content(content)

    def acls(self) -> dict[str, Acl]:
        return {
            k: Acl.from_content(c)
            for k, c in self.index.state_of_type(self.room_id, sev.ACL).items()
        }

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

    # -- power ---------------------------------------------------------------

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

    # -- the rules -------------------------------------------------------------

    def can_read(self, user_id: str, acl: Acl | None) -> bool:
        if not self.is_joined(user_id):
            return False
        return acl is None or user_id in acl.read or user_id in acl.write

    def can_write(self, user_id: str, acl: Acl | None) -> bool:
        if not self.is_joined(user_id):
            return False
        if acl is not None and user_id in acl.write:
            return True
        return self.power(user_id) >= self.required(sev.STATE)

    def can_set_acl(self, user_id: str) -> bool:
        return self.is_joined(user_id) and self.power(user_id) >= self.required(sev.ACL)


def dedupe(users: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for u in users:
        seen.setdefault(u, None)
    return list(seen)
