"""What every tool module shares: argument types, annotations, the base class."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.types import ToolAnnotations
from pydantic import Field

from datarooms import events as ev
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.rooms import DataRoom
from datarooms.services.mcp.runtime import AgentRuntime

RoomArg = Annotated[
    str,
    Field(description="Room id (!opaque:server) or alias (#name:server), as list_rooms shows"),
]
EventArg = Annotated[str, Field(description="Event id ($...), as read_messages shows")]
TimeArg = Annotated[
    str | int | None,
    Field(description="ISO 8601 time (e.g. 2025-05-01T12:00:00Z) or milliseconds since the epoch"),
]
KeyArg = Annotated[
    str,
    Field(description="Record key, e.g. 'temperature'", min_length=1, max_length=ev.MAX_KEY_LENGTH),
]
TextArg = Annotated[str, Field(description="Message text", min_length=1)]
MetricArg = Annotated[
    str,
    Field(
        description="Metric name, e.g. 'temperature' (telemetry_series lists a room's metrics)",
        min_length=1,
        max_length=255,
    ),
]
TagsArg = Annotated[
    dict[str, str] | None,
    Field(description='Only series whose tags include all of these, e.g. {"site": "a"}'),
]


_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
ANNOTATIONS: dict[str, ToolAnnotations] = {
    "leave_room": _DESTRUCTIVE,
    "redact_event": _DESTRUCTIVE,
    "set_state": _DESTRUCTIVE,
    "join_room": ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    ),
}


def room_json(r: DataRoom, rt: AgentRuntime) -> dict[str, Any]:
    details = rt.client.rooms.details(r.room_id)
    out: dict[str, Any] = {"room_id": r.room_id, "name": r.name, "kind": r.kind or None}
    if r.alias:
        out["alias"] = r.alias
    if r.did:
        out["did"] = r.did
    # The scope goes by kind and DID from trusted senders only (runtime.facts): say so
    # when the room's claim is someone else's, so the model does not take it as fact.
    facts = rt.facts(r.room_id)
    if (r.kind and r.kind != facts.kind) or (r.did and r.did != facts.did):
        out["unverified"] = "kind and DID were set by a sender this agent does not trust"
    if r.purpose:
        out["purpose"] = r.purpose
    if details is not None:
        out["encrypted"] = details.encrypted
        out["members"] = details.joined_count
    return out


class ToolBase:
    """``rt`` holds the agent's device and policy."""

    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt

    @property
    def _c(self) -> DataroomsClient:
        return self.rt.client
