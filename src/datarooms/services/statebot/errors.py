"""Errors of the state bot, in the Matrix style: ``{"errcode": ..., "error": ...}``.

They extend :mod:`datarooms.errors`, so the CLI prints them like any other error
and the REST layer answers each with its ``http_status``.
"""

from __future__ import annotations

from datarooms.errors import DataroomsError, NotFoundError, UnauthorizedError
from datarooms.sdk.state import BadPathError, BotPowerError, TooLargeError


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
