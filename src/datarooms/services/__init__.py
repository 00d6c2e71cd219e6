"""The services: thin adapters that translate a protocol into calls on the SDK.

``platform`` runs them all (``datarooms up``); ``statebot`` (REST over room state),
``roomsbot`` (an application service that makes entity rooms), ``mcp`` (AI agents over
MCP) and ``openid`` (who is asking) live here. Each one imports the SDK, never nio,
the local index or the HTTP transport directly.
"""
