"""MCP authorization per the MCP spec: the official `mcp` client, given only the server's
URL, gets a 401 pointing at RFC 9728 metadata, registers itself, sends the person to sign
in with their Matrix account (consent), exchanges the code (PKCE) and lists tools."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from datarooms.homeserver.embedded import free_port
from datarooms.services.mcp import McpService, add_agent
from datarooms.services.mcp.policy import TOOLS
from datarooms.services.platform import Platform
from datarooms.testing import TestHomeserver
from tests._mcp import agent_name, agents_path, ok, platform_for


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Person:
    """The person at the browser: opens the authorization URL, signs in, approves."""

    def __init__(self, user: str, password: str, agent: str) -> None:
        self.user, self.password, self.agent = user, password, agent
        self.redirect: str | None = None
        self.pages: list[tuple[int, str]] = []

    async def open(self, authorization_url: str) -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(authorization_url, allow_redirects=True) as r:
                page = await r.text()
                assert r.status == 200 and "Sign in" in page, page
                login_url = str(r.url)
            request_id = parse_qs(urlsplit(login_url).query)["request"][0]
            form = {
                "request": request_id,
                "agent": self.agent,
                "user": self.user,
                "password": self.password,
            }
            action = login_url.split("?", 1)[0]
            if self.password == "wrong":
                async with s.post(action, data=form, allow_redirects=False) as r:
                    self.pages.append((r.status, await r.text()))
                form["password"] = self.right
            async with s.post(action, data=form, allow_redirects=False) as r:
                assert r.status == 302, await r.text()
                self.redirect = r.headers["Location"]

    right = ""

    async def callback(self) -> AuthorizationCodeResult:
        assert self.redirect is not None
        q = parse_qs(urlsplit(self.redirect).query)
        return AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0])


async def test_official_mcp_client_completes_oauth_and_lists_tools(
    homeserver: TestHomeserver, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    name = agent_name("oauth")
    assert add_agent(agents_path(ctx), name, access="read", rooms=["*"])
    platform = Platform(ctx.settings, services=[McpService(port=free_port())])
    started = await platform.start()
    try:
        url = started.services["mcp"]["url"]
        # An unauthenticated request: 401 pointing at the protected resource metadata.
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}) as r:
                assert r.status == 401
                challenge = r.headers["WWW-Authenticate"]
            m = re.search(r'resource_metadata="([^"]+)"', challenge)
            assert m, challenge
            async with s.get(m.group(1)) as r:
                prm = await r.json()
            assert prm["resource"] == url and prm["authorization_servers"]
            issuer = prm["authorization_servers"][0].rstrip("/")
            async with s.get(issuer + "/.well-known/oauth-authorization-server") as r:
                asm = await r.json()
            assert asm["code_challenge_methods_supported"] == ["S256"]
            assert asm["registration_endpoint"]

        svc = ctx.service_account  # the platform's operator
        assert svc.password
        person = Person(svc.user_id, "wrong", name)
        person.right = svc.password
        oauth = OAuthClientProvider(
            server_url=url,
            client_metadata=OAuthClientMetadata(
                client_name="test client",
                redirect_uris=["http://127.0.0.1:9/callback"],  # type: ignore[list-item]
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                scope=f"agent:{name}",
            ),
            storage=MemoryStorage(),
            redirect_handler=person.open,
            callback_handler=person.callback,
        )
        async with (
            create_mcp_http_client(auth=oauth) as http,
            Client(streamable_http_client(url, http_client=http)) as mcp,
        ):
            listed = {t.name for t in (await mcp.list_tools()).tools}
            assert listed == {n for n, spec in TOOLS.items() if spec.access == "read"}
            ok(await mcp.call_tool("list_rooms", {}))
        # The wrong password was refused on the consent page, naming the reason.
        assert person.pages and person.pages[0][0] == 403
        assert "refused" in person.pages[0][1]
    finally:
        await platform.stop()


@pytest.mark.parametrize("who", ["stranger"])
async def test_only_an_operator_may_consent(
    homeserver: TestHomeserver, tmp_path: Path, who: str
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    name = agent_name("oauth")
    assert add_agent(agents_path(ctx), name, access="read", rooms=["*"])
    service = McpService(port=free_port())
    await service.start(ctx)
    try:
        assert service.oauth is not None
        user = await homeserver.new_user(who)
        error = await service.oauth._check(user.user_id, user.password or "", name)
        assert error is not None and "not an operator" in error
        svc = ctx.service_account
        assert await service.oauth._check(svc.user_id, "not it", name) is not None
        assert await service.oauth._check(svc.user_id, svc.password or "", "nope") is not None
        assert await service.oauth._check(svc.user_id, svc.password or "", name) is None
    finally:
        await service.stop()
