"""What every datarooms HTTP service shares, once: the state bot, the rooms bot, the
automation service, the claims service, MCP over HTTP and the dashboard.

- :func:`bind`: the listening socket (IPv4 or IPv6, TCP_NODELAY-ready), with a clear
  :class:`PortInUseError` naming the setting to change;
- :class:`EmbeddedServer`: uvicorn serving an ASGI app as a task of the running event
  loop, without uvicorn's signal handlers (the platform owns SIGINT and SIGTERM);
- :func:`install_error_handlers`: Matrix-style errors for a FastAPI app;
- :class:`RequestGuard`: ASGI middleware that **authenticates before it reads a
  body**, then reads the body with a cap (``413`` as soon as a streamed body passes
  it, whatever ``Content-Length`` said), and reports every answer for metrics;
- :func:`http_metrics`: every service's ``<prefix>_requests_total{method,route,status}``
  and ``<prefix>_request_duration_seconds{method,route}``, recorded from the guard's
  answers (:meth:`HttpMetrics.record`), and ``GET /metrics`` in Prometheus's text
  format (:meth:`HttpMetrics.install` / :meth:`HttpMetrics.route`);
- :func:`write_run_file` / :func:`running_url`: ``<data_dir>/run/<name>.json``, where a
  running service listens, for the CLI and the SDK; :class:`ServiceRun` holds it with
  the service's process lock;
- keyed locks live in :mod:`datarooms._locks` (the SDK uses them too).

**Errors.** Every answer that is not a success is ``{"errcode": ..., "error": ...}``:
a :class:`DataroomsError` answers its own ``errcode`` and status; an unknown route
``404 M_UNRECOGNIZED``; a wrong method ``405 M_UNRECOGNIZED``; invalid input ``400``
``M_BAD_JSON`` (the body) or ``M_INVALID_PARAM`` (path and query), ``M_NOT_JSON`` if
the body is not JSON; a body over the cap ``413 M_TOO_LARGE``; and an internal error
``500 M_UNKNOWN``, the Matrix spec's code for "an unknown error has occurred"
(the details go to the service's log, never to the caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datarooms._fs import ProcessLock, atomic_write
from datarooms.config import Settings
from datarooms.errors import DataroomsError, PlatformError, PortInUseError

log = logging.getLogger(__name__)

#: The errcode of an internal error, in every service.
INTERNAL_ERRCODE = "M_UNKNOWN"


# -- listening ---------------------------------------------------------------------------


def bind(host: str, port: int, *, service: str, hint: str) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (0: any free port).

    ``service`` names the service in errors ("the state bot"); ``hint`` says how to
    give it another port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets that say they are TCP, and without it every answer waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use by another program; {service} "
                f"cannot listen there. {hint}"
            ) from None
        raise PlatformError(f"{service} cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def http_url(host: str, port: int, path: str = "") -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handling: the process that embeds it owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmbeddedServer:
    """uvicorn serving ``app`` on a socket from :func:`bind`, inside the running loop."""

    def __init__(self, app: ASGIApp, *, name: str, lifespan: str = "off") -> None:
        self.app = app
        self.name = name
        self.lifespan = lifespan
        self.host: str | None = None
        self.port: int | None = None
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started

    def url(self, path: str = "") -> str:
        if self.host is None or self.port is None:
            raise PlatformError(f"{self.name} is not running")
        return http_url(self.host, self.port, path)

    async def start(self, sock: socket.socket, *, timeout: float = 30.0) -> None:
        """Serve on ``sock`` (which this server then owns); return once it accepts."""
        self._sock = sock
        address = sock.getsockname()
        self.host, self.port = str(address[0]), int(address[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan=self.lifespan,  # type: ignore[arg-type]
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not self._server.started:
                if self._task.done():
                    failure = self._task.exception() if not self._task.cancelled() else None
                    raise PlatformError(
                        f"the HTTP server of {self.name} did not start: {failure!r}"
                    )
                if loop.time() > deadline:
                    raise PlatformError(f"the HTTP server of {self.name} did not start in time")
                await asyncio.sleep(0.01)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        server, task, sock = self._server, self._task, self._sock
        self._server = self._task = self._sock = None
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
            except Exception:
                log.exception("the HTTP server failed while stopping", extra={"service": self.name})
        if sock is not None:
            sock.close()


# -- errors ------------------------------------------------------------------------------


def error_response(
    status: int, errcode: str, error: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "error": error}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, service: str) -> None:
    """Answer every error of ``app`` in the Matrix style (see the module's docstring)."""

    @app.exception_handler(DataroomsError)
    async def _dataroom_error(request: Request, exc: DataroomsError) -> JSONResponse:
        if exc.http_status >= 500:
            log.warning(
                "request failed",
                extra={"path": request.url.path, "errcode": exc.errcode, "error": exc.message},
            )
        return error_response(exc.http_status, exc.errcode, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(exc), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            body = {"errcode": "M_UNRECOGNIZED", "error": "no such endpoint; see /docs"}
        elif exc.status_code == 405:
            body = {"errcode": "M_UNRECOGNIZED", "error": "method not allowed on this endpoint"}
        elif exc.status_code == 400:
            body = {"errcode": "M_NOT_JSON", "error": f"the body could not be read: {exc.detail}"}
        else:
            body = {"errcode": INTERNAL_ERRCODE, "error": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected error",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"path": request.url.path},
        )
        return error_response(500, INTERNAL_ERRCODE, f"internal error in {service}; see its log")


def validation_error(exc: RequestValidationError) -> dict[str, str]:
    """One clear message from pydantic's errors, never echoing the input (it may be secret)."""
    errors = exc.errors()
    parts = []
    errcode = "M_INVALID_PARAM"
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        kind = str(err.get("type", ""))
        if kind == "json_invalid":
            ctx = err.get("ctx") or {}
            return {
                "errcode": "M_NOT_JSON",
                "error": f"the body is not valid JSON: {ctx.get('error', 'parse error')}",
            }
        if loc and loc[0] == "body":
            errcode = "M_BAD_JSON"
        where = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "request")
        if loc[:1] == ["body"] and len(loc) == 1:
            where = "the body"
        msg = str(err.get("msg", "invalid"))
        if kind == "string_pattern_mismatch":
            names = set(loc)
            if names & {"room_id", "room"}:
                msg = "not a Matrix room id (expected !opaque:server; or #alias:server to join)"
            elif names & {"read", "write", "user_id", "userMatrixId"}:
                msg = "not a Matrix user id (expected @name:server)"
            elif "key" in names:
                msg = "a state key may not contain control characters"
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return {"errcode": errcode, "error": "; ".join(parts) + more}


# -- the request guard -------------------------------------------------------------------


class Refusal(Exception):
    """Raised by an authenticator to answer a request before its body is read."""

    def __init__(
        self, status: int, errcode: str, error: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.errcode, self.error = status, errcode, error
        self.headers = dict(headers or {})


#: Checks who is asking, from the request's headers only; may put what it learnt in
#: ``scope["state"]`` (``request.state`` in handlers). Raises :class:`Refusal` or
#: :class:`DataroomsError` to refuse.
Authenticator = Callable[[Scope], Awaitable[None]]
#: ``(scope, status, seconds)`` after every answer.
AnswerHook = Callable[[Scope, int, float], None]


_DOC_PATHS = frozenset({"/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"})


def route_template(scope: Scope) -> str:
    """The route an answered request matched (``/v1/rooms/{room_id}``), for metrics:
    the docs by their path, anything unmatched as ``unmatched`` (never the raw path)."""
    template = getattr(scope.get("route"), "path", None)
    if isinstance(template, str):
        return template
    path = str(scope.get("path", ""))
    return path if path in _DOC_PATHS else "unmatched"


#: The HTTP methods metrics name; any other is counted as ``other``.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metric_method(scope: Scope) -> str:
    """The request's method as a metrics label: a known one, else ``other`` (a client
    choosing methods must not choose how many series there are)."""
    method = str(scope.get("method", ""))
    return method if method in METRIC_METHODS else "other"


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def bearer_token(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>``, if any."""
    text = (header(scope, b"authorization") or "").strip()
    scheme, _, token = text.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class RequestGuard:
    """Pure ASGI middleware: authenticate, then read the body with a cap, then the app.

    ``max_body`` is a number of bytes, or a function of the scope (a limit per route).
    The body is read only after ``authenticate`` accepted the request, so an
    unauthenticated request never costs more than its headers; it is read a chunk at a
    time and refused (``413``) as soon as it passes the cap, whatever ``Content-Length``
    said (a chunked body has none).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int | Callable[[Scope], int],
        authenticate: Authenticator | None = None,
        on_answer: AnswerHook | None = None,
        too_large: str = "",
    ) -> None:
        self.app = app
        self._max_body = max_body
        self._authenticate = authenticate
        self._on_answer = on_answer
        self._too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            scope.setdefault("state", {})
            if self._authenticate is not None:
                try:
                    await self._authenticate(scope)
                except Refusal as exc:
                    await send_error(send_counted, exc.status, exc.errcode, exc.error, exc.headers)
                    return
                except DataroomsError as exc:
                    await send_error(send_counted, exc.http_status, exc.errcode, exc.message)
                    return
            limit = self._max_body(scope) if callable(self._max_body) else self._max_body
            body = await self._read_body(scope, receive, send_counted, limit)
            if body is None:
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_counted)
        finally:
            if self._on_answer is not None:
                self._on_answer(scope, status, time.perf_counter() - started)

    async def _read_body(
        self, scope: Scope, receive: Receive, send: Send, limit: int
    ) -> bytes | None:
        declared = header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(send, 400, "M_BAD_JSON", "Content-Length is not a number")
                return None
            if int(declared) > limit:
                await send_error(send, 413, "M_TOO_LARGE", self._too_large_message(limit))
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, "M_TOO_LARGE", self._too_large_message(limit))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large_message(self, limit: int) -> str:
        return f"the request body is over {limit} bytes" + (
            f"; {self._too_large}" if self._too_large else ""
        )


async def send_error(
    send: Send,
    status: int,
    errcode: str,
    error: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer ``{"errcode", "error"}`` from ASGI middleware."""
    body = json.dumps({"errcode": errcode, "error": error}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# -- metrics ---------------------------------------------------------------------------

#: Request latency buckets (seconds), the same for every service.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HttpMetrics:
    """A service's request counter and latency histogram, in ``registry``, and its
    ``GET /metrics``. Labels are the method (:func:`metric_method`), the route's
    *template* (:func:`route_template`: ``/v1/rooms/{room_id}``, never a room id, a
    token or a user's path) and the status: a caller cannot choose the number of
    series, and no secret or user data is a label.

    ``/metrics`` is served on the service's own listener, unauthenticated, as the
    state bot's always was: a service listens on loopback unless configured otherwise
    (docs/operations.md, docs/security.md)."""

    def __init__(self, prefix: str, registry: CollectorRegistry | None = None) -> None:
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{prefix}_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds",
            "Time to answer a request, by method and route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        """An :data:`AnswerHook` for :class:`RequestGuard`."""
        method, route = metric_method(scope), route_template(scope)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus's text exposition format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def response(self) -> Response:
        body, content_type = self.render()
        return Response(body, media_type=content_type)

    def route(self) -> Route:
        """``GET /metrics`` for a Starlette app's routes."""

        async def metrics(_request: Request) -> Response:
            return self.response()

        return Route("/metrics", endpoint=metrics, methods=["GET"])

    def install(self, app: FastAPI, *, tags: list[str] | None = None) -> None:
        """``GET /metrics`` on a FastAPI app (in its OpenAPI document)."""

        async def metrics() -> Response:
            return self.response()

        app.add_api_route(
            "/metrics",
            metrics,
            methods=["GET"],
            response_class=Response,
            tags=list(tags or ["operations"]),
            summary=f"Prometheus metrics ({self.prefix}_*)",
            responses={200: {"content": {"text/plain": {}}}},
        )


def http_metrics(prefix: str, registry: CollectorRegistry | None = None) -> HttpMetrics:
    """The request counter and latency histogram of the service ``prefix`` (its own
    registry unless given one): see :class:`HttpMetrics`."""
    return HttpMetrics(prefix, registry)


# -- run files ---------------------------------------------------------------------------


def run_file(settings: Settings, name: str) -> Path:
    """``<data_dir>/run/<name>.json``: where the running ``name`` listens, and its pid."""
    return settings.run_dir / f"{name}.json"


def write_run_file(settings: Settings, name: str, info: Mapping[str, Any]) -> Path:
    path = run_file(settings, name)
    atomic_write(path, json.dumps({**info, "pid": os.getpid()}))
    return path


def running_url(settings: Settings, name: str) -> str | None:
    """The URL of the service ``name`` running on this data dir, if one is."""
    return settings.running_url(name)


class ServiceRun:
    """What a running service holds on its data dir: a process lock (one such service
    per data dir or device), then its run file once it listens. :meth:`release` undoes
    both, in any state."""

    def __init__(self, settings: Settings, name: str, lock: ProcessLock | None = None) -> None:
        self.settings, self.name, self.lock = settings, name, lock
        self.run_file: Path | None = None

    def acquire(self) -> ServiceRun:
        """Take the lock (:class:`AlreadyRunningError` if another process holds it)."""
        if self.lock is not None:
            self.lock.acquire()
        return self

    def publish(self, info: Mapping[str, Any]) -> None:
        """Write the run file: ``info`` (at least ``url``) and this process's pid."""
        self.run_file = write_run_file(self.settings, self.name, info)

    def release(self) -> None:
        if self.run_file is not None:
            self.run_file.unlink(missing_ok=True)
            self.run_file = None
        if self.lock is not None:
            self.lock.release()


class TokenBucket:
    """Token buckets, one per key (a client, a homeserver): ``rate`` per second after a
    burst of ``burst``. The rooms bot's room creations and OpenID verification use it."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if allowed, else seconds to wait."""
        now = time.monotonic()
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._state[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._state[key] = (tokens - 1, now)
        if len(self._state) > 50_000:
            self._state.clear()
        return 0.0


class Stoppable(Protocol):
    async def stop(self) -> None: ...


B = TypeVar("B", bound=Stoppable)


class BotService(Generic[B]):
    """A platform service that runs one bot and holds a :class:`ServiceRun` for it:
    :meth:`stop` stops the bot, then releases the lock and the run file, whatever
    happened. Subclasses set ``bot`` and ``_run`` in their ``start``."""

    def __init__(self) -> None:
        self.bot: B | None = None
        self._run: ServiceRun | None = None

    async def stop(self) -> None:
        bot, self.bot = self.bot, None
        try:
            if bot is not None:
                await bot.stop()
        finally:
            run, self._run = self._run, None
            if run is not None:
                run.release()


__all__ = [
    "INTERNAL_ERRCODE",
    "LATENCY_BUCKETS",
    "BotService",
    "EmbeddedServer",
    "HttpMetrics",
    "Refusal",
    "RequestGuard",
    "ServiceRun",
    "TokenBucket",
    "bearer_token",
    "bind",
    "error_response",
    "header",
    "http_metrics",
    "http_url",
    "install_error_handlers",
    "metric_method",
    "route_template",
    "run_file",
    "running_url",
    "send_error",
    "validation_error",
    "write_run_file",
]
