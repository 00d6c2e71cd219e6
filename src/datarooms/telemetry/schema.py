"""The telemetry event type and its JSON Schema (documented in docs/events/).

These belong with the other types in :mod:`datarooms.events`; until they move
there, this module is their home and docs/events/io.datarooms.telemetry.batch.json
is kept equal to :data:`BATCH_SCHEMA` by tests/test_telemetry_encoding.py.
"""

from __future__ import annotations

from typing import Any

from datarooms.telemetry.encoding import ENCODING, MAX_BATCH_SAMPLES, MAX_TS

#: A batch of telemetry samples (timeline event, always end-to-end encrypted).
TELEMETRY_BATCH = "io.datarooms.telemetry.batch"

#: Compressed payload bytes a batch may carry inline; larger ones go as encrypted
#: media. 30,000 bytes are 40,000 base64 characters, about 54 KB once Megolm
#: encrypts (and base64-encodes) the event: well under Matrix's 65,536-byte limit.
INLINE_MAX_BYTES = 30_000
#: The largest inline payload a writer may be configured for (about 58 KB events).
INLINE_LIMIT_BYTES = 32_000

BATCH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.telemetry.batch.json",
    "title": "io.datarooms.telemetry.batch (decrypted content)",
    "description": "A batch of time-series samples from one writer. Sent as an "
    "m.room.encrypted event; this is the content of the decrypted event. The samples are "
    "in the payload, encoded as described in docs/telemetry.md, either inline (data) or in "
    "an encrypted media upload (file). Readers keep one copy per (sender, stream, seq).",
    "type": "object",
    "required": ["v", "stream", "seq", "n", "t0", "t1", "enc"],
    "properties": {
        "v": {"const": 1},
        "stream": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "description": "The writer's outbox stream id: random, fixed for the life of the "
            "writer's outbox.",
        },
        "seq": {
            "type": "integer",
            "minimum": 1,
            "description": "Batch number in the stream, from 1. A resent batch keeps its seq.",
        },
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_SAMPLES},
        "t0": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_TS,
            "description": "The earliest sample time in the batch (ms since the epoch).",
        },
        "t1": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_TS,
            "description": "The latest sample time in the batch (ms since the epoch).",
        },
        "enc": {"const": ENCODING, "description": "The payload encoding (docs/telemetry.md)."},
        "data": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "The payload, inline: unpadded standard base64.",
        },
        "file": {
            "type": "object",
            "description": "The payload as an encrypted attachment: the Matrix EncryptedFile "
            "object (v2, AES-256-CTR, SHA-256 of the ciphertext).",
            "required": ["url", "key", "iv", "hashes", "v"],
        },
        "size": {
            "type": "integer",
            "minimum": 1,
            "description": "Length of the payload in bytes (with file).",
        },
    },
    "oneOf": [{"required": ["data"]}, {"required": ["file", "size"]}],
}
