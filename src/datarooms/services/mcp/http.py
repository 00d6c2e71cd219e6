"""Streamable HTTP: one endpoint (``/mcp``) for all agents; the bearer token picks the agent.

Each request must carry ``Authorization: Bearer <token>``. The token's SHA-256
is compared, in constant time, with every agent's ``token_sha256``; the match
decides which agent's MCP server (and so which device and capabilities) serves
the request. MCP sessions live in that agent's own session manager, so a
session id of one agent is unknown to every other. Without a valid token the
answer is ``401`` in the Matrix error style, and the attempt is audited.

uvicorn runs inside the caller's event loop (the platform's), and never
installs signal handlers there: ``datarooms up`` owns Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Generator, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from datarooms.errors import PlatformError, PortInUseError
from datarooms.services.mcp import audit
from datarooms.services.mcp.config import AgentsConfig, match_token
from datarooms.services.mcp.server import AgentServer

MCP_PATH = "/mcp"


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            text = bytes(value).decode("latin-1").strip()
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


async def _unauthorized(send: Send, errcode: str, error: str) -> None:
    body = json.dumps({"errcode": errcode, "error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="datarooms-mcp"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AgentRouter:
    """ASGI app: authenticate the bearer token, then hand over to that agent's server."""

    def __init__(self, servers: Mapping[str, AgentServer], config: Callable[[], AgentsConfig]):
        self.servers = servers
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - websockets are not routed here
            return
        token = _bearer(scope)
        if token is None:
            audit.auth_denied("bearer_token")
            await _unauthorized(
                send,
                "M_MISSING_TOKEN",
                "this MCP server needs Authorization: Bearer <agent token>; "
                "create one with `datarooms agents add` or `datarooms agents token NAME`",
            )
            return
        policy = match_token(token, self.config().agents.values())
        if policy is None:
            audit.auth_denied("bearer_token")
            await _unauthorized(
                send,
                "M_UNKNOWN_TOKEN",
                "the bearer token belongs to no agent (revoked or mistyped)",
            )
            return
        server = self.servers.get(policy.name)
        if server is None:
            body = json.dumps(
                {
                    "errcode": "DR_AGENT_NOT_RUNNING",
                    "error": f"agent {policy.name!r} was added after the MCP server started; "
                    "restart `datarooms up` to bring it online",
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await server.session_manager.handle_request(scope, receive, send)


def build_http_app(
    servers: Mapping[str, AgentServer], config: Callable[[], AgentsConfig], *, host: str
) -> Starlette:
    """The ASGI app: ``/mcp`` (authenticated, per agent) and ``/health``."""
    for server in servers.values():
        # Creates the agent's session manager (the returned app is not used: we route).
        server.streamable_http_app(streamable_http_path=MCP_PATH, host=host)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for server in servers.values():
                await stack.enter_async_context(server.session_manager.run())
            yield

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "agents": len(servers)})

    return Starlette(
        routes=[
            Route(MCP_PATH, endpoint=AgentRouter(servers, config)),
            Route("/health", endpoint=health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the host process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """uvicorn serving ``app`` on ``host:port`` as a task of the running event loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{MCP_PATH}"

    async def start(self, timeout: float = 30.0) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then; without
        # it, Nagle + delayed ACK add ~40 ms to every response sent in two writes.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise PortInUseError(
                f"the MCP server cannot listen on {self.host} port {self.port}: "
                f"{exc.strerror or exc} (port already in use?). Set [mcp] port in agents.toml"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedUvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="mcp-http")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._server.started:
            if self._task.done():
                failure = self._task.exception()
                await self.stop()
                raise PlatformError(f"the MCP HTTP server did not start: {failure!r}")
            if loop.time() > deadline:
                await self.stop()
                raise PlatformError("the MCP HTTP server did not start in time")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None:
            server.should_exit = True
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 10)
            except (TimeoutError, asyncio.CancelledError):
                if server is not None:
                    server.force_exit = True
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            except Exception:  # noqa: S110 - a failed serve() is already logged by uvicorn
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
