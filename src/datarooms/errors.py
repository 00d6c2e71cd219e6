"""The exceptions datarooms raises.

Every error carries a Matrix-style ``errcode`` (``M_...`` for errors the
homeserver gave us, ``DR_...`` for our own) and a message that says what went
wrong and what to do about it. The CLI prints the message and exits non-zero;
the REST services answer ``{"errcode": ..., "error": ...}``.
"""

from __future__ import annotations

from typing import Any


class DataroomsError(Exception):
    """Base class of every error datarooms raises on purpose."""

    errcode: str = "DR_UNKNOWN"
    http_status: int = 500

    def __init__(self, message: str, *, errcode: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if errcode is not None:
            self.errcode = errcode

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.message}


class ConfigError(DataroomsError):
    """The configuration file or an environment override is invalid."""

    errcode = "DR_BAD_CONFIG"
    http_status = 400


class ValidationError(DataroomsError):
    """Input was rejected before anything was sent."""

    errcode = "DR_INVALID"
    http_status = 400


class NotFoundError(DataroomsError):
    errcode = "DR_NOT_FOUND"
    http_status = 404


class UnauthorizedError(DataroomsError):
    """No credentials, or credentials the caller's homeserver does not vouch for."""

    errcode = "M_UNKNOWN_TOKEN"
    http_status = 401


class AccessDeniedError(DataroomsError):
    errcode = "DR_FORBIDDEN"
    http_status = 403


class HomeserverError(DataroomsError):
    """The homeserver could not be reached or refused a request."""

    errcode = "DR_HOMESERVER"
    http_status = 502

    def __init__(
        self, message: str, *, errcode: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, errcode=errcode)
        self.status = status


class PlatformError(DataroomsError):
    """The local platform (embedded homeserver and services) cannot start or stop."""

    errcode = "DR_PLATFORM"


class PortInUseError(PlatformError):
    errcode = "DR_PORT_IN_USE"


class DataDirError(PlatformError):
    errcode = "DR_DATA_DIR"


class AlreadyRunningError(PlatformError):
    errcode = "DR_ALREADY_RUNNING"

    def __init__(self, message: str, *, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class DeviceBusyError(DataroomsError):
    """Another process has this device's store open in a way that excludes this one."""

    errcode = "DR_DEVICE_BUSY"


class NotRunningError(PlatformError):
    errcode = "DR_NOT_RUNNING"


class SynapseStartError(PlatformError):
    """Synapse exited or never became healthy; the message ends with its log tail."""

    errcode = "DR_HOMESERVER_START"


class MissingDependencyError(PlatformError):
    errcode = "DR_MISSING_DEPENDENCY"
