"""The MCP tools: thin over the SDK (``client.rooms``, ``.records``, ``.state``, ``.files``,
``.messages``, ``.telemetry``, ``.claims``, ``.docs``, automation's alerts), one module per feature.

Every tool is a method of :class:`AgentTools`; its name is the method's name,
its description the docstring, its JSON Schema the signature. The server registers
them in the order of :data:`datarooms.services.mcp.policy.TOOLS` and checks the tool
capability (access level, allow-list) before a tool runs; each tool checks its room
(:meth:`AgentRuntime.room`) before its first SDK call.
"""

from __future__ import annotations

from datarooms.services.mcp.tools._common import _DESTRUCTIVE, _READ, _WRITE, ANNOTATIONS
from datarooms.services.mcp.tools.alerts import AlertTools
from datarooms.services.mcp.tools.claims import ClaimTools
from datarooms.services.mcp.tools.documents import DocumentTools
from datarooms.services.mcp.tools.files import FileTools, file_uri
from datarooms.services.mcp.tools.messages import MessageTools
from datarooms.services.mcp.tools.records import RecordTools
from datarooms.services.mcp.tools.rooms import RoomTools
from datarooms.services.mcp.tools.state import StateTools
from datarooms.services.mcp.tools.telemetry import (
    MAX_TELEMETRY_BUCKETS,
    MAX_TELEMETRY_SAMPLES,
    TelemetrySampleArg,
    TelemetryTools,
    parse_step,
)


class AgentTools(
    RoomTools,
    MessageTools,
    RecordTools,
    FileTools,
    StateTools,
    TelemetryTools,
    ClaimTools,
    DocumentTools,
    AlertTools,
):
    """The tools one agent calls; ``rt`` holds its device and policy."""


__all__ = [
    "ANNOTATIONS",
    "MAX_TELEMETRY_BUCKETS",
    "MAX_TELEMETRY_SAMPLES",
    "_DESTRUCTIVE",
    "_READ",
    "_WRITE",
    "AgentTools",
    "TelemetrySampleArg",
    "file_uri",
    "parse_step",
]
