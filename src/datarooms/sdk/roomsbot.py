"""Entity rooms when a rooms bot runs: the SDK asks it instead of making them itself.

A rooms bot is a Matrix application service whose registration reserves the entity
aliases (``#did-...``) of its homeserver *exclusively*: nobody else may create a
room with one (the homeserver answers ``M_EXCLUSIVE``). So where a rooms bot runs,
``client.rooms.create("entity", did=..., alias=True)`` asks it, with its REST API
(``POST /rooms/source {did, user_id, access: "admin"}``, the bot's form of IXO's
``POST /room/source``, authenticated by a Matrix OpenID token of the caller), to make
the entity's rooms (or to find them, if they exist) and to invite the caller as an
admin, as if they had made the room; the SDK then joins. Where none runs, the SDK
creates the room itself.

Which rooms bot: ``client.rooms.roomsbot_url`` if set (a URL, or a function that
finds one when needed, as the platform's services set it); else ``[roomsbot] url`` of the
settings (``DATAROOMS_ROOMSBOT_URL``); else the one the platform on the data dir runs
(``<data_dir>/run/roomsbot.json``). A rooms bot is used only if it serves the caller's
homeserver (its ``/health`` names its user).

The bot decides who may be added to an entity's rooms: the entity's controllers and
the platform's operators (``[roomsbot] operators``; the platform's service account
always is one). Anyone else gets :class:`AccessDeniedError`. The rooms bot stays the
rooms' creator; their name and topic are its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from datarooms._transport.http import SERVICE_RETRY, MatrixHttp, matrix_error
from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    UnauthorizedError,
    ValidationError,
)
from datarooms.ids import server_of

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient


def configured_roomsbot() -> str | None:
    """The rooms bot the settings name (``[roomsbot] url``), else the platform's running one."""
    from datarooms.config import load_settings

    settings = load_settings()
    return settings.roomsbot.url or settings.running_url("roomsbot")


def _error(status: int, body: Any, what: str) -> DataroomsError:
    message = str(body.get("error", "")) if isinstance(body, dict) else ""
    errcode = str(body.get("errcode", "")) if isinstance(body, dict) else ""
    by_status: dict[int, type[DataroomsError]] = {
        400: ValidationError,
        401: UnauthorizedError,
        403: AccessDeniedError,
        404: NotFoundError,
    }
    cls = by_status.get(status)
    if cls is None:
        return matrix_error(status, body, f"the rooms bot: {what}")
    return cls(
        f"the rooms bot refused {what}: {message or f'HTTP {status}'}", errcode=errcode or None
    )


async def _bot_server(bot: MatrixHttp) -> str | None:
    """The homeserver the rooms bot serves (its user's), from its ``/health``."""
    health = await bot.request("GET", "/health", auth=False)
    user = health.get("user_id") if isinstance(health, dict) else None
    return server_of(user) if isinstance(user, str) and ":" in user else None


#: A rooms bot's URL, or a function that finds it when it is needed (None: none runs).
RoomsBotLocator = str | Callable[[], str | None] | None


async def entity_room_from_roomsbot(
    client: DataroomsClient, did: str, locator: RoomsBotLocator = None
) -> tuple[str, str] | None:
    """Ask the rooms bot for ``did``'s entity room, invite the caller to it, and return its
    id and the bot's server name (the entity alias's); None if no rooms bot serves the
    caller's homeserver.

    A rooms bot named explicitly (a URL) may be another organisation's: then the caller
    must be one of the entity's controllers on a homeserver that bot trusts for
    controllers (``[roomsbot] controller_servers``), or one of its operators."""
    explicit = isinstance(locator, str)
    url = locator() if callable(locator) else locator
    url = url or (None if callable(locator) else configured_roomsbot())
    if not url:
        return None
    me = client.user_id
    async with MatrixHttp(
        url,
        retry=SERVICE_RETRY,
        name="the rooms bot",
        errors=_error,
        unreachable_errcodes=("DR_ROOMSBOT_UNREACHABLE", "DR_ROOMSBOT_TIMEOUT"),
    ) as bot:
        try:
            bot_server = await _bot_server(bot)
        except HomeserverError:
            if explicit:
                raise
            return None  # the run file is stale or the bot is stopping: make the room here
        if bot_server is None:
            raise HomeserverError(f"the rooms bot at {url} does not say which server it serves")
        if bot_server != server_of(me) and not explicit:
            return None  # another organisation's bot is used only when named
        async with MatrixHttp(client.homeserver_url, client.access_token) as hs:
            token = await hs.openid_token(me)
        res = await bot.request(
            "POST",
            "/rooms/source",
            json={"did": did, "user_id": me, "access": "admin"},
            headers={
                "Authorization": f"Bearer {token['access_token']}",
                "X-Matrix-Server-Name": str(token.get("matrix_server_name") or server_of(me)),
            },
            auth=False,
            idempotent=True,  # the bot makes an entity's rooms exactly once
        )
    room_id = res.get("room_id") if isinstance(res, dict) else None
    if not isinstance(room_id, str) or not room_id.startswith("!"):
        raise HomeserverError(f"the rooms bot at {url} answered no room id for {did}")
    return room_id, bot_server


__all__ = ["RoomsBotLocator", "configured_roomsbot", "entity_room_from_roomsbot"]
