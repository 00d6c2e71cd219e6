"""stdio: one agent's MCP server on stdin/stdout (``datarooms mcp --agent NAME``).

The MCP client (Claude Desktop, an IDE, the MCP inspector) starts this process
and is the only one talking to it, so there is no token: whoever can run the
command with this data directory is the operator. The agent's capabilities
still apply in full, and every call is audited.

The agent's account is the same as under ``datarooms up`` (``agent-<name>``,
``<data_dir>/accounts/agent-<name>.json``), and so is its device store.
"""

from __future__ import annotations

import logging

from datarooms.account import Credentials, read_credentials, resolve_credentials
from datarooms.config import Settings
from datarooms.errors import ConfigError
from datarooms.homeserver.embedded import EmbeddedSynapse
from datarooms.ids import server_of
from datarooms.sdk.client import DataroomsClient
from datarooms.services.mcp import audit
from datarooms.services.mcp.config import ConfigWatcher, agent_localpart, agents_file, load_agents
from datarooms.services.mcp.runtime import AgentRuntime, platform_senders
from datarooms.services.mcp.server import AgentServer
from datarooms.services.platform import PlatformContext, device_store_dir, live_homeserver_url

log = logging.getLogger(__name__)


async def agent_credentials(settings: Settings, name: str) -> Credentials:
    """The agent's account: from ``accounts/agent-<name>.json``, else registered now."""
    localpart = agent_localpart(name)
    url = (
        live_homeserver_url(settings)
        if settings.homeserver.mode == "embedded"
        else settings.homeserver.base_url
    )
    stored = read_credentials(settings.data_dir / "accounts" / f"{localpart}.json")
    homeserver: EmbeddedSynapse | None = None
    if (
        stored is None
        and settings.homeserver.mode == "embedded"
        and not settings.homeserver.registration_shared_secret
    ):
        embedded = EmbeddedSynapse(settings.synapse_dir)
        if not embedded.secrets_path.exists():
            raise ConfigError(
                f"the agent {name!r} has no account yet and the embedded homeserver was never "
                "set up: run `datarooms up` first"
            )
        homeserver = embedded
    try:
        service = resolve_credentials(settings)
    except ConfigError:
        if stored is None:
            raise
        service = stored
    ctx = PlatformContext(settings, url, service, homeserver)
    return await ctx.ensure_account(localpart, displayname=f"{name} (AI agent)")


async def run_stdio(settings: Settings, name: str) -> None:
    """Serve agent ``name`` over stdio until the client closes stdin."""
    path = agents_file(settings.data_dir)
    config = load_agents(path, data_dir=settings.data_dir)
    policy = config.agent(name)
    handler = audit.open_audit_file(config.mcp.audit_log) if config.mcp.audit_log else None
    try:
        creds = await agent_credentials(settings, name)
        client = await DataroomsClient.open(
            creds,
            device_store_dir(settings, creds.user_id),
            device_name=f"datarooms MCP agent {name}",
        )
        try:
            rt = AgentRuntime(
                client,
                policy,
                config.mcp,
                transport="stdio",
                trusted_senders=platform_senders(settings, server_of(creds.user_id)),
            )
            watcher = ConfigWatcher(config, settings.data_dir)
            watcher.on_change(rt.apply_config)
            rt.watcher = watcher
            await rt.start()
            try:
                await AgentServer(rt).run_stdio_async()
            finally:
                await rt.stop()
        finally:
            await client.close()
    finally:
        if handler is not None:
            audit.close_audit_file(handler)


__all__ = ["agent_credentials", "run_stdio"]
