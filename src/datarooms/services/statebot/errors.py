"""Errors of the state bot, in the Matrix style: ``{"errcode": ..., "error": ...}``.

They extend :mod:`datarooms.errors`, so the CLI prints them like any other error
and the REST layer answers each with its ``http_status``.
"""

from __future__ import annotations

from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    NotFoundError,
    UnauthorizedError,
    ValidationError,
)


class TooLargeError(ValidationError):
    """A value or request body over the limit (Matrix events are capped at 65,536 bytes)."""

    errcode = "M_TOO_LARGE"
    http_status = 413


class BadPathError(ValidationError):
    """A JSON Pointer that is malformed, or that goes through something that is not a container."""

    errcode = "DR_BAD_PATH"


class BotPowerError(AccessDeniedError):
    """The state bot itself lacks the power in the room to do what was asked."""

    errcode = "DR_BOT_POWER"


class UnknownRoomError(NotFoundError):
    """The state bot is not in the room (or the room does not exist)."""

    errcode = "DR_UNKNOWN_ROOM"


class StateBotError(DataroomsError):
    """An error answer from the state bot, as the SDK client sees it."""

    def __init__(self, message: str, *, errcode: str, status: int) -> None:
        super().__init__(message, errcode=errcode)
        self.http_status = status


__all__ = [
    "BadPathError",
    "BotPowerError",
    "StateBotError",
    "TooLargeError",
    "UnauthorizedError",
    "UnknownRoomError",
]
