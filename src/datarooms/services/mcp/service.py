"""``McpService``: the MCP server as a platform service (part of ``datarooms up``).

On start, for every agent in ``<data_dir>/agents.toml``: its Matrix account
(``agent-<name>``, registered on first use), its own end-to-end encrypted
device in ``<data_dir>/devices/<user_id>`` with a background sync loop, and its
MCP server; then streamable HTTP on ``[mcp] host:port`` (127.0.0.1:8012 by
default), served by uvicorn in the platform's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from datarooms.homeserver.embedded import free_port
from datarooms.sdk.client import DataroomsClient
from datarooms.services.mcp import audit
from datarooms.services.mcp.config import (
    AgentsConfig,
    ConfigWatcher,
    agent_localpart,
    agents_file,
    load_agents,
)
from datarooms.services.mcp.http import MCP_PATH, HttpServer, build_http_app
from datarooms.services.mcp.oauth import MatrixLoginProvider
from datarooms.services.mcp.policy import AgentPolicy
from datarooms.services.mcp.runtime import AgentRuntime, platform_senders
from datarooms.services.mcp.server import AgentServer
from datarooms.services.openid import UcanGate, mcp_gate
from datarooms.services.platform import PlatformContext
from datarooms.services.scaffold import http_url

log = logging.getLogger(__name__)


class McpService:
    """The platform service ``mcp``: all configured agents over streamable HTTP."""

    name = "mcp"

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        agents_path: Path | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._agents_path = agents_path
        self.runtimes: dict[str, AgentRuntime] = {}
        self.servers: dict[str, AgentServer] = {}
        self.watcher: ConfigWatcher | None = None
        self._http: HttpServer | None = None
        self._audit_handler: logging.Handler | None = None
        #: The MCP server's DID and UCAN validator (set on start).
        self.ucan: UcanGate | None = None
        self._platform: PlatformContext | None = None
        #: The OAuth 2.1 authorization server for standard MCP clients (set on start).
        self.oauth: MatrixLoginProvider | None = None
        #: Agents added while running: being started, and their session managers.
        self._starting: dict[str, asyncio.Task[AgentServer]] = {}
        self._session_tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str | None:
        return self._http.url if self._http is not None else None

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        data_dir = platform.settings.data_dir
        path = self._agents_path or agents_file(data_dir)
        config = load_agents(path, data_dir=data_dir)
        try:
            if config.mcp.audit_log is not None:
                stores = platform.stores
                self._audit_handler = (
                    audit.open_audit_table(stores, config.mcp.audit_log)
                    if stores.backend == "postgres"
                    else audit.open_audit_file(config.mcp.audit_log)
                )
            self.watcher = ConfigWatcher(config, data_dir)
            self._platform = platform
            for name, policy in config.agents.items():
                self.servers[name] = await self._start_agent(platform, name, policy, config)
            self.watcher.on_change(self._apply)
            self.ucan = mcp_gate(platform.settings)
            host, port = self._bind_host(config), self._bind_port(config) or free_port()
            watcher = self.watcher
            self.oauth = MatrixLoginProvider(
                http_url(host, port),
                platform.homeserver_url,
                platform.server_name,
                agents=lambda: watcher.current().agents,
                operators=lambda: {
                    platform.service_account.user_id,
                    *watcher.current().mcp.operators,
                },
            )
            app = build_http_app(
                self.servers,
                self.watcher.current,
                host=self._bind_host(config),
                ucan=self.ucan,
                starting=self.started,
                fresh=self.watcher.fresh,
                oauth=self.oauth,
            )
            self._http = HttpServer(app, host, port)
            await self._http.start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "MCP server listening",
            extra={"url": self._http.url, "agents": ", ".join(sorted(self.runtimes))},
        )
        return {
            "url": self._http.url,
            "agents": ", ".join(f"{n} ({rt.user_id})" for n, rt in sorted(self.runtimes.items()))
            or f"none yet (add one: datarooms agents add NAME; file {path})",
        }

    async def _start_agent(
        self, platform: PlatformContext, name: str, policy: AgentPolicy, config: AgentsConfig
    ) -> AgentServer:
        """An agent's account, device, runtime and MCP server."""
        creds = await platform.ensure_account(
            agent_localpart(name), displayname=f"{name} (AI agent)"
        )
        client = await DataroomsClient.open(
            creds,
            platform.device_store(creds.user_id),
            device_name=f"datarooms MCP agent {name}",
        )
        # Entity rooms are the platform's rooms bot's, if it runs (when asked).
        client.rooms.roomsbot_url = lambda s=platform.settings: (
            s.roomsbot.url or s.running_url("roomsbot")
        )
        rt = AgentRuntime(
            client,
            policy,
            config.mcp,
            transport="http",
            trusted_senders=platform_senders(
                platform.settings,
                platform.server_name,
                platform.service_account.user_id,
            ),
        )
        rt.watcher = self.watcher
        self.runtimes[name] = rt
        await rt.start()
        return AgentServer(rt)

    async def _add_running(self, name: str) -> AgentServer:
        """Start an agent added to agents.toml while the server runs, sessions and all."""
        assert self._platform is not None and self.watcher is not None
        config = self.watcher.config
        server = await self._start_agent(self._platform, name, config.agent(name), config)
        server.streamable_http_app(streamable_http_path=MCP_PATH, host=self._bind_host(config))
        ready = asyncio.Event()

        async def sessions() -> None:
            async with server.session_manager.run():
                ready.set()
                await asyncio.Event().wait()  # until stop() cancels it

        self._session_tasks.append(asyncio.create_task(sessions(), name=f"mcp-sessions-{name}"))
        await ready.wait()
        self.servers[name] = server
        log.info("agent started without a restart", extra={"agent": name})
        return server

    def _start_later(self, name: str) -> asyncio.Task[AgentServer]:
        task = self._starting.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._add_running(name), name=f"mcp-add-{name}"
            )
            self._starting[name] = task

            def done(t: asyncio.Task[AgentServer]) -> None:
                self._starting.pop(name, None)
                if not t.cancelled() and t.exception() is not None:
                    log.error(
                        "starting an added agent failed",
                        extra={"agent": name, "error": str(t.exception())},
                    )

            task.add_done_callback(done)
        return task

    async def started(self, name: str) -> AgentServer | None:
        """The server of agent ``name``, starting it first if it was added while running."""
        server = self.servers.get(name)
        if server is not None:
            return server
        if self.watcher is None or name not in self.watcher.config.agents:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(self._start_later(name)), 60)
        except Exception:  # logged by _start_later's callback
            return None

    def _bind_host(self, config: AgentsConfig) -> str:
        return self._host or config.mcp.host

    def _bind_port(self, config: AgentsConfig) -> int:
        return self._port if self._port is not None else config.mcp.port

    def _apply(self, config: AgentsConfig) -> None:
        for rt in self.runtimes.values():
            rt.apply_config(config)
        for name in sorted(set(config.agents) - set(self.servers)):
            self._start_later(name)  # an agent added while running: up at once

    async def stop(self) -> None:
        for task in [*self._starting.values(), *self._session_tasks]:
            task.cancel()
        for task in [*self._starting.values(), *self._session_tasks]:
            with contextlib.suppress(BaseException):
                await task
        self._session_tasks.clear()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        for rt in self.runtimes.values():
            try:
                await rt.stop()
                await rt.client.close()
            except Exception:
                log.exception("closing an agent's device failed", extra={"agent": rt.name})
        self.runtimes.clear()
        self.servers.clear()
        if self._audit_handler is not None:
            audit.close_audit_file(self._audit_handler)
            self._audit_handler = None


__all__ = ["McpService"]
