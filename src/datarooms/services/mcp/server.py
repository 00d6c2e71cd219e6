"""The MCP server of one agent: the official SDK's ``MCPServer`` with our tools,
resources, capability gate and audit trail.

One server object per agent: it holds only that agent's device, so a session
of one agent can never act as another. Over HTTP, the bearer token picks the
agent's server (see :mod:`datarooms.services.mcp.http`); over stdio there is one.

Every tools/call and resources/read passes through :meth:`AgentServer.call_tool`
/ :meth:`AgentServer.read_resource`, which

1. open an audit record (who, which tool; the tool adds the room);
2. refuse a tool outside the agent's access level or allow-list before the
   arguments are even read;
3. turn our errors into tool errors with their code (``DR_CAPABILITY: agent
   'x' lacks the capability room:!abc:server: ...``), and bad arguments into
   one readable line;
4. write the audit record, allowed or denied, without any contents.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

import pydantic
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.context import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedResourceError
from mcp.server.mcpserver.resources import ResourceSecurity
from mcp.types import CallToolResult, InputRequiredResult
from mcp.types import Resource as MCPResource
from mcp.types import Tool as MCPTool
from pydantic.networks import AnyUrl

from datarooms import __version__
from datarooms.errors import DataroomsError
from datarooms.services.mcp import audit
from datarooms.services.mcp.audit import AuditRecord
from datarooms.services.mcp.policy import (
    REQUEST_NARROWING,
    TOOLS,
    CapabilityDenied,
    Narrowing,
)
from datarooms.services.mcp.reading import event_json, read_timeline
from datarooms.services.mcp.runtime import AgentRuntime
from datarooms.services.mcp.tools import _READ, _WRITE, ANNOTATIONS, AgentTools

# The SDK logs the text of every failed tool call at INFO; ours can quote a
# rejected value (a schema error). Our audit log records failures without contents.
logging.getLogger("mcp.server.mcpserver.server").setLevel(logging.WARNING)

ROOMS_URI = "datarooms://rooms"
_TWIN = "datarooms://rooms/{room_id}/twin"
_TIMELINE = "datarooms://rooms/{room_id}/timeline"
_FILE = "datarooms://rooms/{room_id}/files/{event_id}"
#: Which tool's capability each resource needs.
RESOURCE_TOOL = {
    ROOMS_URI: "list_rooms",
    _TWIN: "get_twin",
    _TIMELINE: "read_messages",
    _FILE: "download_file",
}
_OPAQUE_IDS = ResourceSecurity(exempt_params=frozenset({"room_id", "event_id"}))


def twin_uri(room_id: str) -> str:
    return f"datarooms://rooms/{quote(room_id, safe='')}/twin"


def timeline_uri(room_id: str) -> str:
    return f"datarooms://rooms/{quote(room_id, safe='')}/timeline"


class AgentServer(MCPServer[Any]):
    """An MCP server acting as one agent, within its capabilities."""

    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        p = rt.policy
        super().__init__(
            name="datarooms",
            title=f"datarooms ({p.name})",
            version=__version__,
            instructions=_instructions(rt),
            log_level="WARNING",
        )
        self.tools = AgentTools(rt)
        for name, spec in TOOLS.items():
            default = _READ if spec.access == "read" else _WRITE
            self.add_tool(
                getattr(self.tools, name), name=name, annotations=ANNOTATIONS.get(name, default)
            )
        self._arg_names: dict[str, set[str]] | None = None
        self._register_resources()

    # -- tools -----------------------------------------------------------------

    async def list_tools(self) -> list[MCPTool]:
        """Only the tools this agent may call."""
        return [t for t in await super().list_tools() if self.rt.policy.tool_allowed(t.name)]

    async def _handle_list_tools(self, ctx: Any, params: Any) -> Any:
        token = REQUEST_NARROWING.set(_narrowing_of(getattr(ctx, "request", None)))
        try:
            return await super()._handle_list_tools(ctx, params)
        finally:
            REQUEST_NARROWING.reset(token)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        request = getattr(getattr(context, "request_context", None), "request", None)
        narrowed = REQUEST_NARROWING.set(_narrowing_of(request))
        try:
            return await self._call_tool(name, arguments, context)
        finally:
            REQUEST_NARROWING.reset(narrowed)

    async def _call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None
    ) -> CallToolResult | InputRequiredResult:
        rt = self.rt
        rec = AuditRecord("tool_call", rt.name, rt.user_id, name, rt.transport)
        token = audit.begin(rec)
        try:
            try:
                rt.refresh()
                rt.check_active()
                rt.policy.check_tool(name)
            except CapabilityDenied as exc:
                rec.deny(exc.capability)
                raise ToolError(
                    f"Error executing tool {name}: {exc.errcode}: {exc.message}"
                ) from None
            if name not in TOOLS:
                rec.fail("DR_UNKNOWN_TOOL")
                raise ToolError(
                    f"Unknown tool: {name!r}; call tools/list for the tools this agent may use"
                )
            unknown = set(arguments) - (await self._arguments_of(name))
            if unknown:
                rec.fail("DR_INVALID")
                raise ToolError(
                    f"Error executing tool {name}: DR_INVALID: unknown argument(s) "
                    f"{', '.join(sorted(unknown))}; see the tool's input schema"
                )
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as exc:
                mapped = _tool_error(name, exc, rec)
                if mapped is exc:
                    raise
                raise mapped from None
        finally:
            rec.emit()
            audit.end(token)

    async def _arguments_of(self, name: str) -> set[str]:
        if self._arg_names is None:
            self._arg_names = {
                t.name: set((t.input_schema or {}).get("properties", {}))
                for t in await super().list_tools()
            }
        return self._arg_names.get(name, set())

    # -- resources ---------------------------------------------------------------

    def _register_resources(self) -> None:
        rt, tools = self.rt, self.tools

        @self.resource(
            ROOMS_URI,
            name="rooms",
            mime_type="application/json",
            description="The rooms this agent may use, with kind, alias and DID",
        )
        async def rooms() -> str:
            return json.dumps(await tools.list_rooms())

        @self.resource(
            _TWIN,
            name="twin",
            mime_type="application/json",
            description="A room's twin state: the latest value of every record key",
            security=_OPAQUE_IDS,
        )
        async def twin(room_id: str) -> str:
            rid = await rt.room(unquote(room_id))
            return json.dumps({"room_id": rid, "state": await rt.client.records.twin(rid)})

        @self.resource(
            _TIMELINE,
            name="timeline",
            mime_type="application/json",
            description="A room's 50 latest events, decrypted, newest last",
            security=_OPAQUE_IDS,
        )
        async def timeline(room_id: str) -> str:
            rid = await rt.room(unquote(room_id))
            events, more = await read_timeline(rt.client, rid, limit=50)
            return json.dumps(
                {"room_id": rid, "events": [event_json(e) for e in events], "more": more}
            )

        @self.resource(
            _FILE,
            name="file",
            mime_type="application/octet-stream",
            description="A file from a room, decrypted and verified (small files)",
            security=_OPAQUE_IDS,
        )
        async def file(room_id: str, event_id: str) -> bytes:
            rid = await rt.room(unquote(room_id))
            return await tools.read_file_bytes(rid, unquote(event_id))

    async def list_resources(self) -> list[MCPResource]:
        p = self.rt.policy
        out = [r for r in await super().list_resources() if p.tool_allowed("list_rooms")]
        for rid in self.rt.rooms_in_scope():
            details = self.rt.client.rooms.details(rid)
            label = (details.name if details is not None else None) or rid
            if p.tool_allowed("get_twin"):
                out.append(
                    MCPResource(
                        uri=twin_uri(rid),
                        name=f"twin: {label}",
                        mime_type="application/json",
                        description=f"Twin state of {rid}",
                    )
                )
            if p.tool_allowed("read_messages"):
                out.append(
                    MCPResource(
                        uri=timeline_uri(rid),
                        name=f"timeline: {label}",
                        mime_type="application/json",
                        description=f"Latest events of {rid}",
                    )
                )
        return out

    async def _handle_list_resources(self, ctx: Any, params: Any) -> Any:
        token = REQUEST_NARROWING.set(_narrowing_of(getattr(ctx, "request", None)))
        try:
            return await super()._handle_list_resources(ctx, params)
        finally:
            REQUEST_NARROWING.reset(token)

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        request = getattr(getattr(context, "request_context", None), "request", None)
        narrowed = REQUEST_NARROWING.set(_narrowing_of(request))
        try:
            return await self._read_resource(uri, context)
        finally:
            REQUEST_NARROWING.reset(narrowed)

    async def _read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        text = str(uri)
        template = _template_of(text)
        rt = self.rt
        rec = AuditRecord("resource_read", rt.name, rt.user_id, template, rt.transport)
        token = audit.begin(rec)
        try:
            tool = RESOURCE_TOOL.get(template)
            if tool is not None:
                try:
                    rt.refresh()
                    rt.check_active()
                    rt.policy.check_tool(tool)
                except CapabilityDenied as exc:
                    rec.deny(exc.capability)
                    raise ResourceError(f"{exc.errcode}: {exc.message}") from None
            try:
                return await super().read_resource(uri, context)
            except UnexpectedResourceError as exc:
                cause = exc.__cause__
                if isinstance(cause, CapabilityDenied):
                    rec.deny(cause.capability)
                    raise ResourceError(f"{cause.errcode}: {cause.message}") from None
                if isinstance(cause, DataroomsError):
                    rec.fail(cause.errcode)
                    raise ResourceError(f"{cause.errcode}: {cause.message}") from None
                rec.fail("DR_INTERNAL")
                raise
            except ResourceError:
                rec.fail("DR_RESOURCE")
                raise
        finally:
            rec.emit()
            audit.end(token)


def _narrowing_of(request: Any) -> Narrowing | None:
    """The narrowing the request's UCAN stated (the HTTP guard put it in the scope)."""
    scope = getattr(request, "scope", None)
    if not isinstance(scope, dict):
        return None
    found = (scope.get("state") or {}).get("narrowing")
    return found if isinstance(found, Narrowing) else None


def _template_of(uri: str) -> str:
    if uri == ROOMS_URI:
        return ROOMS_URI
    parts = uri.split("/")
    if uri.startswith("datarooms://rooms/") and len(parts) >= 5:
        tail = parts[4]
        if tail == "twin" and len(parts) == 5:
            return _TWIN
        if tail == "timeline" and len(parts) == 5:
            return _TIMELINE
        if tail == "files" and len(parts) == 6:
            return _FILE
    return "unknown"


def _tool_error(name: str, exc: ToolError, rec: AuditRecord) -> ToolError:
    """A tool error the agent can act on, with our error code; the audit record updated."""
    cause = exc.__cause__
    if isinstance(cause, CapabilityDenied):
        rec.deny(cause.capability)
        return ToolError(f"Error executing tool {name}: {cause.errcode}: {cause.message}")
    if isinstance(cause, DataroomsError):
        rec.fail(cause.errcode)
        return ToolError(f"Error executing tool {name}: {cause.errcode}: {cause.message}")
    if isinstance(cause, pydantic.ValidationError):
        rec.fail("DR_INVALID")
        return ToolError(f"Error executing tool {name}: DR_INVALID: {_arguments_text(cause)}")
    rec.fail("DR_INTERNAL")
    return exc


def _arguments_text(err: pydantic.ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "arguments"
        if e["type"] == "missing":
            parts.append(f"{loc} is required")
        else:
            parts.append(f"{loc}: {e['msg']}")
    return "invalid arguments: " + "; ".join(parts) + " (see the tool's input schema)"


def _instructions(rt: AgentRuntime) -> str:
    p = rt.policy
    scope = []
    if p.any_room:
        scope.append("any room it is a member of")
    else:
        if p.rooms:
            scope.append("rooms " + ", ".join(sorted(p.rooms)))
        if p.room_kinds:
            scope.append("data rooms of kind " + ", ".join(sorted(p.room_kinds)))
        if p.dids:
            scope.append("the rooms of " + ", ".join(sorted(p.dids)))
    lines = [
        f"You act as the agent {p.name!r} ({rt.user_id}) in end-to-end encrypted Matrix data "
        f"rooms, with {p.access} access to: {'; '.join(scope) or 'no rooms'}.",
        "Start with list_rooms. Records are versioned key/value data (put_record, get_record, "
        "get_twin, record_history); messages use read_messages, send_message, reply and "
        "wait_for_messages (pass back its cursor).",
        "Telemetry is time series: telemetry_series lists a room's metrics, query_telemetry "
        "returns raw samples, aggregate_telemetry per-bucket count/min/max/mean/last.",
        "Collaborative documents (CRDT): read_document returns one as JSON, edit_document "
        "sets a path in it (merged with concurrent edits).",
        "Calls outside these capabilities fail with DR_CAPABILITY and name what is missing.",
    ]
    if p.description:
        lines.insert(1, p.description)
    return "\n".join(lines)


def build_server(rt: AgentRuntime) -> AgentServer:
    return AgentServer(rt)


__all__ = ["ROOMS_URI", "AgentServer", "build_server", "timeline_uri", "twin_uri"]
