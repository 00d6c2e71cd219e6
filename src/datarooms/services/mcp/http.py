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

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from datarooms.sdk.ucan import UcanError, looks_like_container
from datarooms.services.mcp import audit
from datarooms.services.mcp.config import AgentsConfig, match_token
from datarooms.services.mcp.oauth import SCOPE_PREFIX, MatrixLoginProvider, resource_metadata_url
from datarooms.services.mcp.policy import Narrowing
from datarooms.services.mcp.server import AgentServer
from datarooms.services.openid import UcanGate
from datarooms.services.scaffold import (
    Authenticator,
    EmbeddedServer,
    Refusal,
    RequestGuard,
    bearer_token,
    bind,
    http_metrics,
    http_url,
    send_error,
)

MCP_PATH = "/mcp"


_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="datarooms-mcp"'}
#: The largest request body: one JSON-RPC message, which may carry a file of
#: ``max_inline_file_bytes`` (at most 32 MiB) in base64.
MAX_BODY_BYTES = 48 * 1024 * 1024


def authenticator(
    config: Callable[[], AgentsConfig],
    ucan: UcanGate | None = None,
    fresh: Callable[[], AgentsConfig] | None = None,
    oauth: MatrixLoginProvider | None = None,
) -> Authenticator:
    """Which agent is calling ``/mcp``, from its bearer token alone (before any body is
    read); the agent's name goes in ``scope["state"]["agent"]``. A token or agent not
    known yet makes ``fresh`` re-read agents.toml first (one stat), so an agent added a
    moment ago works at once.

    A token is an agent's static bearer token, or (with ``ucan``) a UCAN invocation of
    ``/datarooms/mcp`` whose chain roots in a grant of this server (``datarooms agents
    grant``): checked here, per request, against the live revocation store, so a grant,
    a narrower re-grant or a revocation takes effect without a restart.
    """

    challenge = dict(_UNAUTHORIZED_HEADERS)
    if oauth is not None:  # RFC 9728 section 5.1: point standard clients at the metadata
        challenge["WWW-Authenticate"] = (
            f'Bearer realm="datarooms-mcp", '
            f'resource_metadata="{resource_metadata_url(oauth.base_url)}"'
        )

    async def authenticate(scope: Scope) -> None:
        if scope.get("path") != MCP_PATH:
            return
        token = bearer_token(scope)
        if token is not None and oauth is not None:
            agent = oauth.agent_of(token)
            if agent is not None:
                if agent not in config().agents:
                    raise Refusal(
                        403, "DR_FORBIDDEN", f"the agent {agent!r} was removed", challenge
                    )
                scope["state"]["agent"] = agent
                return
        if token is not None and ucan is not None and looks_like_container(token):
            try:
                name, args = ucan.check_agent(token)
                narrowing = narrowing_of(args)
            except UcanError as exc:
                audit.auth_denied("ucan")
                raise Refusal(exc.http_status, exc.errcode, exc.message, challenge) from None
            if name not in config().agents and (fresh is None or name not in fresh().agents):
                audit.auth_denied("ucan")
                raise Refusal(
                    403,
                    "DR_UCAN_NOT_ALLOWED",
                    f"the UCAN is for the agent {name!r}, which is not in agents.toml",
                    challenge,
                )
            scope["state"]["agent"] = name
            scope["state"]["narrowing"] = narrowing
            return
        if token is None:
            audit.auth_denied("bearer_token")
            raise Refusal(
                401,
                "M_MISSING_TOKEN",
                "this MCP server needs Authorization: Bearer <agent token>; "
                "create one with `datarooms agents add` or `datarooms agents token NAME`",
                challenge,
            )
        policy = match_token(token, config().agents.values())
        if policy is None and fresh is not None:
            policy = match_token(token, fresh().agents.values())
        if policy is None:
            audit.auth_denied("bearer_token")
            raise Refusal(
                401,
                "M_UNKNOWN_TOKEN",
                "the bearer token belongs to no agent (revoked or mistyped)",
                challenge,
            )
        scope["state"]["agent"] = policy.name

    return authenticate


def narrowing_of(args: Mapping[str, Any]) -> Narrowing:
    """What a UCAN invocation states it may do (``access``, ``rooms``, ``tools`` in its
    args, each optional); the chain's policies have already checked these args."""
    access = args.get("access")
    if access is not None and access not in ("read", "write"):
        raise UcanError("args.access must be 'read' or 'write'", errcode="DR_UCAN_MALFORMED")

    def names(key: str) -> frozenset[str] | None:
        value = args.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UcanError(f"args.{key} must be a list of strings", errcode="DR_UCAN_MALFORMED")
        return frozenset(value)

    return Narrowing(access=access, rooms=names("rooms"), tools=names("tools"))


class AgentRouter:
    """ASGI app: hand a request over to the server of the agent the guard authenticated.

    An agent added to agents.toml while the server runs is started on its first request
    (``starting``: wait for it), so it works at once, without a restart.
    """

    def __init__(
        self,
        servers: Mapping[str, AgentServer],
        starting: Callable[[str], Awaitable[AgentServer | None]] | None = None,
    ):
        self.servers = servers
        self.starting = starting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - websockets are not routed here
            return
        name = (scope.get("state") or {}).get("agent")
        if not isinstance(name, str):  # served without the guard: refuse, never guess
            await send_error(send, 401, "M_MISSING_TOKEN", "not authenticated")
            return
        server = self.servers.get(name)
        if server is None and self.starting is not None:
            server = await self.starting(name)
        if server is None:
            await send_error(
                send,
                503,
                "DR_AGENT_NOT_RUNNING",
                f"agent {name!r} could not be started (see the platform log); retry shortly",
            )
            return
        await server.session_manager.handle_request(scope, receive, send)


def build_http_app(
    servers: Mapping[str, AgentServer],
    config: Callable[[], AgentsConfig],
    *,
    host: str,
    ucan: UcanGate | None = None,
    starting: Callable[[str], Awaitable[AgentServer | None]] | None = None,
    fresh: Callable[[], AgentsConfig] | None = None,
    oauth: MatrixLoginProvider | None = None,
) -> ASGIApp:
    """The ASGI app: ``/mcp`` (authenticated, per agent, before any body is read) and
    ``/health``, behind the services' :class:`RequestGuard`."""
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

    metrics = http_metrics("mcp")

    app = Starlette(
        routes=[
            Route(MCP_PATH, endpoint=AgentRouter(servers, starting)),
            Route("/health", endpoint=health, methods=["GET"]),
            metrics.route(),
            *(
                oauth.routes(
                    oauth.base_url + MCP_PATH,
                    [f"{SCOPE_PREFIX}{name}" for name in config().agents],
                )
                if oauth is not None
                else []
            ),
        ],
        lifespan=lifespan,
    )
    return RequestGuard(
        app,
        max_body=MAX_BODY_BYTES,
        authenticate=authenticator(config, ucan, fresh, oauth),
        on_answer=metrics.record,
    )


class HttpServer:
    """The MCP app on ``host:port``, served inside the running event loop."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server = EmbeddedServer(app, name="the MCP server", lifespan="on")

    @property
    def url(self) -> str:
        return http_url(self.host, self.port, MCP_PATH)

    async def start(self, timeout: float = 30.0) -> None:
        sock = bind(
            self.host,
            self.port,
            service="the MCP server",
            hint="Set [mcp] port in agents.toml.",
        )
        self.port = int(sock.getsockname()[1])
        await self._server.start(sock, timeout=timeout)

    async def stop(self) -> None:
        await self._server.stop()
