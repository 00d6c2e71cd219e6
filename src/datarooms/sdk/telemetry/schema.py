"""The telemetry event type (its schema lives in :mod:`datarooms.events`) and size limits."""

from __future__ import annotations

from datarooms.events import TELEMETRY_BATCH
from datarooms.events import TELEMETRY_BATCH_SCHEMA as BATCH_SCHEMA

#: Compressed payload bytes a batch may carry inline; larger ones go as encrypted
#: media. 30,000 bytes are 40,000 base64 characters, about 54 KB once Megolm
#: encrypts (and base64-encodes) the event: well under Matrix's 65,536-byte limit.
INLINE_MAX_BYTES = 30_000
#: The largest inline payload a writer may be configured for (about 58 KB events).
INLINE_LIMIT_BYTES = 32_000


__all__ = ["BATCH_SCHEMA", "INLINE_LIMIT_BYTES", "INLINE_MAX_BYTES", "TELEMETRY_BATCH"]
