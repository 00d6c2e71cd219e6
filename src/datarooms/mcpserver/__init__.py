"""Compatibility alias: the MCP server lives in :mod:`datarooms.services.mcp`.

Kept because users' MCP client configs name ``python -m datarooms.mcpserver``.
"""
