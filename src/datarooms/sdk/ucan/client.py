"""Calling a service with UCANs: a fresh invocation per request (each nonce is used once)."""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import httpx2

from datarooms.sdk.ucan.did import Principal
from datarooms.sdk.ucan.tokens import Delegation, bearer, invoke


class InvocationAuth(httpx2.Auth):
    """``httpx2`` auth (the HTTP client of the official ``mcp`` SDK) that signs a new
    invocation of ``cmd`` with ``args`` for every request, proven by ``proofs`` (root
    first), as ``Authorization: Bearer <container>``.

    Use it with any httpx2 client, e.g. the official ``mcp`` client's
    ``create_mcp_http_client(auth=InvocationAuth(...))``.
    """

    def __init__(
        self,
        principal: Principal,
        cmd: str,
        args: Mapping[str, Any],
        proofs: Sequence[Delegation],
        *,
        audience: str | None = None,
        lifetime: int = 60,
    ) -> None:
        self.principal = principal
        self.cmd = cmd
        self.args = dict(args)
        self.proofs = list(proofs)
        self.audience = audience
        self.lifetime = lifetime

    def token(self) -> str:
        inv = invoke(
            self.principal,
            self.cmd,
            self.args,
            self.proofs,
            audience=self.audience,
            lifetime=self.lifetime,
        )
        return bearer(inv, self.proofs)

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request
