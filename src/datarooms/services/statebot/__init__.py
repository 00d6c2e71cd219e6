"""The state bot: keyed room state and access control behind a REST API.

IXO-compatible (``ixo.room.state`` and ``ixo.room.state.acl`` events), with
Matrix OpenID authentication, ACLs, secure (end-to-end encrypted) values, and a
local cache of room state kept current by sync. See docs/statebot.md.

- :class:`StateBotService` - the platform service (``datarooms up``, ``datarooms statebot``);
- :class:`StateBot` - a running bot around an opened device;
- :class:`StateHandler` - the logic, without HTTP;
- :class:`StateBotClient` - the SDK client of the REST API.
"""

from __future__ import annotations

from datarooms.services.openid import Caller, OpenIdVerifier
from datarooms.services.statebot.access import Acl
from datarooms.services.statebot.client import OpenIdTokens, StateBotClient
from datarooms.services.statebot.errors import (
    BadPathError,
    BotPowerError,
    StateBotError,
    TooLargeError,
    UnauthorizedError,
    UnknownRoomError,
)
from datarooms.services.statebot.handler import (
    KeyInfo,
    RoomStatus,
    SetResult,
    StateHandler,
    StateValue,
)
from datarooms.services.statebot.service import StateBot, StateBotConfig, StateBotService

__all__ = [
    "Acl",
    "BadPathError",
    "BotPowerError",
    "Caller",
    "KeyInfo",
    "OpenIdTokens",
    "OpenIdVerifier",
    "RoomStatus",
    "SetResult",
    "StateBot",
    "StateBotClient",
    "StateBotConfig",
    "StateBotError",
    "StateBotService",
    "StateHandler",
    "StateValue",
    "TooLargeError",
    "UnauthorizedError",
    "UnknownRoomError",
]
