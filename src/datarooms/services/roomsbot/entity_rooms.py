"""Entity rooms and spaces: created exactly once per entity, even across crashes.

For an entity DID the bot creates:

1. its **data rooms**, one per configured kind (``entity`` always, first): encrypted,
   invite-only, history ``shared``, alias ``#did-...`` for the entity room (IXO's scheme)
   and ``#<kind>.did-...`` for the others;
2. its **space**, alias ``#space.did-...``, whose ``m.space.child`` state lists the rooms,
   **when someone asks for it** (``ensure(space=True)``: the REST API, an alias query for
   ``#space.did-...``), not for every entity the chain registers: a space costs a second
   ``createRoom`` (10 events), as much as the data room itself.

The controllers' Matrix users are invited to every one of them with admin power (100).
Each room carries the entity's facts, ``io.datarooms.entity`` (DID, type, controllers,
where the facts came from): in its ``m.room.create`` content, and as a state event once
they change (:func:`entity_content` reads either); each data room also carries
``io.datarooms.room`` (its kind and the DID), so any room tells which entity it belongs to.

**Few events.** Everything goes into the ``createRoom`` call (power levels, join rule,
encryption, state, invites): no state is sent afterwards. The ``public_chat`` preset with
an ``invite`` join rule in ``initial_state`` avoids the ``m.room.guest_access`` event
``private_chat`` would add (no guest access is the default). Child rooms carry no
``m.space.parent`` (optional in the spec), which would cost an event per room, and no
``m.room.topic`` (the name and ``io.datarooms.room`` say what a room is). An entity room
is 10 events with one controller (see docs/roomsbot.md); ``recipe="baseline"`` keeps the
earlier layout (topics, and the space made with every entity: 23 events) for
``bench/roomsbot.py``'s side-by-side run.

**Exactly once.** The alias is claimed atomically by ``createRoom``: a second creation
with the same alias fails with ``M_ROOM_IN_USE`` and the bot then resolves the alias and
*converges* that room (invites, power, state, space children it may lack) instead of
creating another. So a crash at any point, or two bots racing, never yields a second
room for an entity. The store (DID → rooms) makes the common case free of requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

from datarooms import events as ev
from datarooms._locks import KeyedLocks
from datarooms.chain.entity import controller_user_id
from datarooms.errors import HomeserverError, ValidationError
from datarooms.events import ENTITY as ENTITY_EVENT
from datarooms.homeserver.api import MatrixApi
from datarooms.ids import did as check_did
from datarooms.ids import entity_alias_localpart
from datarooms.sdk.rooms import ENCRYPTION, POWER, power_levels, state_path
from datarooms.services.roomsbot.metrics import Metrics
from datarooms.services.roomsbot.store import EntityFacts, EntityRecord, RoomRef, Store

log = logging.getLogger(__name__)

#: State event (state_key ""): the entity a room or space belongs to.
SPACE = "space"
MAX_ALIAS_LENGTH = 255
_MAX_NAME = 255
_READY_TIMEOUT_S = 30.0

#: How entity rooms are made: ``lean`` (what the bot does) or ``baseline`` (the layout
#: before issue 18: topics, and the space made with every entity), kept runnable for
#: ``bench/roomsbot.py``, which measures both in one run.
Recipe = Literal["lean", "baseline"]

KIND_TOPICS = {
    "entity": "Records, twin state and files of {did}. End-to-end encrypted.",
    "project": "Project records of {did}. End-to-end encrypted.",
    "device": "Telemetry and state of the device {did}. End-to-end encrypted.",
    "verification": "Verification evidence for {did}. End-to-end encrypted.",
    "collaboration": "Conversation among the people, devices and agents of {did}. "
    "End-to-end encrypted.",
    SPACE: "The data rooms of {did}, kept by the datarooms rooms bot.",
}


def alias_localpart(did: str, kind: str) -> str:
    """``did-ixo-entity-ab`` for the entity room, ``<kind>.did-ixo-entity-ab`` otherwise."""
    local = entity_alias_localpart(did)
    return local if kind == "entity" else f"{kind}.{local}"


def did_from_localpart(local: str) -> str | None:
    """Invert IXO's alias scheme as far as it can be inverted.

    ``did-ixo-entity-<id>`` → ``did:ixo:entity:<id>``; otherwise ``did-<method>-<rest>``
    → ``did:<method>:<rest>``. (The scheme maps ``:`` and ``-`` alike, so other DIDs with
    more colons are found through the store, from the chain, not from their alias.)
    """
    if not local.startswith("did-"):
        return None
    method, sep, ident = local[4:].partition("-")
    if not sep or not method or not ident:
        return None
    if method == "ixo" and ident.startswith("entity-"):
        ident = "entity:" + ident[len("entity-") :]
    try:
        return str(check_did(f"did:{method}:{ident}"))
    except ValidationError:
        return None


def parse_alias(alias: str, server_name: str) -> tuple[str, str] | None:
    """``(kind, alias localpart of the entity)`` of one of the bot's aliases, else None."""
    if not alias.startswith("#") or not alias.endswith(":" + server_name):
        return None
    local = alias[1 : -(len(server_name) + 1)]
    kind, dot, rest = local.partition(".")
    if dot and rest.startswith("did-") and kind.isalpha() and kind.islower():
        return kind, rest
    if local.startswith("did-"):
        return "entity", local
    return None


def _state(etype: str, content: dict[str, Any], key: str = "") -> dict[str, Any]:
    return {"type": etype, "state_key": key, "content": content}


def _name(did: str, kind: str) -> str:
    name = did if kind == SPACE else f"{did} · {kind}"
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"


def entity_content(state: Mapping[tuple[Any, Any], Any]) -> dict[str, Any] | None:
    """The ``io.datarooms.entity`` facts of a room, from its state (``{(type, state_key):
    content}``): the state event once the facts changed, else what the room was created
    with (under that key in the ``m.room.create`` content, which costs no event)."""
    for key in ((ENTITY_EVENT, ""), ("m.room.create", "")):
        content = state.get(key)
        if key[0] == "m.room.create" and isinstance(content, dict):
            content = content.get(ENTITY_EVENT)
        if isinstance(content, dict) and content:
            return content
    return None


class _Unusable(Exception):
    """An alias points at a room the bot cannot use (a creation that never finished)."""


class EntityRooms:
    """Creates and keeps the rooms of entities, acting as the appservice's user."""

    def __init__(
        self,
        http: MatrixApi,
        store: Store,
        *,
        server_name: str,
        bot_user_id: str,
        kinds: Sequence[str] = ("entity",),
        concurrency: int = 12,
        metrics: Metrics | None = None,
        controller_ok: Callable[[str], bool] | None = None,
        recipe: Recipe = "lean",
    ) -> None:
        if not kinds or kinds[0] != "entity":
            raise ValueError("the entity room kind must come first")
        self.http = http
        self.store = store
        self.server_name = server_name
        self.bot_user_id = bot_user_id
        self.kinds = tuple(kinds)
        self.metrics = metrics or Metrics()
        #: Is a controller's user id one only this appservice can create (its exclusive
        #: namespace)? A name anyone could register is never invited.
        self.controller_ok = controller_ok or (lambda _uid: True)
        self._calls = asyncio.Semaphore(concurrency)
        self._locks: KeyedLocks[str] = KeyedLocks()
        self._creator_in_power_levels = False
        if recipe not in ("lean", "baseline"):
            raise ValueError(f"unknown recipe {recipe!r}")
        self.recipe: Recipe = recipe

    async def prepare(self) -> None:
        """Learn the homeserver's default room version (rooms < v12 list the creator)."""
        caps = await self._call("GET", "/_matrix/client/v3/capabilities")
        default = str(caps.get("capabilities", {}).get("m.room_versions", {}).get("default", ""))
        self._creator_in_power_levels = default.isdigit() and int(default) < 12

    # -- facts -------------------------------------------------------------------

    def alias(self, did: str, kind: str) -> str:
        return f"#{alias_localpart(did, kind)}:{self.server_name}"

    def check_did(self, value: str) -> str:
        """Validate an entity DID for this server: a DID whose aliases fit Matrix's limit."""
        did = str(check_did(value))
        for kind in (*self.kinds, SPACE):
            if len(self.alias(did, kind)) > MAX_ALIAS_LENGTH:
                raise ValidationError(
                    f"the DID is too long ({len(did)} characters): its room alias would "
                    f"exceed Matrix's {MAX_ALIAS_LENGTH}-character limit"
                )
        return did

    def controller_users(self, facts: EntityFacts) -> tuple[str, ...]:
        users: list[str] = []
        for c in facts.controllers:
            uid = controller_user_id(c, self.server_name)
            if uid is None:
                log.info(
                    "a controller DID has no Matrix user; not inviting it",
                    extra={"entity": facts.did, "controller": c},
                )
            elif not self.controller_ok(uid):
                log.warning(
                    "a controller's user is outside the appservice's exclusive @did- "
                    "namespace, so anyone could own that name; not inviting it (rewrite "
                    "the registration: restart the platform)",
                    extra={"entity": facts.did, "controller": c},
                )
            elif uid != self.bot_user_id and uid not in users:
                users.append(uid)
        return tuple(users)

    def is_controller(self, record: EntityRecord, user_id: str, servers: frozenset[str]) -> bool:
        """Whether ``user_id`` is the Matrix user of one of the entity's controller DIDs, on
        our server or on one of ``servers`` (organisations trusted for ``@did-`` users)."""
        if ":" not in user_id:
            return False
        local, server = user_id[1:].split(":", 1)
        if server != self.server_name and server not in servers:
            return False
        return any(
            controller_user_id(c, server) == user_id
            and (server != self.server_name or self.controller_ok(user_id))
            for c in record.facts.controllers
        ) and bool(local)

    def lookup(self, did: str) -> EntityRecord | None:
        return self.store.get(did)

    def busy(self, did: str) -> bool:
        return self._locks.busy(did)

    # -- ensure ------------------------------------------------------------------

    async def ensure(
        self, facts: EntityFacts, *, recheck: bool = False, space: bool = False
    ) -> tuple[EntityRecord, bool]:
        """The entity's rooms, created if missing; True if this call created them.

        With ``space``, its space too (made once, when first asked for; the chain's
        entities get none until then). With ``recheck``, rooms the store knows are checked
        on the homeserver again (by their aliases) instead of trusted: for when the
        homeserver says an alias is gone.
        """
        did = self.check_did(facts.did)
        space = space or self.recipe == "baseline"
        async with self._locks.hold(did):
            record = self.store.get(did)
            if record is not None and recheck:
                facts = record.facts.merged(facts)
                space = space or record.space is not None
                record = None
            if record is not None:
                merged = record.facts.merged(facts)
                users = self.controller_users(merged)
                if merged != record.facts or not set(users) <= set(record.members):
                    record = await self._update(record, merged, users)
                if space and record.space is None:
                    return await self._add_space(record), False
                return record, False
            for kind in (*self.kinds, SPACE):
                other = self.store.did_for_alias(self.alias(did, kind))
                if other is not None and other != did:
                    raise ValidationError(
                        f"the DIDs {did} and {other} map to the same room alias "
                        f"{self.alias(did, kind)} (IXO's alias scheme turns ':' and '-' alike)"
                    )
            started = time.monotonic()
            record, created = await self._create(facts, space)
            if created:
                self.metrics.entity_seconds.observe(time.monotonic() - started)
            return record, created

    async def _create(self, facts: EntityFacts, with_space: bool) -> tuple[EntityRecord, bool]:
        users = self.controller_users(facts)
        created_any = False
        made = await asyncio.gather(
            *(
                self._room(kind, self._room_body(kind, facts, users), facts, users, None)
                for kind in self.kinds
            )
        )
        rooms: dict[str, RoomRef] = {}
        for kind, (rid, created) in zip(self.kinds, made, strict=True):
            rooms[kind] = RoomRef(rid, self.alias(facts.did, kind))
            created_any |= created
        space: RoomRef | None = None
        if with_space:
            space, created = await self._space(facts, users, rooms)
            created_any |= created
        # Without: a space made earlier (a lost store) stays unknown to the store until
        # someone asks for it; then createRoom finds its alias taken and converges it.
        record = EntityRecord(facts, users, space, rooms)
        self.store.save(record)
        log.info(
            "entity rooms ready",
            extra={
                "entity": facts.did,
                "space": space.room_id if space else None,
                "room": rooms["entity"].room_id,
                "new": created_any,
            },
        )
        return record, created_any

    async def _space(
        self, facts: EntityFacts, users: Sequence[str], rooms: dict[str, RoomRef]
    ) -> tuple[RoomRef, bool]:
        sid, created = await self._room(
            SPACE, self._space_body(facts, users, rooms), facts, users, rooms
        )
        return RoomRef(sid, self.alias(facts.did, SPACE)), created

    async def _add_space(self, record: EntityRecord) -> EntityRecord:
        """The space of an entity whose rooms exist (asked for after the chain made them)."""
        space, _ = await self._space(record.facts, record.members, record.rooms)
        updated = EntityRecord(record.facts, record.members, space, record.rooms)
        self.store.save(updated)
        log.info("entity space ready", extra={"entity": record.did, "space": space.room_id})
        return updated

    async def _room(
        self,
        kind: str,
        body: dict[str, Any],
        facts: EntityFacts,
        users: Sequence[str],
        children: dict[str, RoomRef] | None,
    ) -> tuple[str, bool]:
        alias = self.alias(facts.did, kind)
        body["room_alias_name"] = alias_localpart(facts.did, kind)
        for _attempt in range(3):
            try:
                resp = await self._call("POST", "/_matrix/client/v3/createRoom", body)
                self.metrics.rooms_created.labels(kind).inc()
                return str(resp["room_id"]), True
            except HomeserverError as exc:
                if exc.errcode != "M_ROOM_IN_USE" and exc.status != 409:
                    raise
            room_id = await self._resolve(alias)
            if room_id is None:
                continue  # the alias went away in between: create again
            try:
                await self._converge(room_id, facts, users, children)
            except _Unusable as exc:
                log.warning(
                    "an entity alias points at an unusable room; replacing it",
                    extra={"alias": alias, "room": room_id, "reason": str(exc)},
                )
                await self._call("DELETE", f"/_matrix/client/v3/directory/room/{quote(alias)}")
                continue
            self.metrics.rooms_recovered.labels(kind).inc()
            return room_id, False
        raise HomeserverError(f"could not create or find the room {alias}")

    def _room_body(self, kind: str, facts: EntityFacts, users: Sequence[str]) -> dict[str, Any]:
        power = power_levels(kind, {u: POWER["admin"] for u in users})
        if self._creator_in_power_levels:
            power["users"][self.bot_user_id] = POWER["admin"]
        body: dict[str, Any] = {
            "visibility": "private",
            "preset": "public_chat",
            "name": _name(facts.did, kind),
            "invite": list(users),
            "power_level_content_override": power,
            "initial_state": [
                _state("m.room.join_rules", {"join_rule": "invite"}),
                _state("m.room.encryption", dict(ENCRYPTION)),
                _state(ev.ROOM_INFO, {"kind": kind, "version": 1, "did": facts.did}),
            ],
        }
        if self.recipe == "baseline":
            body["topic"] = KIND_TOPICS.get(kind, KIND_TOPICS["entity"]).format(did=facts.did)
            body["initial_state"].append(_state(ENTITY_EVENT, facts.content()))
        else:
            body["creation_content"] = {ENTITY_EVENT: facts.content()}
        return body

    def _space_body(
        self, facts: EntityFacts, users: Sequence[str], rooms: dict[str, RoomRef]
    ) -> dict[str, Any]:
        admin = POWER["admin"]
        power: dict[str, Any] = {
            "users": {u: admin for u in users},
            "users_default": 0,
            "events_default": admin,
            "state_default": admin,
            "invite": admin,
            "kick": admin,
            "ban": admin,
            "redact": admin,
            "events": {},
        }
        if self._creator_in_power_levels:
            power["users"][self.bot_user_id] = admin
        children = [
            _state(
                "m.space.child",
                {"via": [self.server_name], "suggested": True, "order": f"{i:02d}"},
                ref.room_id,
            )
            for i, ref in enumerate(rooms.values())
        ]
        body: dict[str, Any] = {
            "visibility": "private",
            "preset": "public_chat",
            "name": _name(facts.did, SPACE),
            "topic": KIND_TOPICS[SPACE].format(did=facts.did),
            "creation_content": {"type": "m.space"},
            "invite": list(users),
            "power_level_content_override": power,
            "initial_state": [_state("m.room.join_rules", {"join_rule": "invite"}), *children],
        }
        if self.recipe == "baseline":
            body["initial_state"].insert(1, _state(ENTITY_EVENT, facts.content()))
        else:
            body["creation_content"][ENTITY_EVENT] = facts.content()
        return body

    # -- convergence (rooms found by alias, and updates) ---------------------------

    async def _converge(
        self,
        room_id: str,
        facts: EntityFacts,
        users: Sequence[str],
        children: dict[str, RoomRef] | None,
    ) -> None:
        """Bring a room found by its alias to what it should be (cheap when it already is)."""
        state = await self._state_when_ready(room_id)
        by_key = {(e.get("type"), e.get("state_key")): e.get("content") or {} for e in state}
        recorded = entity_content(by_key)
        owner = (recorded or {}).get("did")
        if owner not in (None, facts.did):
            raise ValidationError(
                f"the room {room_id} belongs to {owner}, not to {facts.did}: the two DIDs map "
                "to the same alias"
            )
        power = dict(by_key.get(("m.room.power_levels", ""), {}))
        pusers = dict(power.get("users") or {})
        missing = [u for u in users if int(pusers.get(u, 0)) < POWER["admin"]]
        if missing:
            pusers.update({u: POWER["admin"] for u in missing})
            power["users"] = pusers
            await self._put_state(room_id, "m.room.power_levels", power)
        for u in users:
            if by_key.get(("m.room.member", u), {}).get("membership") not in ("invite", "join"):
                await self._invite(room_id, u)
        merged = facts
        if owner == facts.did:
            current = recorded or {}
            merged = EntityFacts(
                facts.did,
                facts.type or current.get("type"),
                tuple(dict.fromkeys([*current.get("controllers", []), *facts.controllers])),
                facts.source,
                facts.chain_id,
                facts.height,
                facts.tx_hash,
            )
        if recorded != merged.content():
            await self._put_state(room_id, ENTITY_EVENT, merged.content())
        for i, ref in enumerate((children or {}).values()):
            if ("m.space.child", ref.room_id) not in by_key:
                await self._put_state(
                    room_id,
                    "m.space.child",
                    {"via": [self.server_name], "suggested": True, "order": f"{i:02d}"},
                    ref.room_id,
                )

    async def _update(
        self, record: EntityRecord, facts: EntityFacts, users: Sequence[str]
    ) -> EntityRecord:
        """New facts for an entity with rooms (say, created on request, then seen on chain)."""
        new_users = [u for u in users if u not in record.members]
        for ref in record.refs():
            if new_users:
                path = state_path(ref.room_id, "m.room.power_levels")
                power = await self._call("GET", path)
                power.setdefault("users", {}).update({u: POWER["admin"] for u in new_users})
                await self._call("PUT", path, power)
                for u in new_users:
                    await self._invite(ref.room_id, u)
            if facts != record.facts:
                await self._put_state(ref.room_id, ENTITY_EVENT, facts.content())
        updated = EntityRecord(
            facts, tuple(dict.fromkeys([*record.members, *users])), record.space, record.rooms
        )
        self.store.save(updated)
        self.metrics.entities_updated.inc()
        log.info("entity rooms updated", extra={"entity": facts.did, "new_members": len(new_users)})
        return updated

    # -- members -----------------------------------------------------------------

    async def add_member(
        self, record: EntityRecord, user_id: str, *, join: bool, power: int = 0
    ) -> None:
        """Invite ``user_id`` to the entity's space and rooms; with ``join``, join them too
        (only users in the appservice's namespace, whom the bot can act as); with
        ``power``, raise theirs to it in the data rooms (never lowers it)."""
        if join:
            await self.ensure_user(user_id)
        for ref in record.refs():
            if power > 0 and ref is not record.space:
                path = f"/_matrix/client/v3/rooms/{quote(ref.room_id)}/state/m.room.power_levels/"
                levels = await self._call("GET", path)
                users = levels.setdefault("users", {})
                if int(users.get(user_id, levels.get("users_default", 0))) < power:
                    users[user_id] = power
                    await self._call("PUT", path, levels)
            membership = await self._membership(ref.room_id, user_id)
            if membership not in ("invite", "join"):
                await self._invite(ref.room_id, user_id)
            if join and membership != "join":
                await self._call(
                    "POST", f"/_matrix/client/v3/join/{quote(ref.room_id)}", {}, as_user=user_id
                )

    async def ensure_user(self, user_id: str) -> None:
        """Register a user of the appservice's namespace (idempotent)."""
        localpart = user_id[1:].split(":", 1)[0]
        try:
            await self._call(
                "POST",
                "/_matrix/client/v3/register",
                {
                    "type": "m.login.application_service",
                    "username": localpart,
                    "inhibit_login": True,
                },
            )
        except HomeserverError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise

    # -- Matrix calls --------------------------------------------------------------

    async def _call(
        self, method: str, path: str, body: Any = None, *, as_user: str | None = None
    ) -> Any:
        params = {"user_id": as_user} if as_user else None
        async with self._calls:
            return await self.http.request(method, path, json=body, params=params)

    async def _resolve(self, alias: str) -> str | None:
        try:
            resp = await self._call("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")
        except HomeserverError as exc:
            if exc.errcode == "M_NOT_FOUND" or exc.status == 404:
                return None
            raise
        return str(resp["room_id"])

    async def _state_when_ready(self, room_id: str) -> list[dict[str, Any]]:
        """The room's state; waits while a creation that claimed the alias is finishing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT_S
        delay = 0.2
        while True:
            try:
                state = await self._call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state")
                return list(state)
            except HomeserverError as exc:
                if exc.status not in (403, 404):
                    raise
                if loop.time() > deadline:
                    raise _Unusable(f"the bot cannot read the room: {exc.message}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _put_state(
        self, room_id: str, etype: str, content: dict[str, Any], key: str = ""
    ) -> None:
        await self._call(
            "PUT",
            state_path(room_id, etype, key),
            content,
        )

    async def _invite(self, room_id: str, user_id: str) -> None:
        try:
            await self._call(
                "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": user_id}
            )
        except HomeserverError as exc:
            # Already invited or joined: fine (idempotent).
            if not (exc.status == 403 and "already" in exc.message.lower()):
                raise

    async def _membership(self, room_id: str, user_id: str) -> str | None:
        try:
            content = await self._call(
                "GET",
                state_path(room_id, "m.room.member", user_id),
            )
        except HomeserverError as exc:
            if exc.status == 404:
                return None
            raise
        membership = content.get("membership") if isinstance(content, dict) else None
        return str(membership) if membership else None
