"""Keyed room state (IXO's ``ixo.room.state``), its ACLs and secure values: ``client.state``.

The one implementation of IXO's keyed state in datarooms. The state bot's REST API,
the MCP tools and the ``datarooms state`` commands all end up here, so they share
one set of rules.

The events, as IXO defines them:

- ``ixo.room.state``: state_key = the key; content = the key's JSON value (an
  object: Matrix event content is an object).
- ``ixo.room.state.acl``: state_key = the guarded key; content =
  ``{"read": [mxid, ...], "write": [mxid, ...]}``.

**Paths** are JSON Pointers (RFC 6901): ``""`` is the whole value, ``/a/b`` the
member ``b`` of the member ``a``, ``/list/0`` the first item of an array, ``~1``
is ``/`` and ``~0`` is ``~`` inside a name. In a write, ``/list/-`` appends. A
write *merges* at its path by default, as JSON Merge Patch (RFC 7386) does: an
object merges into an object member by member, ``null`` removes a member, and
anything else replaces what was there; ``mode="replace"`` puts the value as
given. Members missing on the way to the path are created as objects.

**Who may do what** (one set of rules, for every interface; the *actor* is the
account itself, or the caller a service acts for with ``as_user=``):

- every call needs the actor to be a *joined* member of the room;
- **read** a key: the key has no ACL, or the actor is in its ``read`` list, or in
  its ``write`` list (a writer merges into the value, so it may read it). Power
  alone never grants reading a key that has an ACL: put admins in ``read`` too;
- **write** a key: the actor is in its ``write`` list, **or** has the power the
  room's ``m.room.power_levels`` asks for sending ``ixo.room.state`` (an admin
  can write that event in Matrix anyway, so the ACL does not pretend otherwise);
- **set an ACL**: the power the room asks for sending ``ixo.room.state.acl``;
- a malformed ACL fails closed: it grants nobody anything (power still writes);
- the account that sends the events (a bot writing for a caller) must itself
  have the power to send them: otherwise :class:`BotPowerError` says what it has
  and what it needs.

Membership, power levels and ACLs are read from this device's local index, which
sync keeps current; reads never wait on the homeserver. Writes go to the
homeserver and then into the index at once (read-your-writes), under a per-key
lock, after reading the current value from the homeserver, so a write made
outside this device is merged into, not overwritten.

**Secure values.** Room state is not encrypted by Matrix, so a value marked
secure never goes into state in the clear: it goes into an end-to-end encrypted
``io.datarooms.record`` (key ``ixo.room.state/<key>``) in the same room, and the
``ixo.room.state`` event holds only a reference to that exact record event,
``{"io.datarooms.secure": {"v": 1, "record": ..., "event_id": ..., "algorithm": ...}}``.
A read resolves the reference in the local index: the decrypted record with that
event id, sent by the sender of the reference (anything else is refused). The ACL
guards reads through this API; every member's own device receives the room key
and can read the record directly. A key stays secure across writes that leave
``secure`` out; ``secure=False`` stores it in the clear again. Merging into a
secure value, writing under a path of it, or downgrading it to the clear reveals
the value, so it needs *read* access (power alone is not enough); a power-only
writer may only replace the whole value and keep it secure. A reference must name
the key's own record (``ixo.room.state/<key>``), and the record's sender must be
the reference's sender, both taken from one source (the index for reads, the
homeserver's event for writes).

State content travels in the clear, so it must be *canonical JSON* (room versions
6+): integers within +-(2**53 - 1), no fractions, no NaN or infinities. Secure
values travel encrypted and may hold any JSON number.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from datarooms import events as ev
from datarooms._locks import KeyedLocks
from datarooms._store.index import Record, SyncBatch
from datarooms._transport.http import MatrixHttp
from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    ValidationError,
)
from datarooms.sdk.rooms import ENCRYPTION, RoomView, state_path

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

Mode = Literal["merge", "replace"]

#: IXO's keyed state (state event, state_key = the key).
STATE_EVENT = "ixo.room.state"
#: IXO's access-control list of one key (state event, state_key = the guarded key).
ACL_EVENT = "ixo.room.state.acl"
#: The member of an ``ixo.room.state`` content that marks a secure value's reference.
SECURE = "io.datarooms.secure"
#: Records holding secure values are keyed ``ixo.room.state/<key>``.
SECURE_RECORD_PREFIX = STATE_EVENT + "/"
#: Version of the secure reference format.
SECURE_VERSION = 1
#: The longest key: the record of a secure value, ``ixo.room.state/<key>``, must stay
#: within the records' key limit.
MAX_KEY_LENGTH = ev.MAX_KEY_LENGTH - len(SECURE_RECORD_PREFIX)
#: Matrix caps a whole event (PDU) at 65,536 bytes of canonical JSON.
MAX_EVENT_BYTES = 65_536
#: What the envelope of a state event takes at most, besides its content, state_key,
#: sender and room id: event type, hashes, signatures, auth and prev events, depth.
EVENT_ENVELOPE_BYTES = 1_024
#: The most user ids in one ACL list.
MAX_ACL_ENTRIES = 1_000

MAX_PATH_LENGTH = 1_024
MAX_PATH_DEPTH = 32
MAX_DEPTH = 64
_MAX_SAFE_INT = 2**53 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- errors ---------------------------------------------------------------------


class TooLargeError(ValidationError):
    """A value or request body over the limit (Matrix events are capped at 65,536 bytes)."""

    errcode = "M_TOO_LARGE"
    http_status = 413


class BadPathError(ValidationError):
    """A JSON Pointer that is malformed, or that goes through something that is not a container."""

    errcode = "DR_BAD_PATH"


class BotPowerError(AccessDeniedError):
    """The account writing for a caller (a bot) lacks the power in the room to do it."""

    errcode = "DR_BOT_POWER"


class StateAccessError(AccessDeniedError):
    """The rules refuse the actor: ``action`` is ``read``, ``write`` or ``acl``.

    ``by_acl``: the key's ACL decided (the actor is not in the list it needs).
    """

    def __init__(self, message: str, *, action: str, key: str, by_acl: bool) -> None:
        super().__init__(message, errcode="M_FORBIDDEN")
        self.action = action
        self.key = key
        self.by_acl = by_acl


# -- paths ------------------------------------------------------------------------


def parse_path(path: str | None) -> list[str]:
    """The reference tokens of a JSON Pointer.

    ``""`` (or None) is the whole value; every other pointer starts with ``/``
    (so ``"/"`` is the member named ``""``, as RFC 6901 says).
    """
    if path is None or path == "":
        return []
    if not isinstance(path, str):
        raise BadPathError("a path must be a string (a JSON Pointer such as /a/b)")
    if len(path) > MAX_PATH_LENGTH:
        raise BadPathError(f"the path is longer than {MAX_PATH_LENGTH} characters")
    if not path.startswith("/"):
        raise BadPathError(
            f"invalid path {_show(path)}: a JSON Pointer is empty or starts with '/', e.g. /a/b"
        )
    tokens = path[1:].split("/")
    if len(tokens) > MAX_PATH_DEPTH:
        raise BadPathError(f"the path is deeper than {MAX_PATH_DEPTH} levels")
    out = []
    for raw in tokens:
        i = raw.find("~")
        while i != -1:
            if i + 1 >= len(raw) or raw[i + 1] not in "01":
                raise BadPathError(
                    f"invalid path {_show(path)}: '~' must be followed by 0 ('~') or 1 ('/')"
                )
            i = raw.find("~", i + 2)
        out.append(raw.replace("~1", "/").replace("~0", "~"))
    return out


def format_path(tokens: list[str]) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _show(path: str) -> str:
    return repr(path if len(path) <= 80 else path[:77] + "...")


def _index(tokens: list[str], i: int, size: int, *, append: bool) -> int:
    tok = tokens[i]
    if append and tok == "-":
        return size
    if not tok.isdigit() or (len(tok) > 1 and tok[0] == "0") or not tok.isascii():
        raise BadPathError(
            f"at {format_path(tokens[: i + 1])}: {tok!r} is not an array index "
            "(0, 1, ...; or '-' to append)"
        )
    return int(tok)


def get_at(value: Any, tokens: list[str], *, key: str = "") -> Any:
    """The value at ``tokens``; :class:`NotFoundError` if nothing is there."""
    node = value
    for i, tok in enumerate(tokens):
        if isinstance(node, dict):
            if tok not in node:
                raise NotFoundError(f"key {key!r} has no value at {format_path(tokens[: i + 1])}")
            node = node[tok]
        elif isinstance(node, list):
            idx = _index(tokens, i, len(node), append=False)
            if idx >= len(node):
                raise NotFoundError(
                    f"key {key!r} has no value at {format_path(tokens[: i + 1])}: "
                    f"the array has {len(node)} items"
                )
            node = node[idx]
        else:
            raise NotFoundError(
                f"key {key!r} has no value at {format_path(tokens[: i + 1])}: "
                f"{format_path(tokens[:i]) or 'the value'} is {kind_of(node)}, not a container"
            )
    return node


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch of ``patch`` onto ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, member in patch.items():
        if member is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), member)
    return result


def put_at(current: Any, tokens: list[str], value: Any, mode: Mode) -> Any:
    """A new document: ``current`` with ``value`` merged (or replaced) at ``tokens``."""
    if not tokens:
        return merge_patch(current, value) if mode == "merge" else copy.deepcopy(value)
    root = copy.deepcopy(current) if current is not None else {}
    if not isinstance(root, (dict, list)):
        raise BadPathError(f"cannot write at {format_path(tokens)}: the value is {kind_of(root)}")
    node: Any = root
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        if isinstance(node, dict):
            if last:
                if mode == "merge" and value is None:
                    node.pop(tok, None)
                else:
                    node[tok] = (
                        merge_patch(node.get(tok), value)
                        if mode == "merge"
                        else copy.deepcopy(value)
                    )
                break
            child = node.get(tok)
            if child is None:
                child = node[tok] = {}
            node = child
        elif isinstance(node, list):
            idx = _index(tokens, i, len(node), append=True)
            if idx > len(node) or (idx == len(node) and tokens[i] != "-"):
                raise BadPathError(
                    f"at {format_path(tokens[: i + 1])}: index {idx} is past the end of an "
                    f"array of {len(node)} items (use '-' to append)"
                )
            if last:
                new = (
                    merge_patch(node[idx] if idx < len(node) else None, value)
                    if mode == "merge"
                    else copy.deepcopy(value)
                )
                if idx == len(node):
                    node.append(new)
                else:
                    node[idx] = new
                break
            if idx == len(node):
                node.append({})
            elif node[idx] is None:
                node[idx] = {}
            node = node[idx]
        else:
            raise BadPathError(
                f"cannot write at {format_path(tokens)}: "
                f"{format_path(tokens[:i])} is {kind_of(node)}, not an object or array"
            )
        if not isinstance(node, (dict, list)):
            raise BadPathError(
                f"cannot write at {format_path(tokens)}: "
                f"{format_path(tokens[: i + 1])} is {kind_of(node)}, not an object or array"
            )
    return root


def kind_of(node: Any) -> str:
    if node is None:
        return "null"
    if isinstance(node, bool):
        return "a boolean"
    if isinstance(node, (int, float)):
        return "a number"
    if isinstance(node, str):
        return "a string"
    if isinstance(node, list):
        return "an array"
    return "an object"


# -- checking values ----------------------------------------------------------------


def check_json(value: Any, *, canonical: bool, what: str = "the value") -> None:
    """Reject what Matrix (or JSON) cannot carry, with a message that says where.

    ``canonical``: also apply canonical JSON's rules for clear state (no fractions,
    integers within +-(2**53 - 1)).
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationError(f"{what} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for name, member in node.items():
                if not isinstance(name, str):
                    raise ValidationError(f"{what} has a member name that is not a string")
                _check_text(name, what, where)
                stack.append((member, f"{where}/{name}", depth + 1))
        elif isinstance(node, list):
            stack.extend((m, f"{where}/{i}", depth + 1) for i, m in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, what, where)
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if canonical and abs(node) > _MAX_SAFE_INT:
                raise ValidationError(
                    f"{what} at {where or '/'}: the integer is outside +-(2**53 - 1), which "
                    "Matrix cannot carry in the clear; store it as a string"
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValidationError(f"{what} at {where or '/'}: NaN and infinities are not JSON")
            if canonical:
                raise ValidationError(
                    f"{what} at {where or '/'}: {node!r} is not an integer, and Matrix state "
                    "(canonical JSON) holds no fractions; store it as a string, scale it to "
                    "an integer, or mark the value secure"
                )
        else:
            raise ValidationError(f"{what} at {where or '/'} is not JSON")


def _check_text(text: str, what: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{what} at {where or '/'} holds text that is not valid Unicode (a lone surrogate)"
        ) from None


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (about its canonical JSON size)."""
    return len(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    )


def check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise TooLargeError(
            f"{what} is {size} bytes; the limit is {limit} bytes (Matrix caps an event at "
            "65,536 bytes). Split it over several keys, or store it as a file and keep a "
            "reference here"
        )


def pointer(path: str | None) -> str:
    """A JSON Pointer for ``path``; a dot path (``a.b``, as older tools take) is converted.

    ``""``/None is the whole value; a path starting with ``/`` is already a pointer.
    """
    if path is None or path == "" or path.startswith("/"):
        return path or ""
    parts = [p for p in path.split(".") if p]
    if not parts:
        raise BadPathError(f"invalid path {_show(path)}: give a JSON Pointer such as /a/b")
    return format_path(parts)


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError("a state key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"a state key is at most {MAX_KEY_LENGTH} characters")
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
        ref = content.get(SECURE)
        if isinstance(ref, dict):
            return ref
    return None


# -- access rules ------------------------------------------------------------------


@dataclass(frozen=True)
class Acl:
    """An ``ixo.room.state.acl``: who may read and who may write one key."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @classmethod
    def from_content(cls, content: Any) -> Acl:
        """Parse an ACL event's content; anything malformed grants nobody (fail closed):
        a list that is not a list of strings empties the whole ACL, not just that list."""
        if not isinstance(content, dict):
            return cls()
        read, write = _users(content.get("read", [])), _users(content.get("write", []))
        if read is None or write is None:
            return cls()
        return cls(read, write)

    def to_content(self) -> dict[str, list[str]]:
        return {"read": list(self.read), "write": list(self.write)}


def _users(value: Any) -> tuple[str, ...] | None:
    """The users of an ACL list; None if it is not a list of strings (malformed)."""
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        return None
    return tuple(value)


def dedupe(users: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for u in users:
        seen.setdefault(u, None)
    return list(seen)


class StateView(RoomView):
    """A room's state as the local index holds it, with the keyed-state rules on top."""

    def acl(self, key: str) -> Acl | None:
        content = self.index.state(self.room_id, ACL_EVENT, key)
        return None if content is None else Acl.from_content(content)

    def acls(self) -> dict[str, Acl]:
        return {
            k: Acl.from_content(c)
            for k, c in self.index.state_of_type(self.room_id, ACL_EVENT).items()
        }

    def can_read(self, user_id: str, acl: Acl | None) -> bool:
        if not self.is_joined(user_id):
            return False
        return acl is None or user_id in acl.read or user_id in acl.write

    def can_write(self, user_id: str, acl: Acl | None) -> bool:
        if not self.is_joined(user_id):
            return False
        if acl is not None and user_id in acl.write:
            return True
        return self.power(user_id) >= self.required(STATE_EVENT)

    def can_set_acl(self, user_id: str) -> bool:
        return self.is_joined(user_id) and self.power(user_id) >= self.required(ACL_EVENT)


# -- results -------------------------------------------------------------------------


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


# -- the API ---------------------------------------------------------------------------


class State:
    """``client.state``: IXO keyed state with JSON Pointers, ACLs and secure values.

    Every method takes ``as_user``: the user the rules are applied to. Leave it out
    to act as this account; a service that verified a caller (the state bot) passes
    the caller, and then writes the events with its own account.
    """

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client
        self._locks: KeyedLocks[tuple[str, str]] = KeyedLocks()
        self._http: MatrixHttp | None = None
        #: How refusals name this account when it writes for someone else.
        self.writer_name = "the writing account"

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    @property
    def _me(self) -> str:
        return self._c.user_id

    def view(self, room_id: str) -> StateView:
        """The room's state and rules from the local index (no I/O)."""
        return StateView(self._c.index, room_id)

    def _member(self, room_id: str, actor: str) -> StateView:
        if not self._c.rooms.is_joined(room_id):
            raise NotFoundError(
                f"room {room_id} is unknown to {self._me}: not a member, or it does not exist"
            )
        view = self.view(room_id)
        if not view.is_joined(actor):
            raise AccessDeniedError(
                f"{actor} is not a joined member of {room_id}", errcode="M_FORBIDDEN"
            )
        return view

    # -- reading -----------------------------------------------------------------

    def keys(self, room_id: str, *, as_user: str | None = None) -> list[KeyInfo]:
        """The room's keys, with what the actor may do with each."""
        actor = as_user or self._me
        view = self._member(room_id, actor)
        acls = view.acls()
        out = []
        for key, content in sorted(self._c.index.state_of_type(room_id, STATE_EVENT).items()):
            acl = acls.get(key)
            out.append(
                KeyInfo(
                    key=key,
                    secure=secure_ref(content) is not None,
                    has_acl=acl is not None,
                    readable=view.can_read(actor, acl),
                    writable=view.can_write(actor, acl),
                )
            )
        return out

    async def get(
        self, room_id: str, key: str, path: str = "", *, as_user: str | None = None
    ) -> StateValue:
        """The value of ``key`` (or the part at the JSON Pointer ``path``)."""
        actor = as_user or self._me
        key = check_key(key)
        tokens = parse_path(path)
        view = self._member(room_id, actor)
        acl = view.acl(key)
        if not view.can_read(actor, acl):
            raise StateAccessError(
                f"{actor} may not read {key!r} in {room_id}: the key's ACL does not "
                "list them (ask someone who can set the ACL to add them to 'read')",
                action="read",
                key=key,
                by_acl=True,
            )
        content = self._c.index.state(room_id, STATE_EVENT, key)
        if content is None:
            raise NotFoundError(f"room {room_id} has no state key {key!r}")
        ref = secure_ref(content)
        value = (
            await self._secure_value(
                view, key, ref, setter=self._c.index.state_sender(room_id, STATE_EVENT, key)
            )
            if ref is not None
            else content
        )
        return StateValue(
            room_id, key, format_path(tokens), get_at(value, tokens, key=key), ref is not None
        )

    def acl(self, room_id: str, key: str, *, as_user: str | None = None) -> Acl | None:
        """The key's ACL, or None if it has none (members may see ACLs: they are state)."""
        key = check_key(key)
        return self._member(room_id, as_user or self._me).acl(key)

    async def _secure_value(
        self, view: StateView, key: str, ref: dict[str, Any], *, setter: str | None
    ) -> Any:
        """The decrypted value a secure reference points at.

        ``setter`` is the sender of the ``ixo.room.state`` event holding ``ref``, taken
        from the same source as ``ref`` (the index, or the homeserver's event). The
        reference must name this key's own record, and the record must have been sent
        by the same account as the reference: anything else is refused, so no one can
        point a key at a record they did not write (another key's secret, say).
        """
        record_key, event_id = ref.get("record"), ref.get("event_id")
        if (
            not isinstance(record_key, str)
            or not isinstance(event_id, str)
            or record_key != SECURE_RECORD_PREFIX + key
            or not setter
        ):
            raise NotFoundError(
                f"the secure reference of key {key!r} is malformed (it must name the key's "
                "own record, and its sender must be known)",
                errcode="DR_SECURE_UNAVAILABLE",
            )
        for attempt in range(2):
            record = self._find_record(view.room_id, record_key, event_id)
            if record is not None:
                if record.sender != setter:
                    break  # a reference to someone else's record: not ours to vouch for
                return record.value
            if attempt == 0:
                await self._c.fill_gaps(view.room_id)
                self._c.retry_decryption(view.room_id)
        raise NotFoundError(
            f"the secure value of key {key!r} is not readable by {self._me}'s device "
            "(its record is missing, or its room key is not on this device)",
            errcode="DR_SECURE_UNAVAILABLE",
        )

    def _find_record(self, room_id: str, record_key: str, event_id: str) -> Record | None:
        index = self._c.index
        latest = index.latest(room_id, record_key)
        if latest is not None and latest.event_id == event_id:
            return latest
        for record in index.history(room_id, record_key, newest_first=True):
            if record.event_id == event_id:
                return record
        return None

    # -- writing -------------------------------------------------------------------

    async def set(
        self,
        room_id: str,
        key: str,
        value: Any,
        *,
        path: str = "",
        mode: Mode = "merge",
        secure: bool | None = None,
        as_user: str | None = None,
    ) -> SetResult:
        """Merge (or replace) ``value`` at ``path`` of ``key``; ``secure`` keeps it encrypted.

        ``secure=None`` keeps the key as it is now (secure stays secure).
        """
        actor = as_user or self._me
        key = check_key(key)
        tokens = parse_path(path)
        if mode not in ("merge", "replace"):
            raise ValidationError(f"mode must be 'merge' or 'replace', got {mode!r}")
        check_json(value, canonical=False)
        view = self._member(room_id, actor)
        acl = view.acl(key)
        if not view.can_write(actor, acl):
            need = view.required(STATE_EVENT)
            raise StateAccessError(
                f"{actor} may not write {key!r} in {room_id}: not in the key's write "
                f"list{'' if acl else ' (it has no ACL)'} and power "
                f"{view.power(actor)} is below the {need} the room asks for {STATE_EVENT}",
                action="write",
                key=key,
                by_acl=acl is not None,
            )
        async with self._locks.hold((room_id, key)):
            current, setter = await self._fresh_state_event(room_id, STATE_EVENT, key)
            ref = secure_ref(current)
            make_secure = secure if secure is not None else ref is not None
            if ref is not None:
                # The new value carries the secret one over (a merge, a write under a
                # path), or puts it in the clear (secure=False): only for readers. A
                # blind replace of the whole value that stays secure reveals nothing.
                blind = mode == "replace" and not tokens and make_secure
                if blind:
                    current = None
                else:
                    if not view.can_read(actor, acl):
                        raise StateAccessError(
                            f"{actor} may not merge into or downgrade the secure key {key!r} "
                            f"in {room_id}: that reveals its value, and the key's ACL does not "
                            "let them read it (replace the whole value, keeping it secure, or "
                            "ask to be added to 'read')",
                            action="read",
                            key=key,
                            by_acl=True,
                        )
                    current = await self._secure_value(view, key, ref, setter=setter)
            new = put_at(current, tokens, value, mode)
            if not isinstance(new, dict):
                raise ValidationError(
                    f"the value of a key must be a JSON object (it is the content of a Matrix "
                    f"state event); to store {kind_of(new)}, put it under a path, "
                    "e.g. path=/value"
                )
            if make_secure:
                result = await self._set_secure(view, key, new, actor)
            else:
                result = await self._set_clear(view, key, new, actor)
        log.info(
            "state set", extra={"room": room_id, "key": key, "by": actor, "secure": make_secure}
        )
        return result

    async def merge(
        self,
        room_id: str,
        key: str,
        value: Any,
        *,
        path: str = "",
        secure: bool | None = None,
        as_user: str | None = None,
    ) -> SetResult:
        """:meth:`set` with ``mode="merge"`` (JSON Merge Patch at ``path``)."""
        return await self.set(
            room_id, key, value, path=path, mode="merge", secure=secure, as_user=as_user
        )

    async def _set_clear(
        self, view: StateView, key: str, new: dict[str, Any], actor: str
    ) -> SetResult:
        if SECURE in new:
            raise ValidationError(
                f"the member {SECURE!r} is reserved for references to secure values"
            )
        check_json(new, canonical=True)
        check_size(
            encoded_size(new), self._content_limit(view.room_id, key), f"the value of key {key!r}"
        )
        self._check_writer_power(view, actor, STATE_EVENT)
        event_id = await self._put_state(view.room_id, STATE_EVENT, key, new, actor)
        return SetResult(view.room_id, key, event_id, False)

    async def _set_secure(
        self, view: StateView, key: str, new: dict[str, Any], actor: str
    ) -> SetResult:
        if not view.encrypted and not self._c.rooms.is_encrypted(view.room_id):
            raise ValidationError(
                f"room {view.room_id} is not encrypted, so a value cannot be kept secret in it; "
                f"enable encryption ({ENCRYPTION['algorithm']}) or store the value in the clear"
            )
        self._check_writer_power(view, actor, STATE_EVENT)
        self._check_writer_power(view, actor, "m.room.encrypted", state=False)
        record_key = SECURE_RECORD_PREFIX + key
        check_size(encoded_size(new), _record_limit(record_key), f"the secure value of key {key!r}")
        try:
            record = await self._c.records.put(view.room_id, record_key, new)
        except TooLargeError:
            raise
        except HomeserverError as exc:
            raise _client_error(exc, f"storing the secure value of {key!r}") from None
        ref = {
            SECURE: {
                "v": SECURE_VERSION,
                "record": record_key,
                "event_id": record.event_id,
                "algorithm": ENCRYPTION["algorithm"],
            }
        }
        event_id = await self._put_state(view.room_id, STATE_EVENT, key, ref, actor)
        return SetResult(view.room_id, key, event_id, True, record.event_id)

    async def set_acl(
        self,
        room_id: str,
        key: str,
        *,
        read: list[str],
        write: list[str],
        as_user: str | None = None,
    ) -> tuple[str, Acl]:
        """Replace the key's ACL with exactly these lists; return the event id and the ACL."""
        from datarooms.ids import user_id as check_user_id

        actor = as_user or self._me
        key = check_key(key)
        for name, users in (("read", read), ("write", write)):
            if not isinstance(users, list):
                raise ValidationError(f"'{name}' must be a list of Matrix user ids")
            if len(users) > MAX_ACL_ENTRIES:
                raise TooLargeError(
                    f"'{name}' lists {len(users)} users; the most is {MAX_ACL_ENTRIES}"
                )
            for u in users:
                check_user_id(u)
        acl = Acl(tuple(dedupe(read)), tuple(dedupe(write)))
        view = self._member(room_id, actor)
        if not view.can_set_acl(actor):
            raise StateAccessError(
                f"{actor} may not change ACLs in {room_id}: that needs power "
                f"{view.required(ACL_EVENT)} ({ACL_EVENT}); they have {view.power(actor)}",
                action="acl",
                key=key,
                by_acl=False,
            )
        content = acl.to_content()
        check_size(
            encoded_size(content), self._content_limit(room_id, key), f"the ACL of key {key!r}"
        )
        self._check_writer_power(view, actor, ACL_EVENT)
        event_id = await self._put_state(room_id, ACL_EVENT, key, content, actor)
        log.info("acl set", extra={"room": room_id, "key": key, "by": actor})
        return event_id, acl

    # -- homeserver calls ---------------------------------------------------------

    def _http_client(self) -> MatrixHttp:
        if self._http is None:
            self._http = self._c.http()
        return self._http

    def _content_limit(self, room_id: str, key: str) -> int:
        overhead = len(key.encode()) + len(self._me) + len(room_id) + EVENT_ENVELOPE_BYTES
        return MAX_EVENT_BYTES - overhead

    def power_message(self, room_id: str, have: int, need: int, what: str) -> str:
        """Why this account cannot write ``what`` for others, and how to fix it."""
        me = self._me
        return (
            f"{self.writer_name} ({me}) has power {have} in {room_id} but needs {need} to "
            f"write {what}; a room admin must raise it, e.g. "
            f"`datarooms room grant {room_id} {me} admin`"
        )

    def _check_writer_power(
        self, view: StateView, actor: str, event_type: str, *, state: bool = True
    ) -> None:
        have, need = view.power(self._me), view.required(event_type, state=state)
        if have >= need:
            return
        what = event_type if state else "encrypted records"
        if actor != self._me:
            raise BotPowerError(self.power_message(view.room_id, have, need, what))
        raise AccessDeniedError(
            f"{self._me} has power {have} in {view.room_id} but Matrix asks {need} for "
            f"sending {what}; being in a key's write list is not enough to send the event "
            "yourself: write through the state bot, or ask a room admin for the power",
            errcode="M_FORBIDDEN",
        )

    async def _fresh_state_event(
        self, room_id: str, event_type: str, key: str
    ) -> tuple[Any, str | None]:
        """The current content of a state event and its sender, both from the homeserver."""
        try:
            event = await self._http_client().request(
                "GET", state_path(room_id, event_type, key), params={"format": "event"}
            )
        except HomeserverError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None, None
            raise _client_error(exc, f"reading {event_type} {key!r} in {room_id}") from None
        if not isinstance(event, dict) or not isinstance(event.get("content"), dict):
            return None, None
        sender = event.get("sender")
        return event["content"], sender if isinstance(sender, str) else None

    async def _put_state(
        self, room_id: str, event_type: str, key: str, content: dict[str, Any], actor: str
    ) -> str:
        try:
            res = await self._http_client().request(
                "PUT", state_path(room_id, event_type, key), json=content
            )
        except HomeserverError as exc:
            if exc.errcode == "M_FORBIDDEN":
                if actor != self._me:
                    raise BotPowerError(
                        f"the homeserver refused the {event_type} event of {self.writer_name} "
                        f"in {room_id}: {exc.message}. Give {self._me} enough power in the room"
                    ) from None
                raise AccessDeniedError(
                    f"the homeserver refused {self._me}'s {event_type} event in {room_id}: "
                    f"{exc.message}",
                    errcode="M_FORBIDDEN",
                ) from None
            raise _client_error(exc, f"writing {event_type} {key!r} in {room_id}") from None
        event_id = str(res.get("event_id", "")) if isinstance(res, dict) else ""
        # Read our own write at once; sync brings the same event again later.
        self._c.index.apply(
            SyncBatch([], [], [], [(room_id, event_type, key, content, self._me)], [], [])
        )
        return event_id


def _record_limit(record_key: str) -> int:
    return ev.MAX_RECORD_BYTES - len(record_key.encode()) - 128 - 64


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


__all__ = [
    "ACL_EVENT",
    "SECURE",
    "STATE_EVENT",
    "Acl",
    "BadPathError",
    "BotPowerError",
    "KeyInfo",
    "Mode",
    "SetResult",
    "State",
    "StateAccessError",
    "StateValue",
    "StateView",
    "TooLargeError",
    "check_key",
    "format_path",
    "get_at",
    "merge_patch",
    "parse_path",
    "pointer",
    "put_at",
    "secure_ref",
]
