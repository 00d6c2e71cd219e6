"""Capabilities: what an agent may do, decided before anything reaches the homeserver.

Pure: no I/O, no Matrix. An agent has

- an **access level**, ``read`` or ``write``: every tool needs one of them;
- an optional **tool allow-list** (default: every tool its access level permits);
- a **room scope**: explicit room ids or aliases (``"*"`` = every room the agent
  is in), data-room kinds, and entity DIDs; a room is in scope if any of them
  matches;
- an optional **files directory**: the only place it may upload from or save to.

A refusal is a :class:`CapabilityDenied` that names the missing capability, for
example ``access:write``, ``tool:send_message``, ``room:!abc:example.org``,
``room_kind:project`` or ``files_dir``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from datarooms.errors import AccessDeniedError
from datarooms.ids import entity_alias_localpart

Access = Literal["read", "write"]
ACCESS_LEVELS: tuple[Access, ...] = ("read", "write")
ANY_ROOM = "*"


@dataclass(frozen=True)
class ToolSpec:
    """What calling a tool needs: an access level; ``room``: it acts on one room;
    ``explicit``: only when the agent's ``tools`` list names it (never by default)."""

    access: Access
    room: bool = True
    explicit: bool = False


#: Every tool the MCP server offers, with what it needs. The server registers
#: exactly these (a test keeps the two equal).
TOOLS: dict[str, ToolSpec] = {
    # rooms and membership
    "list_rooms": ToolSpec("read", room=False),
    "room_info": ToolSpec("read"),
    "room_members": ToolSpec("read"),
    "join_room": ToolSpec("read"),
    "leave_room": ToolSpec("read"),
    "create_room": ToolSpec("write", room=False),
    "create_data_room": ToolSpec("write", room=False),
    "invite_user": ToolSpec("write"),
    # messages
    "read_messages": ToolSpec("read"),
    "read_thread": ToolSpec("read"),
    "wait_for_messages": ToolSpec("read", room=False),
    "send_message": ToolSpec("write"),
    "reply": ToolSpec("write"),
    "react": ToolSpec("write"),
    "edit_message": ToolSpec("write"),
    "redact_event": ToolSpec("write"),
    # records
    "put_record": ToolSpec("write"),
    "get_record": ToolSpec("read"),
    "get_twin": ToolSpec("read"),
    "record_history": ToolSpec("read"),
    # files
    "upload_file": ToolSpec("write"),
    "download_file": ToolSpec("read"),
    # keyed room state (IXO's ixo.room.state)
    "get_state": ToolSpec("read"),
    "set_state": ToolSpec("write"),
    # telemetry (end-to-end encrypted time series)
    "telemetry_series": ToolSpec("read"),
    "query_telemetry": ToolSpec("read"),
    "aggregate_telemetry": ToolSpec("read"),
    "append_telemetry": ToolSpec("write"),
    # claims (signed, content-addressed evidence): reading and checking is read access;
    # issuing signs with the account's issuer key, so it must be granted by name.
    "list_claims": ToolSpec("read"),
    "verify_claim": ToolSpec("read"),
    "issue_claim": ToolSpec("write", explicit=True),
    # collaborative documents (CRDT, IXO matrix-crdt format)
    "read_document": ToolSpec("read"),
    "edit_document": ToolSpec("write"),
    # alerts (automation): reading is read access; acknowledging, silencing and making
    # rules change what people are told, so each must be granted by name.
    "list_alerts": ToolSpec("read"),
    "read_alert": ToolSpec("read"),
    "ack_alert": ToolSpec("write", explicit=True),
    "silence_alert": ToolSpec("write", explicit=True),
    "create_alert_rule": ToolSpec("write", explicit=True),
}


class CapabilityDenied(AccessDeniedError):
    """A call outside the agent's capabilities. Raised before any homeserver request."""

    errcode = "DR_CAPABILITY"

    def __init__(self, agent: str, capability: str, reason: str) -> None:
        super().__init__(f"agent {agent!r} lacks the capability {capability}: {reason}")
        self.agent = agent
        self.capability = capability
        self.reason = reason


@dataclass(frozen=True)
class RoomFacts:
    """What this device knows locally about a room (nothing is fetched to decide)."""

    room_id: str
    aliases: frozenset[str] = frozenset()
    kind: str | None = None
    did: str | None = None


@dataclass(frozen=True)
class AgentPolicy:
    name: str
    access: Access
    rooms: frozenset[str] = frozenset()
    room_kinds: frozenset[str] = frozenset()
    dids: frozenset[str] = frozenset()
    #: None: every tool the access level permits.
    tools: frozenset[str] | None = None
    files_dir: Path | None = None
    token_sha256: str | None = None
    description: str = ""
    #: Alias -> room id for the aliases in ``rooms`` (filled in by the runtime).
    resolved: Mapping[str, str] = field(default_factory=dict)

    # -- tools ----------------------------------------------------------------

    def tool_allowed(self, tool: str) -> bool:
        spec = TOOLS.get(tool)
        if spec is None:
            return False
        if spec.access == "write" and self.access != "write":
            return False
        if spec.explicit:
            return self.tools is not None and tool in self.tools
        return self.tools is None or tool in self.tools

    def check_tool(self, tool: str) -> None:
        spec = TOOLS.get(tool)
        if spec is None:  # the server reports unknown tools itself
            return
        if spec.access == "write" and self.access != "write":
            raise CapabilityDenied(
                self.name,
                "access:write",
                f"{tool} writes, and this agent has read access only",
            )
        if spec.explicit and (self.tools is None or tool not in self.tools):
            raise CapabilityDenied(
                self.name,
                f"tool:{tool}",
                f"{tool} must be granted explicitly: add it to the agent's tools list",
            )
        if self.tools is not None and tool not in self.tools:
            raise CapabilityDenied(
                self.name,
                f"tool:{tool}",
                f"{tool} is not in the agent's tools list ({', '.join(sorted(self.tools))})",
            )

    # -- rooms ----------------------------------------------------------------

    @property
    def any_room(self) -> bool:
        return ANY_ROOM in self.rooms

    def explicit_room_ids(self) -> set[str]:
        ids = {r for r in self.rooms if r.startswith("!")}
        ids.update(self.resolved.get(a, "") for a in self.rooms if a.startswith("#"))
        ids.discard("")
        return ids

    def unresolved_aliases(self) -> list[str]:
        return sorted(a for a in self.rooms if a.startswith("#") and a not in self.resolved)

    def room_allowed(self, facts: RoomFacts) -> bool:
        if self.any_room or facts.room_id in self.explicit_room_ids():
            return True
        if self.rooms & facts.aliases:
            return True
        if facts.kind and facts.kind in self.room_kinds:
            return True
        return bool(facts.did and facts.did in self.dids)

    def check_room(self, facts: RoomFacts) -> None:
        if not self.room_allowed(facts):
            raise CapabilityDenied(self.name, f"room:{facts.room_id}", self._scope_text(facts))

    def alias_allowed(self, alias: str, local_server: str | None = None) -> bool:
        """An alias the policy names, or the IXO entity alias of one of its DIDs on
        ``local_server`` (the agent's homeserver, where the rooms bot owns those aliases:
        on any other server anyone could claim one)."""
        if self.any_room or alias in self.rooms:
            return True
        return self.did_alias(alias, local_server)

    def did_alias(self, alias: str, local_server: str | None) -> bool:
        """Is ``alias`` the IXO entity alias of one of the policy's DIDs, on ``local_server``?"""
        localpart, _, server = alias[1:].partition(":")
        if local_server is None or server != local_server:
            return False
        return any(entity_alias_localpart(d) == localpart for d in self.dids)

    def check_new_room(self, kind: str, did: str | None) -> None:
        """May the agent create a room of ``kind`` (for ``did``)? It must land in scope."""
        if self.any_room or kind in self.room_kinds or (did and did in self.dids):
            return
        raise CapabilityDenied(
            self.name,
            f"room_kind:{kind}",
            f"a new {kind} room would be outside its rooms "
            f'({self._scope_summary()}); add the kind to room_kinds, or rooms = ["*"]',
        )

    def _scope_summary(self) -> str:
        parts = []
        if self.rooms:
            parts.append("rooms " + ", ".join(sorted(self.rooms)))
        if self.room_kinds:
            parts.append("kinds " + ", ".join(sorted(self.room_kinds)))
        if self.dids:
            parts.append("DIDs " + ", ".join(sorted(self.dids)))
        return "; ".join(parts) or "no rooms at all"

    def _scope_text(self, facts: RoomFacts) -> str:
        what = facts.room_id
        if facts.kind:
            what += f" (a {facts.kind} room" + (f" of {facts.did}" if facts.did else "") + ")"
        return f"{what} is not within its rooms ({self._scope_summary()})"

    # -- files ----------------------------------------------------------------

    def file_path(self, relative: str, *, purpose: str) -> Path:
        """Resolve ``relative`` inside the files directory, or refuse."""
        if self.files_dir is None:
            raise CapabilityDenied(
                self.name,
                "files_dir",
                f"{purpose} needs a files directory, and none is configured for this agent",
            )
        base = self.files_dir.resolve()
        if "\x00" in relative or not relative.strip():
            raise CapabilityDenied(self.name, "files_dir", f"invalid path {relative!r}")
        candidate = Path(relative)
        target = (candidate if candidate.is_absolute() else base / candidate).resolve()
        if target != base and not target.is_relative_to(base):
            raise CapabilityDenied(
                self.name,
                "files_dir",
                f"{relative!r} is outside the agent's files directory {base}",
            )
        return target


def tools_for(policy: AgentPolicy, names: Iterable[str]) -> list[str]:
    """The subset of ``names`` the agent may call (what tools/list shows it)."""
    return [n for n in names if policy.tool_allowed(n)]


__all__ = [
    "ACCESS_LEVELS",
    "ANY_ROOM",
    "TOOLS",
    "Access",
    "AgentPolicy",
    "CapabilityDenied",
    "RoomFacts",
    "ToolSpec",
    "tools_for",
]


@dataclass(frozen=True)
class Narrowing:
    """What one UCAN-authenticated request may do, as its invocation states it (and the
    policies of its chain vouch): at most ``access``, only ``rooms``, only ``tools``.
    ``None``: as the agent's policy says."""

    access: Access | None = None
    rooms: frozenset[str] | None = None
    tools: frozenset[str] | None = None

    def apply(self, policy: AgentPolicy) -> AgentPolicy:
        """``policy`` narrowed by this; never wider than ``policy``."""
        access: Access = "read" if self.access == "read" else policy.access
        rooms, kinds, dids = policy.rooms, policy.room_kinds, policy.dids
        if self.rooms is not None:
            rooms = self.rooms if policy.any_room else policy.rooms & self.rooms
            kinds, dids = frozenset(), frozenset()  # only the rooms it names
        tools = policy.tools
        if self.tools is not None:
            tools = self.tools if tools is None else tools & self.tools
        return replace(policy, access=access, rooms=rooms, room_kinds=kinds, dids=dids, tools=tools)


#: The narrowing of the request being served (set per tool call; see server.py).
REQUEST_NARROWING: contextvars.ContextVar[Narrowing | None] = contextvars.ContextVar(
    "datarooms_mcp_narrowing", default=None
)
