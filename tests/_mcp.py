"""Shared steps for the MCP tests: a data dir on the test homeserver, agents, MCP clients."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult

from datarooms.account import Credentials, write_credentials
from datarooms.config import Settings, load_settings
from datarooms.services.mcp.config import agents_file
from datarooms.services.platform import PlatformContext
from datarooms.testing import TestHomeserver


def agent_name(prefix: str) -> str:
    """A name no other test uses (agent accounts live on the shared test homeserver)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def agent_mxid(name: str, hs: TestHomeserver) -> str:
    return f"@agent-{name}:{hs.server_name}"


async def platform_for(hs: TestHomeserver, data_dir: Path) -> PlatformContext:
    """A data dir whose homeserver is the test Synapse (external mode, shared secret),
    with an admin service account, as `datarooms up` would have it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "datarooms.toml").write_text(
        "[homeserver]\n"
        'mode = "external"\n'
        f'url = "{hs.base_url}"\n'
        f'server_name = "{hs.server_name}"\n'
        f'registration_shared_secret = "{hs.synapse.registration_shared_secret}"\n'
    )
    settings: Settings = load_settings(data_dir=data_dir, env={})
    svc = await hs.new_user("svc", admin=True)
    creds = Credentials(hs.base_url, svc.user_id, svc.access_token, svc.device_id, svc.password)
    write_credentials(settings.credentials_file, creds)
    return PlatformContext(settings, hs.base_url, creds, None)


def agents_path(ctx: PlatformContext) -> Path:
    return agents_file(ctx.settings.data_dir)


@asynccontextmanager
async def http_client(url: str, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def ok(result: CallToolResult) -> dict[str, Any]:
    """The structured result of a successful call (fails the test with the error text)."""
    assert not result.is_error, text(result)
    if result.structured_content is not None:
        return dict(result.structured_content)
    return dict(json.loads(text(result)))


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def error(result: CallToolResult) -> str:
    assert result.is_error, f"expected an error, got {text(result)}"
    return text(result)


def audit_lines(ctx: PlatformContext) -> list[dict[str, Any]]:
    path = ctx.settings.data_dir / "logs" / "mcp-audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trust_operators(path: Path, *user_ids: str) -> None:
    """``[mcp] operators``: users whose rooms' kind and DID the agents believe."""
    listed = ", ".join(json.dumps(u) for u in user_ids)
    with path.open("a") as f:
        f.write(f"\n[mcp]\noperators = [{listed}]\n")
