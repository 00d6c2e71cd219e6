"""The service scaffold and the HTTP transport, over real sockets (no homeserver needed).

The services' scaffold is served by its own uvicorn; the transport's retries are
exercised against a small aiohttp server that answers as a busy server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import Scope

from datarooms._locks import KeyedLocks
from datarooms._transport.http import (
    JsonHttp,
    MatrixHttp,
    RetryPolicy,
    Unreachable,
    retry_after_seconds,
)
from datarooms.config import load_settings
from datarooms.errors import HomeserverError, PortInUseError, UnauthorizedError
from datarooms.homeserver.embedded import free_port
from datarooms.services.scaffold import (
    EmbeddedServer,
    RequestGuard,
    bearer_token,
    bind,
    http_metrics,
    install_error_handlers,
    running_url,
    write_run_file,
)

FAST = RetryPolicy(backoff=0.01, max_backoff=0.02, max_wait=0.05)


class Item(BaseModel):
    n: int


def _app() -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    install_error_handlers(app, "the test service")
    read: list[int] = []

    @app.post("/v1/items")
    async def post(item: Item) -> dict[str, Any]:
        read.append(item.n)
        return {"n": item.n}

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    return app, read


async def _authenticate(scope: Scope) -> None:
    if str(scope["path"]).startswith("/v1/") and bearer_token(scope) != "good":
        raise UnauthorizedError("who are you?", errcode="M_MISSING_TOKEN")


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[str, list[int]]]:
    app, read = _app()
    answers: list[tuple[str, int]] = []
    guard = RequestGuard(
        app,
        max_body=1024,
        authenticate=_authenticate,
        on_answer=lambda scope, status, _s: answers.append((str(scope["path"]), status)),
    )
    server = EmbeddedServer(guard, name="the test service")
    await server.start(bind("127.0.0.1", 0, service="the test service", hint="-"))
    try:
        yield server.url(), read
    finally:
        await server.stop()
    assert answers, "every answer is reported"


async def _call(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kwargs) as r:
        return r.status, await r.json(content_type=None)


async def test_the_guard_authenticates_before_the_body_and_caps_it() -> None:
    async with serving() as (url, read):
        good = {"Authorization": "Bearer good"}
        assert await _call(f"{url}/v1/items", "POST", json={"n": 1}, headers=good) == (
            200,
            {"n": 1},
        )

        async def chunks(n: int) -> AsyncIterator[bytes]:
            for _ in range(n):
                yield b" " * 600

        # Without a token: 401, whatever the body (even an endless chunked one).
        status, body = await _call(f"{url}/v1/items", "POST", data=b"not json")
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
        # With one: a chunked body over the cap is refused as it streams in.
        status, body = await _call(f"{url}/v1/items", "POST", data=chunks(4), headers=good)
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        status, body = await _call(
            f"{url}/v1/items", "POST", data=b"x" * 2000, headers=good
        )  # declared too large
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        assert read == [1]

        # The Matrix-style errors, the same in every service.
        status, body = await _call(
            f"{url}/v1/items",
            "POST",
            data=b"{",
            headers={**good, "Content-Type": "application/json"},
        )
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await _call(f"{url}/v1/items", "POST", json={"n": "x"}, headers=good)
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await _call(f"{url}/nowhere")
        assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
        status, body = await _call(f"{url}/v1/items", "DELETE", headers=good)
        assert (status, body["errcode"]) == (405, "M_UNRECOGNIZED")
        status, body = await _call(f"{url}/v1/boom", headers=good)
        assert (status, body["errcode"]) == (500, "M_UNKNOWN")
        assert "secret detail" not in body["error"] and "the test service" in body["error"]


async def test_http_metrics_count_route_templates_and_serve_metrics() -> None:
    """The one request counter and histogram of every service (FastAPI and Starlette
    apps alike): labelled by method, route template and status, never the raw path."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    fast = FastAPI()
    install_error_handlers(fast, "the test service")

    @fast.get("/v1/rooms/{room_id}")
    async def room(room_id: str) -> dict[str, str]:
        return {"room_id": room_id}

    fast_metrics = http_metrics("testsvc")
    fast_metrics.install(fast)

    async def hello(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    star_metrics = http_metrics("teststar")
    star = Starlette(routes=[Route("/hello", hello), star_metrics.route()])
    cases: list[tuple[Any, Any, str]] = [
        (fast, fast_metrics, "/v1/rooms/!secret:x"),
        (star, star_metrics, "/hello"),
    ]
    for app, metrics, path in cases:
        guard = RequestGuard(app, max_body=1024, on_answer=metrics.record)
        server = EmbeddedServer(guard, name="the test service")
        await server.start(bind("127.0.0.1", 0, service="the test service", hint="-"))
        try:
            url = server.url()
            async with aiohttp.ClientSession() as s:
                for method, where in (("GET", path), ("GET", path), ("XJUNK", "/nowhere/42")):
                    async with s.request(method, url + where) as r:
                        await r.read()
                async with s.get(url + "/metrics") as r:
                    assert r.status == 200
                    assert r.headers["content-type"].startswith("text/plain; version=")
                    text = await r.text()
        finally:
            await server.stop()
        p = metrics.prefix
        route = "/v1/rooms/{room_id}" if app is fast else "/hello"
        assert f'{p}_requests_total{{method="GET",route="{route}",status="200"}} 2.0' in text
        assert f'{p}_requests_total{{method="other",route="unmatched",status="404"}} 1.0' in text
        assert f'{p}_request_duration_seconds_count{{method="GET",route="{route}"}} 2.0' in text
        assert "secret" not in text and "XJUNK" not in text and "/nowhere" not in text


async def test_a_port_in_use_is_a_clear_error() -> None:
    sock = bind("127.0.0.1", 0, service="the test service", hint="Use another.")
    try:
        with pytest.raises(PortInUseError, match=r"the test service.*Use another\."):
            bind(
                "127.0.0.1", sock.getsockname()[1], service="the test service", hint="Use another."
            )
    finally:
        sock.close()


def test_run_files(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, env={})
    assert running_url(settings, "thing") is None
    path = write_run_file(settings, "thing", {"url": "http://127.0.0.1:1"})
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert running_url(settings, "thing") == "http://127.0.0.1:1"
    path.write_text(json.dumps({"url": "http://x", "pid": 2**22 + 12345}))  # no such process
    assert running_url(settings, "thing") is None


async def test_keyed_locks() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, tag: str, wait: asyncio.Event | None = None) -> None:
        async with locks.hold(key):
            order.append(tag + "+")
            if wait is not None:
                await wait.wait()
            order.append(tag + "-")

    release = asyncio.Event()
    first = asyncio.create_task(hold("a", "1", release))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("a", "2"))
    other = asyncio.create_task(hold("b", "3"))
    await other
    assert locks.busy("a") and not locks.busy("b")
    release.set()
    await asyncio.gather(first, second)
    assert order.index("1-") < order.index("2+")  # one key: one at a time
    assert order.index("3-") < order.index("1-")  # another key does not wait
    assert not locks.busy("a") and not locks._locks  # dropped when unused


# -- the transport's retries -------------------------------------------------------------


@contextlib.asynccontextmanager
async def flaky(
    script: list[tuple[int, Any, dict[str, str]]],
) -> AsyncIterator[tuple[str, list[str]]]:
    """A server answering each request with the next scripted (status, body, headers)."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.method)
        status, body, headers = script.pop(0) if script else (200, {"ok": True}, {})
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with aiohttp_server(app) as url:
        yield url, seen


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_rate_limits_are_waited_out() -> None:
    script = [
        (429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 10}, {}),
        (429, {}, {"Retry-After": "0"}),
    ]
    async with flaky(script) as (url, seen), MatrixHttp(url, "t", retry=FAST) as http:
        assert await http.request("POST", "/x", json={}) == {"ok": True}
    assert seen == ["POST"] * 3
    assert retry_after_seconds({"retry_after_ms": 2500}) == 2.5
    assert retry_after_seconds(None, {"Retry-After": "3"}) == 3.0


async def test_server_errors_are_retried_for_idempotent_requests_only() -> None:
    async with flaky([(503, {}, {}), (502, {}, {})]) as (url, seen):
        async with JsonHttp(url, retry=FAST) as http:
            assert (await http.send("GET", "/x")).status == 200
        assert seen == ["GET"] * 3
    async with flaky([(503, {"errcode": "M_UNKNOWN", "error": "busy"}, {})]) as (url, seen):
        async with MatrixHttp(url, retry=FAST) as http:
            with pytest.raises(HomeserverError) as info:
                await http.request("POST", "/x", json={})
        assert seen == ["POST"] and info.value.status == 503
    script = [(503, {}, {})] * 10
    async with flaky(script) as (url, seen), JsonHttp(url, retry=FAST) as http:
        assert (await http.send("GET", "/x")).status == 503  # bounded
    assert len(seen) == FAST.error_attempts


async def test_unreachable_and_slow_servers() -> None:
    port = free_port()
    async with JsonHttp(f"http://127.0.0.1:{port}", retry=FAST) as http:
        with pytest.raises(Unreachable) as info:
            await http.send("POST", "/x", json={})  # never connected: retried, then given up
        assert not info.value.timed_out
    async with MatrixHttp(f"http://127.0.0.1:{port}", retry=FAST) as http:
        with pytest.raises(HomeserverError, match="cannot reach the homeserver"):
            await http.whoami()

    calls = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with aiohttp_server(app) as url, JsonHttp(url, timeout=0.2, retry=FAST) as http:
        with pytest.raises(Unreachable) as info:
            await http.send("GET", "/slow")
    assert info.value.timed_out and calls == 1  # a timeout is not retried
