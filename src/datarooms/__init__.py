"""datarooms: sovereign, end-to-end encrypted data rooms and messaging on Matrix."""

from __future__ import annotations

from datarooms.account import Credentials, resolve_credentials
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

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "ConfigError",
    "Credentials",
    "DataroomsError",
    "HomeserverError",
    "NotFoundError",
    "PlatformError",
    "Settings",
    "ValidationError",
    "__version__",
    "load_settings",
    "resolve_credentials",
]
