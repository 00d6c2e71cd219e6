"""Moderation: Matrix policy lists and flood control, applied by the automation service.

**Policy lists** are the Matrix spec's "Moderation policy lists" (the format Mjolnir and
Draupnir use): a room whose state events ``m.policy.rule.user`` / ``m.policy.rule.room``
/ ``m.policy.rule.server`` each hold ``{"entity": glob, "recommendation": "m.ban",
"reason": ...}`` (any ``state_key``; a rule is withdrawn by emptying its content). Globs
are the spec's: ``*`` any run of characters, ``?`` one. The older types
(``m.room.rule.*``, ``org.matrix.mjolnir.rule.*``) are read too.

A data room **subscribes** with the state event :data:`~datarooms.events.MODERATION`
(``{"policy_lists": [...], "redact": bool, "flood": {...}}``), sent by one of its admins
with :func:`subscribe`, which also makes the event type need admin power. It counts only
while its sender is an admin and the room still requires admin power for it (as
forwarding does).

:class:`Moderator` (run by the automation service, which must be an admin of the room
to ban, redact and set ACLs) applies, in every subscribed room:

- a ``user`` rule: members and invitees it matches are **banned** (reason: the list, the
  rule and its reason); with ``redact``, their recent events are redacted;
- a ``server`` rule: the server is **denied in the room's server ACL** and its members
  are banned;
- a ``room`` rule: recorded, nothing to do inside the room it names (a data room is not
  left because a list names it);
- **flood control**: more than ``max_messages`` events of one sender within
  ``per_seconds`` mutes the sender (read access, power 0) and/or redacts the flood. An
  admin is never muted.

Each action is logged (who, what, why), posted in the room as a notice, and kept in
:attr:`Moderator.actions`; a ban and a redaction carry their reason in the room itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datarooms.errors import AccessDeniedError, DataroomsError, HomeserverError, ValidationError
from datarooms.events import MODERATION
from datarooms.ids import server_host, server_of
from datarooms.sdk.hooks import RoomEventReceived, StateChanged, Subscription
from datarooms.sdk.timeline import error_from_response, is_error

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

ADMIN = 100
BAN = "m.ban"
#: The rule types of each kind, the spec's first (then the older ones Mjolnir wrote).
RULE_TYPES: dict[str, tuple[str, ...]] = {
    "user": ("m.policy.rule.user", "m.room.rule.user", "org.matrix.mjolnir.rule.user"),
    "room": ("m.policy.rule.room", "m.room.rule.room", "org.matrix.mjolnir.rule.room"),
    "server": ("m.policy.rule.server", "m.room.rule.server", "org.matrix.mjolnir.rule.server"),
}
_KIND_OF = {t: kind for kind, types in RULE_TYPES.items() for t in types}
_BANS = (BAN, "org.matrix.mjolnir.ban")
#: MSC3784: the room type of a policy list (what Draupnir and Element look for).
POLICY_ROOM_TYPE = "support.feline.policy.lists.msc.v1"
FLOOD_ACTIONS = ("mute", "redact", "mute_and_redact")
_FLOOD_TYPES = ("m.room.message", "m.room.encrypted", "m.reaction", "m.sticker")


def glob_regex(glob: str) -> re.Pattern[str]:
    """The spec's glob: ``*`` any run of characters, ``?`` exactly one; nothing else is
    special."""
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in glob)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class PolicyRule:
    kind: str  # user | room | server
    entity: str
    recommendation: str
    reason: str
    list_room: str
    state_key: str

    @property
    def bans(self) -> bool:
        return self.recommendation in _BANS

    def matches(self, value: str) -> bool:
        return glob_regex(self.entity).fullmatch(value) is not None


def policy_rules(client: DataroomsClient, list_room: str) -> list[PolicyRule]:
    """The rules of a policy list room, from this device's index (it must be in it)."""
    out: list[PolicyRule] = []
    for kind, types in RULE_TYPES.items():
        seen: set[str] = set()
        for event_type in types:
            for state_key, content in client.index.state_of_type(list_room, event_type).items():
                entity, rec = content.get("entity"), content.get("recommendation")
                if not isinstance(entity, str) or not entity or not isinstance(rec, str):
                    continue  # withdrawn (empty content) or malformed
                if entity in seen:
                    continue  # the same entity under an older type
                seen.add(entity)
                reason = content.get("reason")
                out.append(
                    PolicyRule(
                        kind,
                        entity,
                        rec,
                        reason if isinstance(reason, str) else "",
                        list_room,
                        state_key,
                    )
                )
    return out


# -- the policy list's side (a moderator writing rules) -------------------------------


async def create_policy_list(client: DataroomsClient, name: str) -> str:
    """A new policy list room (not encrypted: rules are state, which is never encrypted,
    and lists are meant to be shared), typed as MSC3784 says. Its id."""
    resp = await client.nio.room_create(
        name=name,
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "shared"}}
        ],
        room_type=POLICY_ROOM_TYPE,
    )
    room_id = getattr(resp, "room_id", None)
    if not isinstance(room_id, str):
        raise HomeserverError(f"could not create a policy list: {getattr(resp, 'message', resp)}")
    await client.sync_once()
    return room_id


async def put_rule(
    client: DataroomsClient,
    list_room: str,
    kind: str,
    entity: str,
    reason: str,
    *,
    recommendation: str = BAN,
) -> str:
    """Write a rule (``m.policy.rule.<kind>``, state key ``rule:<entity>``, as Draupnir
    does) into a policy list; its state key."""
    if kind not in RULE_TYPES:
        raise ValidationError(f"kind must be user, room or server, got {kind!r}")
    if not entity or len(entity) > 255:
        raise ValidationError("a rule's entity is 1-255 characters (a glob: * and ?)")
    state_key = f"rule:{entity}"
    content = {"entity": entity, "reason": reason, "recommendation": recommendation}
    await _put_state(client, list_room, RULE_TYPES[kind][0], content, state_key)
    return state_key


async def remove_rule(client: DataroomsClient, list_room: str, kind: str, entity: str) -> None:
    """Withdraw a rule (its state emptied, as the spec says)."""
    await _put_state(client, list_room, RULE_TYPES[kind][0], {}, f"rule:{entity}")


async def _put_state(
    client: DataroomsClient, room_id: str, kind: str, content: Any, state_key: str = ""
) -> None:
    resp = await client.nio.room_put_state(room_id, kind, content, state_key)
    if not hasattr(resp, "event_id"):
        message = str(getattr(resp, "message", resp))
        if getattr(resp, "status_code", None) == "M_FORBIDDEN":
            raise AccessDeniedError(f"could not set {kind} in {room_id}: {message}")
        raise HomeserverError(f"could not set {kind} in {room_id}: {message}")
    await client.sync_once()


# -- the data room's side (its admins subscribe) ----------------------------------------


_validator: Any = None


def check_config(content: dict[str, Any]) -> dict[str, Any]:
    global _validator
    if _validator is None:
        from jsonschema import Draft202012Validator

        from datarooms.events import MODERATION_SCHEMA

        _validator = Draft202012Validator(MODERATION_SCHEMA)
    errors = list(_validator.iter_errors(content))
    if errors:
        raise ValidationError(f"not a valid moderation config: {errors[0].message}")
    return content


async def subscribe(
    client: DataroomsClient,
    room_id: str,
    policy_lists: list[str],
    *,
    redact: bool = False,
    flood: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """As a room admin: make the room follow these policy lists (and flood control)."""
    content: dict[str, Any] = {"policy_lists": list(policy_lists), "redact": redact}
    if flood is not None:
        content["flood"] = {"action": "mute", **flood}
    check_config(content)
    await client.ensure_room(room_id)
    view = client.rooms.view(room_id)
    if view.access(client.user_id) != "admin":
        raise AccessDeniedError(
            f"only an admin of {room_id} may set its moderation "
            f"({client.user_id} is {view.access(client.user_id)})"
        )
    resp = await client.nio.room_get_state_event(room_id, "m.room.power_levels")
    pl = dict(getattr(resp, "content", None) or {})
    if not pl:
        raise HomeserverError(f"could not read the power levels of {room_id}")
    events = dict(pl.get("events") or {})
    if int(events.get(MODERATION, 0)) < ADMIN:
        events[MODERATION] = ADMIN
        pl["events"] = events
        await _put_state(client, room_id, "m.room.power_levels", pl)
    await _put_state(client, room_id, MODERATION, content)
    return content


def moderation(client: DataroomsClient, room_id: str) -> dict[str, Any] | None:
    """The room's moderation config, if an admin set it and the room requires admin
    power for it; else None."""
    content = client.index.state(room_id, MODERATION)
    sender = client.index.state_sender(room_id, MODERATION)
    if not content or not sender:
        return None
    view = client.rooms.view(room_id)
    if view.access(sender) != "admin" or view.required(MODERATION) < ADMIN:
        return None
    try:
        return check_config(dict(content))
    except ValidationError:
        return None


# -- the service's side ------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    room_id: str
    action: str  # ban | deny_server | redact | mute
    target: str
    why: str
    ts: float


class Moderator:
    """Applies the policy lists and flood control of the rooms the client is in."""

    def __init__(self, client: DataroomsClient, *, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.actions: list[Action] = []
        self._clock = clock
        self._hooks: list[Subscription] = []
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._recent: dict[tuple[str, str], deque[tuple[float, str]]] = defaultdict(deque)
        self._flooded: set[tuple[str, str]] = set()
        self._banned: set[tuple[str, str]] = set()
        self._acting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is not None:
            return
        self._hooks = [
            self.client.hooks.on(StateChanged, self._on_state),
            self.client.hooks.on(RoomEventReceived, self._on_event),
        ]
        self._task = asyncio.create_task(self._loop(), name="moderation")
        for room_id in self.client.joined_rooms():
            if self.client.index.state(room_id, MODERATION):
                self.schedule(room_id)

    async def stop(self) -> None:
        for h in self._hooks:
            h.cancel()
        self._hooks = []
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def protected_rooms(self) -> dict[str, dict[str, Any]]:
        out = {}
        for room_id in self.client.index.rooms_with_state(MODERATION):
            config = moderation(self.client, room_id)
            if config is not None and self.client.membership(room_id) == "join":
                out[room_id] = config
        return out

    def schedule(self, room_id: str) -> None:
        self._pending.add(room_id)
        self._wake.set()

    async def settle(self) -> None:
        """Wait until every scheduled room has been applied (for tests and shutdown)."""
        while self._pending:
            await asyncio.sleep(0.05)
        async with self._lock:
            pass

    # -- hooks ----------------------------------------------------------------------

    def _on_state(self, change: StateChanged) -> None:
        if change.event_type == MODERATION:
            self.schedule(change.room_id)
        elif change.event_type in _KIND_OF:
            for room_id, config in self.protected_rooms().items():
                if change.room_id in config.get("policy_lists", ()):
                    self.schedule(room_id)
        elif change.event_type in ("m.room.member", "m.room.power_levels") and (
            self.client.index.state(change.room_id, MODERATION)
        ):
            if change.event_type == "m.room.power_levels" or change.content.get("membership") in (
                "join",
                "invite",
            ):
                self.schedule(change.room_id)

    def _on_event(self, received: RoomEventReceived) -> None:
        ev = received.event
        if received.late or ev.sender == self.client.user_id or ev.type not in _FLOOD_TYPES:
            return
        config = moderation(self.client, ev.room_id)
        flood = (config or {}).get("flood")
        if not flood:
            return
        key = (ev.room_id, ev.sender)
        now = self._clock()
        window = self._recent[key]
        window.append((now, ev.event_id))
        while window and window[0][0] < now - float(flood["per_seconds"]):
            window.popleft()
        if len(window) > int(flood["max_messages"]) and key not in self._flooded:
            if self.client.rooms.view(ev.room_id).access(ev.sender) == "admin":
                return
            self._flooded.add(key)
            ids = [e for _, e in window]
            task = asyncio.create_task(
                self._flood_action(ev.room_id, ev.sender, flood, ids, len(ids)),
                name="moderation-flood",
            )
            self._acting.add(task)
            task.add_done_callback(self._acting.discard)

    # -- applying -------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                room_id = self._pending.pop()
                async with self._lock:
                    try:
                        await self.apply(room_id)
                    except DataroomsError as exc:
                        log.warning(
                            "moderation: could not apply the policy",
                            extra={"room": room_id, "error": exc.message},
                        )

    async def _join_list(self, list_room: str) -> bool:
        if self.client.membership(list_room) == "join":
            return True
        try:
            await self.client.rooms.join(list_room)
            return True
        except DataroomsError as exc:
            log.warning(
                "moderation: cannot read a policy list (invite the automation bot to it)",
                extra={"list": list_room, "error": exc.message},
            )
            return False

    async def apply(self, room_id: str) -> int:
        """Apply the room's policy lists now; how many actions it took."""
        config = moderation(self.client, room_id)
        if config is None:
            return 0
        own = server_host(server_of(self.client.user_id))
        rules: list[PolicyRule] = []
        for list_room in config.get("policy_lists", ()):
            if not await self._join_list(list_room):
                continue
            for r in policy_rules(self.client, list_room):
                if r.kind == "server" and r.matches(own):
                    # Never shut the room's own homeserver (and all its users) out.
                    log.warning("moderation: a rule names our own server", extra={"rule": r.entity})
                elif r.bans:
                    rules.append(r)
        done = 0
        # Bans first (a ban outlasts the ACL), then the ACL for the servers.
        for member in self.client.rooms.members(room_id):
            user = member.user_id
            if user == self.client.user_id or (room_id, user) in self._banned:
                continue
            host = server_host(server_of(user))
            hit = next(
                (
                    r
                    for r in rules
                    if (r.kind == "user" and r.matches(user))
                    or (r.kind == "server" and r.matches(host))
                ),
                None,
            )
            if hit is None:
                continue
            if member.access == "admin":
                log.warning(
                    "moderation: a rule matches an admin; not banning",
                    extra={"room": room_id, "user": user, "rule": hit.entity},
                )
                continue
            await self._ban(room_id, user, _why(hit))
            done += 1
            if config.get("redact"):
                done += await self._redact_recent(room_id, user, _why(hit))
        acl = self.client.rooms.server_acl(room_id)
        for rule in rules:
            if rule.kind != "server":
                continue
            if acl is not None and rule.entity in acl.deny:
                continue
            await self.client.rooms.deny_server(room_id, rule.entity)
            acl = self.client.rooms.server_acl(room_id)
            done += await self._record(room_id, "deny_server", rule.entity, _why(rule))
        return done

    async def _ban(self, room_id: str, user: str, why: str) -> None:
        resp = await self.client.nio.room_ban(room_id, user, why)
        if is_error(resp):
            raise error_from_response(resp, f"banning {user} in {room_id}")
        self._banned.add((room_id, user))
        # Nothing written later may reach the banned user's devices.
        self.client.nio.invalidate_outbound_session(room_id)
        await self._record(room_id, "ban", user, why)

    async def _redact_recent(self, room_id: str, user: str, why: str, limit: int = 200) -> int:
        events = await self.client.messages.recent(room_id, limit)
        n = 0
        for e in events:
            if e.sender == user and e.type not in ("m.room.member", "m.room.redaction"):
                if e.state_key is not None:
                    continue
                with contextlib.suppress(DataroomsError):
                    await self.client.messages.redact(room_id, e.event_id, why)
                    n += 1
        if n:
            await self._record(room_id, "redact", user, f"{n} events: {why}", notice=False)
        return n

    async def _flood_action(
        self, room_id: str, user: str, flood: dict[str, Any], ids: list[str], count: int
    ) -> None:
        action = str(flood.get("action", "mute"))
        why = (
            f"flood control: {count} events in {flood['per_seconds']:g} s "
            f"(the room allows {flood['max_messages']})"
        )
        async with self._lock:
            try:
                if action in ("mute", "mute_and_redact"):
                    await self.client.rooms.grant(room_id, user, "read")
                    await self._record(room_id, "mute", user, why)
                if action in ("redact", "mute_and_redact"):
                    for event_id in ids:
                        with contextlib.suppress(DataroomsError):
                            await self.client.messages.redact(room_id, event_id, why)
                    await self._record(room_id, "redact", user, f"{len(ids)} events: {why}")
            except DataroomsError as exc:
                log.warning(
                    "moderation: flood control failed",
                    extra={"room": room_id, "user": user, "error": exc.message},
                )
            finally:
                # Acted once per flood: the next flood (after an admin restored the
                # sender's access, say) is counted afresh.
                self._recent.pop((room_id, user), None)
                self._flooded.discard((room_id, user))

    async def _record(
        self, room_id: str, action: str, target: str, why: str, *, notice: bool = True
    ) -> int:
        self.actions.append(Action(room_id, action, target, why, time.time()))
        log.info(
            "moderation action",
            extra={"room": room_id, "action": action, "target": target, "why": why},
        )
        if notice:
            body = f"🛡️ {action.replace('_', ' ')} {target}: {why}"
            content = {
                "msgtype": "m.notice",
                "body": body,
                "io.datarooms.moderation": {"action": action, "target": target, "why": why},
            }
            try:
                await self.client.send(room_id, "m.room.message", content)
            except DataroomsError as exc:
                log.warning("moderation: could not post a notice", extra={"error": exc.message})
        return 1


def _why(rule: PolicyRule) -> str:
    return f"policy list {rule.list_room}: {rule.kind} rule {rule.entity}" + (
        f" ({rule.reason})" if rule.reason else ""
    )
