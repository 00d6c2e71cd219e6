"""``StateBotClient``: the SDK side of the state bot's REST API.

It authenticates with Matrix OpenID tokens, which it requests from the caller's
homeserver and renews shortly before they expire::

    async with StateBotClient.for_client(bot_url, client) as bot:
        await bot.set(room_id, "config", {"unit": "C"})
        unit = await bot.get(room_id, "config", "/unit")

or, without an SDK device, from an access token::

    StateBotClient.for_access_token(bot_url, homeserver_url, access_token)

Errors come back as the datarooms exceptions the bot's status means
(:class:`~datarooms.errors.ValidationError` for 400, ``UnauthorizedError`` 401,
:class:`~datarooms.errors.AccessDeniedError` 403,
:class:`~datarooms.errors.NotFoundError` 404, ``TooLargeError`` 413), with the
bot's ``errcode`` and message.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    NotFoundError,
    ValidationError,
)
from datarooms.homeserver.api import SERVICE_RETRY, MatrixApi
from datarooms.services.statebot.access import Acl
from datarooms.services.statebot.errors import (
    BadPathError,
    BotPowerError,
    StateBotError,
    TooLargeError,
    UnauthorizedError,
    UnknownRoomError,
)
from datarooms.services.statebot.handler import KeyInfo, SetResult, StateValue

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

#: Renew a token this long before its homeserver says it expires.
_RENEW_MARGIN_S = 60.0


class OpenIdTokens:
    """OpenID tokens of one Matrix account, requested from its homeserver and cached."""

    def __init__(self, homeserver_url: str, access_token: str, user_id: str | None = None) -> None:
        self._http = MatrixApi(homeserver_url, access_token)
        self.user_id = user_id
        self._token: str | None = None
        self._server: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OpenIdTokens(user_id={self.user_id!r})"

    async def get(self) -> tuple[str, str]:
        """``(token, matrix_server_name)``, fresh for at least a minute."""
        async with self._lock:
            if self._token is None or self._server is None or time.monotonic() >= self._expires:
                if self.user_id is None:
                    self.user_id = str((await self._http.whoami())["user_id"])
                res = await self._http.openid_token(self.user_id)
                lifetime = float(res.get("expires_in", 3600))
                self._token = res["access_token"]
                self._server = str(res.get("matrix_server_name") or self.user_id.split(":", 1)[1])
                self._expires = time.monotonic() + max(0.0, lifetime - _RENEW_MARGIN_S)
            return self._token, self._server

    def invalidate(self) -> None:
        self._token = None

    async def close(self) -> None:
        await self._http.close()


class StateBotClient:
    """Async client of one state bot, acting as one Matrix user."""

    def __init__(self, url: str, tokens: OpenIdTokens, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.tokens = tokens
        self._http = MatrixApi(
            self.url,
            timeout=timeout,
            retry=SERVICE_RETRY,
            name="the state bot",
            errors=lambda status, body, _what: _error(status, body),
            unreachable_errcodes=("DR_STATEBOT_UNREACHABLE", "DR_STATEBOT_TIMEOUT"),
        )

    @classmethod
    def for_client(cls, url: str, client: DataroomsClient, **kwargs: Any) -> StateBotClient:
        """Act as the user of an SDK device."""
        return cls(
            url, OpenIdTokens(client.homeserver_url, client.access_token, client.user_id), **kwargs
        )

    @classmethod
    def for_access_token(
        cls,
        url: str,
        homeserver_url: str,
        access_token: str,
        user_id: str | None = None,
        **kwargs: Any,
    ) -> StateBotClient:
        """Act as the user of a Matrix access token (its user id is looked up if not given)."""
        return cls(url, OpenIdTokens(homeserver_url, access_token, user_id), **kwargs)

    async def close(self) -> None:
        await self._http.close()
        await self.tokens.close()

    async def __aenter__(self) -> StateBotClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the API -------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/health", auth=False)
        return result

    async def room(self, room_id: str) -> dict[str, Any]:
        """The bot's and the caller's power in the room, and what the bot can do there."""
        result: dict[str, Any] = await self._call("GET", f"/v1/rooms/{_q(room_id)}")
        return result

    async def join(self, room: str) -> str:
        """Have the bot join a room it was invited to (id or alias); return the room id."""
        res = await self._call("POST", f"/v1/rooms/{_q(room)}/join")
        return str(res["room_id"])

    async def keys(self, room_id: str) -> list[KeyInfo]:
        res = await self._call("GET", f"/v1/rooms/{_q(room_id)}/state")
        return [
            KeyInfo(k["key"], k["secure"], k["has_acl"], k["readable"], k["writable"])
            for k in res["keys"]
        ]

    async def entry(self, room_id: str, key: str, path: str = "") -> StateValue:
        """The value at ``path`` of ``key``, with whether it is secure."""
        params = {"path": path} if path else None
        res = await self._call("GET", f"/v1/rooms/{_q(room_id)}/state/{_q(key)}", params=params)
        return StateValue(res["room_id"], res["key"], res["path"], res["value"], res["secure"])

    async def get(self, room_id: str, key: str, path: str = "") -> Any:
        """The value at ``path`` (a JSON Pointer; empty for the whole value) of ``key``."""
        return (await self.entry(room_id, key, path)).value

    async def set(
        self,
        room_id: str,
        key: str,
        value: Any,
        *,
        path: str = "",
        mode: Literal["merge", "replace"] = "merge",
        secure: bool | None = None,
    ) -> SetResult:
        """Merge (or replace) ``value`` at ``path`` of ``key``."""
        body: dict[str, Any] = {"value": value, "path": path, "mode": mode}
        if secure is not None:
            body["secure"] = secure
        res = await self._call("PUT", f"/v1/rooms/{_q(room_id)}/state/{_q(key)}", json=body)
        return SetResult(
            res["room_id"], res["key"], res["event_id"], res["secure"], res.get("record_event_id")
        )

    async def get_acl(self, room_id: str, key: str) -> Acl | None:
        """The ACL of ``key``, or None if it has none."""
        try:
            res = await self._call("GET", f"/v1/rooms/{_q(room_id)}/acl/{_q(key)}")
        except NotFoundError as exc:
            if exc.errcode == "DR_NOT_FOUND":
                return None
            raise
        return Acl(tuple(res["read"]), tuple(res["write"]))

    async def set_acl(self, room_id: str, key: str, *, read: list[str], write: list[str]) -> str:
        """Replace the ACL of ``key``; return the event id."""
        res = await self._call(
            "PUT",
            f"/v1/rooms/{_q(room_id)}/acl/{_q(key)}",
            json={"read": list(read), "write": list(write)},
        )
        return str(res["event_id"])

    # -- transport -------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        for attempt in range(2):
            headers = {}
            if auth:
                token, server = await self.tokens.get()
                headers = {"Authorization": f"Bearer {token}", "X-Matrix-Server-Name": server}
            answer = await self._http.answer(
                method, path, json=json, params=params, headers=headers, auth=False
            )
            status, body = answer.status, answer.body
            if status < 400:
                return body
            error = _error(status, body)
            if (
                auth
                and attempt == 0
                and isinstance(error, UnauthorizedError)
                and error.errcode == "M_UNKNOWN_TOKEN"
            ):
                self.tokens.invalidate()  # expired early, or revoked: try a fresh one once
                continue
            raise error
        raise AssertionError("unreachable")


def _q(part: str) -> str:
    return quote(part, safe="")


def _error(status: int, body: Any) -> DataroomsError:
    errcode, message = "M_UNKNOWN", f"the state bot answered HTTP {status}"
    if isinstance(body, dict):
        errcode = str(body.get("errcode", errcode))
        message = str(body.get("error", message))
    classes: dict[int, type[DataroomsError]] = {
        400: ValidationError,
        401: UnauthorizedError,
        403: AccessDeniedError,
        404: NotFoundError,
        413: TooLargeError,
    }
    by_code: dict[str, type[DataroomsError]] = {
        "DR_BOT_POWER": BotPowerError,
        "DR_UNKNOWN_ROOM": UnknownRoomError,
        "DR_BAD_PATH": BadPathError,
    }
    cls = by_code.get(errcode) if status in classes else None
    cls = cls or classes.get(status)
    if cls is None:
        return StateBotError(message, errcode=errcode, status=status)
    return cls(message, errcode=errcode)


__all__ = ["OpenIdTokens", "StateBotClient"]
