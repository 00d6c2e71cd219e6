"""datarooms: sovereign, end-to-end encrypted data rooms and messaging on Matrix.

The SDK's names are re-exported here and imported on first use, so that tools
which need only a little of the package (``datarooms up``) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from datarooms.account import Credentials, resolve_credentials
from datarooms.config import Settings, load_settings
from datarooms.errors import (
    AccessDeniedError,
    ConfigError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    PlatformError,
    UnauthorizedError,
    ValidationError,
)

if TYPE_CHECKING:
    from datarooms._store.index import Record
    from datarooms.sdk.attachments import EncryptedFile, TamperedFileError
    from datarooms.sdk.client import DataroomsClient
    from datarooms.sdk.files import FileRef
    from datarooms.sdk.rooms import DataRoom, MemberAccess
    from datarooms.sdk.timeline import RoomEvent

__version__ = "0.1.0"

_LAZY = {
    "DataroomsClient": "datarooms.sdk.client",
    "EncryptedFile": "datarooms.sdk.attachments",
    "TamperedFileError": "datarooms.sdk.attachments",
    "Record": "datarooms._store.index",
    "FileRef": "datarooms.sdk.files",
    "DataRoom": "datarooms.sdk.rooms",
    "MemberAccess": "datarooms.sdk.rooms",
    "RoomEvent": "datarooms.sdk.timeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'datarooms' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
    "UnauthorizedError",
    "ValidationError",
    "__version__",
    "load_settings",
    "resolve_credentials",
]
