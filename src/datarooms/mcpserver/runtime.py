"""One agent at work: its device (a DataroomsClient), its policy, and the checks
that run before any of its calls reaches the homeserver.

Room arguments are resolved and checked here from what the device already
knows (its local index and nio's room list). An alias the policy does not
name and the device does not know is refused without asking the homeserver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, replace

from datarooms import events as ev
from datarooms.client import DataroomsClient
from datarooms.errors import DataroomsError, NotFoundError, ValidationError
from datarooms.ids import room_id as check_room_id
from datarooms.mcpserver import audit
from datarooms.mcpserver.config import AgentsConfig, ConfigWatcher, McpSettings
from datarooms.mcpserver.policy import AgentPolicy, CapabilityDenied, RoomFacts
from datarooms.timeline import RoomEvent

log = logging.getLogger(__name__)

#: How many live events an agent's buffer keeps for wait_for_messages.
EVENT_BUFFER = 1000
_ALIAS_RETRY_S = 30.0


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
    ) -> None:
        self.client = client
        self.policy = policy
        self.settings = settings
        self.transport = transport
        self._events: deque[BufferedEvent] = deque(maxlen=EVENT_BUFFER)
        self._seq = 0
        self._arrived = asyncio.Condition()
        self._pump: asyncio.Task[None] | None = None
        self._alias_tried = 0.0
        #: Re-reads agents.toml so policy changes and removals apply without a restart.
        self.watcher: ConfigWatcher | None = None
        self.removed = False

    @property
    def name(self) -> str:
        return self.policy.name

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
        policy = config.agents.get(self.name)
        self.removed = policy is None
        if policy is not None:
            self.set_policy(policy)

    def check_active(self) -> None:
        if self.removed:
            raise CapabilityDenied(self.name, "agent", "the agent was removed from agents.toml")

    def set_policy(self, policy: AgentPolicy) -> None:
        """Swap in a changed policy (keeps resolved aliases that are still named)."""
        kept = {a: r for a, r in self.policy.resolved.items() if a in policy.rooms}
        self.policy = replace(policy, resolved=kept)

    async def resolve_policy_aliases(self) -> None:
        """Look up the room ids of the aliases the operator's policy names.

        These are the operator's own lookups (room directory reads), made at start
        and at most every 30 s while some alias is unknown; an agent's arguments never
        trigger one.
        """
        pending = self.policy.unresolved_aliases()
        if not pending:
            return
        self._alias_tried = time.monotonic()
        found = dict(self.policy.resolved)
        for alias in pending:
            try:
                found[alias] = await self.client.rooms.resolve(alias)
            except DataroomsError as exc:
                log.info("policy alias not resolved yet",
                         extra={"agent": self.name, "alias": alias, "error": exc.errcode})
        self.policy = replace(self.policy, resolved=found)

    # -- rooms -----------------------------------------------------------------

    def facts(self, room_id: str) -> RoomFacts:
        idx = self.client.index
        info = idx.state(room_id, ev.ROOM_INFO) or {}
        aliases: set[str] = set()
        canonical = idx.state(room_id, "m.room.canonical_alias") or {}
        if isinstance(canonical.get("alias"), str):
            aliases.add(canonical["alias"])
        alt = canonical.get("alt_aliases")
        if isinstance(alt, list):
            aliases.update(a for a in alt if isinstance(a, str))
        room = self.client.nio.rooms.get(room_id)
        if room is not None and room.canonical_alias:
            aliases.add(room.canonical_alias)
        kind, did = info.get("kind"), info.get("did")
        return RoomFacts(
            room_id,
            frozenset(aliases),
            kind if isinstance(kind, str) else None,
            did if isinstance(did, str) else None,
        )

    def local_alias(self, alias: str) -> str | None:
        """The room id of an alias, from what this device knows (no homeserver call)."""
        if alias in self.policy.resolved:
            return str(self.policy.resolved[alias])
        for rid in self.client.nio.rooms:
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
            if not self.policy.room_allowed(self.facts(rid)) and self.policy.unresolved_aliases() \
                    and time.monotonic() - self._alias_tried > _ALIAS_RETRY_S:
                await self.resolve_policy_aliases()
            return rid
        rid_or_none = self.local_alias(room)
        if rid_or_none is not None:
            audit.note_room(rid_or_none)
            return rid_or_none
        audit.note_room(room)
        if not self.policy.alias_allowed(room):
            raise CapabilityDenied(
                self.name, f"room:{room}",
                f"{room} is not one of its rooms, and no room it is in has that alias",
            )
        rid = await self.client.rooms.resolve(room)
        audit.note_room(rid)
        return rid

    async def room(self, room: str) -> str:
        """Resolve, check the policy, and require membership. Returns the room id."""
        rid = await self.room_id_of(room)
        self.policy.check_room(self.facts(rid))
        if rid not in self.client.nio.rooms:
            hint = (
                "it is invited: call join_room first"
                if rid in self.client.nio.invited_rooms
                else "ask a room admin to grant it access, then call join_room"
            )
            raise NotFoundError(
                f"agent {self.name!r} ({self.user_id}) is not in room {rid}; {hint}"
            )
        return rid

    def rooms_in_scope(self) -> list[str]:
        return [rid for rid in self.client.nio.rooms if self.policy.room_allowed(self.facts(rid))]

    # -- live events -------------------------------------------------------------

    @property
    def cursor(self) -> int:
        return self._seq

    async def _follow(self) -> None:
        async for event in self.client.subscribe(None):
            async with self._arrived:
                self._seq += 1
                self._events.append(BufferedEvent(self._seq, event))
                self._arrived.notify_all()

    async def wait_events(
        self, after: int, room_id: str | None, timeout: float, *, include_own: bool
    ) -> tuple[list[BufferedEvent], int]:
        """Events after cursor ``after`` (in scope, of ``room_id`` if given), waiting up to
        ``timeout`` seconds for the first. Returns them and the new cursor."""

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait_for(lambda: bool(matching())), timeout)
            found = matching()
            return found, self._seq
