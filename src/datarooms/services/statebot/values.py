"""JSON values of state keys: JSON Pointer paths, merging, and Matrix's limits.

The implementation is the SDK's (:mod:`datarooms.sdk.state`, where the rules are
documented); this module keeps the names the state bot has always exported.
"""

from __future__ import annotations

from datarooms.sdk.state import (
    MAX_DEPTH,
    MAX_PATH_DEPTH,
    MAX_PATH_LENGTH,
    Mode,
    check_json,
    check_size,
    encoded_size,
    format_path,
    get_at,
    kind_of,
    merge_patch,
    parse_path,
    put_at,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_PATH_DEPTH",
    "MAX_PATH_LENGTH",
    "Mode",
    "check_json",
    "check_size",
    "encoded_size",
    "format_path",
    "get_at",
    "kind_of",
    "merge_patch",
    "parse_path",
    "put_at",
]
