"""The datarooms MCP server: AI agents in end-to-end encrypted data rooms, least privilege.

- :class:`McpService`: the platform service (streamable HTTP, all agents, ``datarooms up``);
- :func:`run_stdio`: one agent over stdio (``datarooms mcp --agent NAME``,
  ``python -m datarooms.services.mcp --agent NAME``);
- :mod:`.config`: ``agents.toml`` and its helpers (:func:`add_agent`, ...);
- :mod:`.policy`: the capability model, pure.

See docs/mcp.md.
"""

from __future__ import annotations

from datarooms.services.mcp.config import (
    AgentsConfig,
    McpSettings,
    add_agent,
    load_agents,
    remove_agent,
    rotate_token,
)
from datarooms.services.mcp.policy import TOOLS, AgentPolicy, CapabilityDenied
from datarooms.services.mcp.runtime import AgentRuntime
from datarooms.services.mcp.server import AgentServer, build_server
from datarooms.services.mcp.service import McpService
from datarooms.services.mcp.stdio import run_stdio

__all__ = [
    "TOOLS",
    "AgentPolicy",
    "AgentRuntime",
    "AgentServer",
    "AgentsConfig",
    "CapabilityDenied",
    "McpService",
    "McpSettings",
    "add_agent",
    "build_server",
    "load_agents",
    "remove_agent",
    "rotate_token",
    "run_stdio",
]
