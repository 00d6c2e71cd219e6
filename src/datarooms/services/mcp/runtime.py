"""One agent at work: its device (a DataroomsClient), its policy, and the checks
that run before any of its calls reaches the homeserver.

Room arguments are resolved and checked here from what the device already
knows (its local index and the SDK's room list). An alias the policy does not
name and the device does not know is refused without asking the homeserver.

A room's kind and DID (``io.datarooms.room``) and its canonical alias are state
that whoever created the room chose. They count for the scope only when a
*trusted sender* wrote them: the agent itself, the platform's accounts (the
service account, the rooms bot, the state bot) and the ``[mcp] operators``; and
an alias only on the agent's own homeserver, from a sender on it (whose server
checked that the alias points at the room). Anything else is a room of unknown
kind: out of scope unless the policy lists it by id or by a resolved alias.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from datarooms import events as ev
from datarooms.config import Settings
from datarooms.errors import DataroomsError, NotFoundError, ValidationError
from datarooms.ids import room_id as check_room_id
from datarooms.ids import server_of
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.timeline import RoomEvent
from datarooms.services.mcp import audit
from datarooms.services.mcp.config import AgentsConfig, ConfigWatcher, McpSettings
from datarooms.services.mcp.policy import (
    REQUEST_NARROWING,
    AgentPolicy,
    CapabilityDenied,
    RoomFacts,
)

log = logging.getLogger(__name__)

#: How many live events an agent's buffer keeps for wait_for_messages.
EVENT_BUFFER = 1000
_ALIAS_RETRY_S = 30.0


def platform_senders(settings: Settings, server_name: str, *extra: str) -> frozenset[str]:
    """The platform's own accounts on ``server_name``: the rooms bot, the state bot,
    the service account (``extra``: more of them, e.g. the service account's real id),
    and the rooms bot's operators (``[roomsbot] operators``)."""
    localparts = (settings.roomsbot.sender_localpart, settings.statebot.localpart, "datarooms")
    return frozenset(
        {
            *(f"@{lp}:{server_name}" for lp in localparts),
            *settings.roomsbot.operator_ids,
            *extra,
        }
    )


@dataclass(frozen=True)
class BufferedEvent:
    seq: int
    event: RoomEvent


class AgentRuntime:
    """An agent's device and capabilities, shared by all its MCP sessions."""

    def __init__(
        self,
        client: DataroomsClient,
        policy: AgentPolicy,
        settings: McpSettings,
        *,
        transport: str,
        trusted_senders: Iterable[str] = (),
    ) -> None:
        self.client = client
        self._policy = policy
        self.settings = settings
        self.transport = transport
        #: The agent's homeserver: the only one whose aliases the room facts trust.
        self.server_name = server_of(client.user_id)
        #: Whose io.datarooms.room and canonical alias count (with [mcp] operators).
        self.platform_senders = frozenset({client.user_id, *trusted_senders})
        self._events: deque[BufferedEvent] = deque(maxlen=EVENT_BUFFER)
        self._seq = 0
        self._arrived = asyncio.Condition()
        self._pump: asyncio.Task[None] | None = None
        self._alias_tried = 0.0
        self._epoch = secrets.token_hex(4)
        #: Re-reads agents.toml so policy changes and removals apply without a restart.
        self.watcher: ConfigWatcher | None = None
        self.removed = False

    @property
    def policy(self) -> AgentPolicy:
        """The agent's policy, narrowed by the UCAN of the request being served, if any."""
        narrowing = REQUEST_NARROWING.get()
        return self._policy if narrowing is None else narrowing.apply(self._policy)

    @policy.setter
    def policy(self, policy: AgentPolicy) -> None:
        self._policy = policy

    @property
    def name(self) -> str:
        return self._policy.name

    @property
    def user_id(self) -> str:
        return self.client.user_id

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the policy's aliases and start following live events (and the sync loop)."""
        await self.resolve_policy_aliases()
        if self._pump is None:
            self._pump = asyncio.create_task(self._follow(), name=f"mcp-agent-{self.name}")

    async def stop(self) -> None:
        task, self._pump = self._pump, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def refresh(self) -> None:
        """Pick up a changed agents.toml (cheap: a stat at most once a second)."""
        if self.watcher is not None:
            self.watcher.current()

    def apply_config(self, config: AgentsConfig) -> None:
        self.settings = config.mcp
        policy = config.agents.get(self.name)
        self.removed = policy is None
        if policy is not None:
            self.set_policy(policy)

    def check_active(self) -> None:
        if self.removed:
            raise CapabilityDenied(self.name, "agent", "the agent was removed from agents.toml")

    def set_policy(self, policy: AgentPolicy) -> None:
        """Swap in a changed policy (keeps resolved aliases that are still named)."""
        kept = {a: r for a, r in self._policy.resolved.items() if a in policy.rooms}
        self._policy = replace(policy, resolved=kept)

    async def resolve_policy_aliases(self) -> None:
        """Look up the room ids of the aliases the operator's policy names.

        These are the operator's own lookups (room directory reads), made at start
        and at most every 30 s while some alias is unknown; an agent's arguments never
        trigger one.
        """
        pending = self._policy.unresolved_aliases()
        if not pending:
            return
        self._alias_tried = time.monotonic()
        found = dict(self._policy.resolved)
        for alias in pending:
            try:
                found[alias] = await self.client.rooms.resolve(alias)
            except DataroomsError as exc:
                log.info(
                    "policy alias not resolved yet",
                    extra={"agent": self.name, "alias": alias, "error": exc.errcode},
                )
        self._policy = replace(self._policy, resolved=found)

    # -- rooms -----------------------------------------------------------------

    def trusted(self, sender: str | None) -> bool:
        """May ``sender``'s word on a room's kind, DID and alias count for the scope?"""
        return sender is not None and (
            sender in self.platform_senders or sender in self.settings.operators
        )

    def facts(self, room_id: str) -> RoomFacts:
        """What the scope may go by: kind, DID and aliases only from trusted senders."""
        idx = self.client.index
        aliases: set[str] = set()
        canonical = idx.state(room_id, "m.room.canonical_alias") or {}
        alias_sender = idx.state_sender(room_id, "m.room.canonical_alias")
        if alias_sender is not None and server_of(alias_sender) == self.server_name:
            # The agent's own server checked that these point at the room (a remote
            # server's word on an alias is not checked by anyone here).
            named = [canonical.get("alias")]
            alt = canonical.get("alt_aliases")
            if isinstance(alt, list):
                named.extend(alt)
            aliases.update(
                a
                for a in named
                if isinstance(a, str) and ":" in a and server_of(a) == self.server_name
            )
        kind = did = None
        if self.trusted(idx.state_sender(room_id, ev.ROOM_INFO)):
            info = idx.state(room_id, ev.ROOM_INFO) or {}
            kind, did = info.get("kind"), info.get("did")
        return RoomFacts(
            room_id,
            frozenset(aliases),
            kind if isinstance(kind, str) else None,
            did if isinstance(did, str) else None,
        )

    async def facts_after_join(self, room_id: str, timeout: float = 5.0) -> RoomFacts:
        """A just-joined room's facts, once its room info state has reached this device."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.client.index.state(room_id, ev.ROOM_INFO) is None and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await self.client.wait_for_sync(timeout=min(1.0, deadline - loop.time()))
        return self.facts(room_id)

    def local_alias(self, alias: str) -> str | None:
        """The room id of an alias, from what this device knows (no homeserver call)."""
        if alias in self.policy.resolved:
            return str(self.policy.resolved[alias])
        for rid in self.client.rooms.joined_ids():
            if alias in self.facts(rid).aliases:
                return str(rid)
        return None

    async def room_id_of(self, room: str) -> str:
        """A room id for the agent's room argument (id or alias), checked against the policy."""
        if not isinstance(room, str) or not room.startswith(("!", "#")):
            raise ValidationError(
                f"room must be a room id (!opaque:server) or an alias (#name:server), got {room!r}"
            )
        if room.startswith("!"):
            rid: str = check_room_id(room)
            audit.note_room(rid)
            if (
                not self.policy.room_allowed(self.facts(rid))
                and self.policy.unresolved_aliases()
                and time.monotonic() - self._alias_tried > _ALIAS_RETRY_S
            ):
                await self.resolve_policy_aliases()
            return rid
        rid_or_none = self.local_alias(room)
        if rid_or_none is not None:
            audit.note_room(rid_or_none)
            return rid_or_none
        audit.note_room(room)
        if not self.policy.alias_allowed(room, self.server_name):
            raise CapabilityDenied(
                self.name,
                f"room:{room}",
                f"{room} is not one of its rooms, and no room it is in has that alias",
            )
        rid = await self.client.rooms.resolve(room)
        audit.note_room(rid)
        return rid

    async def room(self, room: str, *, sends: bool = False) -> str:
        """Resolve, check the policy, and require membership. Returns the room id.

        ``sends``: the call sends timeline events, which must be end-to-end encrypted.
        """
        rid = await self.room_id_of(room)
        self.policy.check_room(self.facts(rid))
        if not self.client.rooms.is_joined(rid):
            hint = (
                "it is invited: call join_room first"
                if self.client.rooms.is_invited(rid)
                else "ask a room admin to grant it access, then call join_room"
            )
            raise NotFoundError(
                f"agent {self.name!r} ({self.user_id}) is not in room {rid}; {hint}"
            )
        if sends:
            await self.until_encrypted(rid)
        return rid

    async def until_encrypted(self, room_id: str) -> None:
        """Refuse to go on unless the room is end-to-end encrypted: an agent never sends
        cleartext timeline events. The SDK's one guard (``rooms.require_encrypted``): right
        after a room is created or joined, sync may not have delivered its
        ``m.room.encryption`` yet, so the homeserver is asked before a "no"."""
        await self.client.rooms.require_encrypted(room_id)

    def rooms_in_scope(self) -> list[str]:
        return [
            rid
            for rid in self.client.rooms.joined_ids()
            if self.policy.room_allowed(self.facts(rid))
        ]

    # -- live events -------------------------------------------------------------

    def cursor(self, seq: int | None = None) -> str:
        """An opaque position in the agent's live events (valid while this server runs)."""
        return f"{self._epoch}.{self._seq if seq is None else seq}"

    def parse_cursor(self, cursor: str | None) -> tuple[int, bool]:
        """The sequence number after which to return events; True if the cursor is from an
        earlier run of the server (events in between cannot be replayed)."""
        if cursor is None:
            return self._seq, False
        epoch, _, seq = cursor.partition(".")
        if not seq.isdigit():
            raise ValidationError(
                f"invalid cursor {cursor!r}: pass back a cursor this tool returned"
            )
        if epoch != self._epoch:
            return self._seq, True
        return int(seq), False

    async def _follow(self) -> None:
        try:
            async for event in self.client.subscribe(None):
                async with self._arrived:
                    self._seq += 1
                    self._events.append(BufferedEvent(self._seq, event))
                    self._arrived.notify_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following live events stopped", extra={"agent": self.name})

    async def wait_events(
        self,
        after: int,
        room_id: str | None,
        timeout: float,
        *,
        include_own: bool,
        limit: int = 100,
    ) -> tuple[list[BufferedEvent], int, bool]:
        """Up to ``limit`` events after sequence number ``after`` (in scope, of ``room_id``
        if given), waiting up to ``timeout`` seconds for the first. Returns them, the
        sequence number to continue after, and whether older events were already dropped
        from the buffer (a gap)."""

        def matching() -> list[BufferedEvent]:
            out = []
            for b in self._events:
                e = b.event
                if b.seq <= after or (room_id is not None and e.room_id != room_id):
                    continue
                if not include_own and e.sender == self.user_id:
                    continue
                if e.state_key is not None:
                    continue
                if not self.policy.room_allowed(self.facts(e.room_id)):
                    continue
                out.append(b)
            return out

        async with self._arrived:
            gap = bool(self._events) and self._events[0].seq > after + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait_for(lambda: bool(matching())), timeout)
            found = matching()
            if len(found) > limit:
                found = found[:limit]
                return found, found[-1].seq, gap
            return found, self._seq, gap
