"""Who is calling the REST API: a Matrix OpenID token, checked with the caller's homeserver.

A client gets a token from its homeserver (``POST /_matrix/client/v3/user/{userId}/openid/
request_token``) and sends it as ``Authorization: Bearer <access_token>``, with
``X-Matrix-Server-Name: <matrix_server_name>`` when its homeserver is not this platform's.
The bot asks that homeserver who the token belongs to
(``GET /_matrix/federation/v1/openid/userinfo``) and accepts the answer only for users of
that same server. Only this platform's homeserver and those listed in
``roomsbot.trusted_homeservers`` are asked. Answers are cached briefly, keyed by a hash
of the token; tokens are never logged.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import aiohttp

from datarooms.errors import AccessDeniedError, DataroomsError, HomeserverError


class UnauthorizedError(DataroomsError):
    errcode = "M_UNAUTHORIZED"
    http_status = 401


class OpenIdVerifier:
    def __init__(
        self,
        homeserver_url: str,
        server_name: str,
        *,
        trusted: dict[str, str] | None = None,
        cache_seconds: float = 60.0,
        cache_size: int = 10_000,
        timeout: float = 10.0,
    ) -> None:
        self.server_name = server_name
        self._urls = {server_name: homeserver_url.rstrip("/"), **(trusted or {})}
        self._ttl = cache_seconds
        self._size = cache_size
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, authorization: str | None, server_name: str | None) -> str:
        """The Matrix user id the bearer token belongs to; raise 401/403 errors otherwise."""
        if not authorization:
            raise UnauthorizedError(
                "missing access token: send a Matrix OpenID token as 'Authorization: Bearer "
                "<token>' (from POST /_matrix/client/v3/user/{userId}/openid/request_token)",
                errcode="M_MISSING_TOKEN",
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 1024:
            raise UnauthorizedError(
                "the Authorization header must be 'Bearer <token>'", errcode="M_MISSING_TOKEN"
            )
        server = (server_name or self.server_name).strip()
        base = self._urls.get(server)
        if base is None:
            raise AccessDeniedError(
                f"OpenID tokens from the homeserver {server[:100]!r} are not accepted here",
                errcode="M_FORBIDDEN",
            )
        key = hashlib.sha256(f"{server}\0{token}".encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(key)
            return hit[0]
        user_id = await self._userinfo(base, token, server)
        self._cache[key] = (user_id, now + self._ttl)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return user_id

    async def _userinfo(self, base: str, token: str, server: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(
                f"{base}/_matrix/federation/v1/openid/userinfo", params={"access_token": token}
            ) as resp:
                status = resp.status
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            raise HomeserverError(
                f"cannot check the token with the homeserver of {server}; try again later"
            ) from None
        if status in (401, 403):
            raise UnauthorizedError(
                "the access token is unknown or expired: request a new OpenID token",
                errcode="M_UNKNOWN_TOKEN",
            )
        sub = body.get("sub") if isinstance(body, dict) else None
        if status != 200 or not isinstance(sub, str) or not sub.endswith(":" + server):
            raise UnauthorizedError(
                f"the homeserver of {server} did not vouch for this token",
                errcode="M_UNKNOWN_TOKEN",
            )
        return sub
