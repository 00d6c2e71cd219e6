"""datarooms: sovereign, end-to-end encrypted data rooms and messaging on Matrix."""

from __future__ import annotations

from datarooms.account import Credentials, resolve_credentials
from datarooms.client import DataroomsClient
from datarooms.config import Settings, load_settings
from datarooms.errors import (
    AccessDeniedError,
    ConfigError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    PlatformError,
    ValidationError,
)
from datarooms.files import EncryptedFile, TamperedFileError
from datarooms.index import Record
from datarooms.room_files import FileRef
from datarooms.rooms import DataRoom, MemberAccess
from datarooms.timeline import RoomEvent

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "ConfigError",
    "Credentials",
    "DataRoom",
    "DataroomsClient",
    "DataroomsError",
    "EncryptedFile",
    "FileRef",
    "HomeserverError",
    "MemberAccess",
    "NotFoundError",
    "PlatformError",
    "Record",
    "RoomEvent",
    "Settings",
    "TamperedFileError",
    "ValidationError",
    "__version__",
    "load_settings",
    "resolve_credentials",
]
