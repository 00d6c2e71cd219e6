"""The event types datarooms defines, with their JSON Schemas.

All new types live in one namespace, ``io.datarooms.*``. Each is documented in
docs/events/ with the same schema as here (a test keeps the two equal).
IXO's own types (``ixo.room.state``, ``ixo.room.state.acl``) are used as IXO
defines them.
"""

from __future__ import annotations

from typing import Any

#: A versioned record in a data room (timeline event, always end-to-end encrypted).
RECORD = "io.datarooms.record"
#: What a data room is: kind, purpose, entity DID (state event, state_key "").
ROOM_INFO = "io.datarooms.room"
#: A JSON Schema that records in this room may be validated against
#: (state event, state_key = the schema's name).
SCHEMA = "io.datarooms.schema"

ROOM_KINDS = ("entity", "project", "device", "verification", "collaboration")

#: The largest record, as the serialized JSON of its content. An encrypted event
#: grows by about 4/3 (base64) plus a few hundred bytes of envelope, and Matrix
#: caps a whole event at 65,536 bytes; this leaves a safe margin.
MAX_RECORD_BYTES = 44 * 1024
MAX_KEY_LENGTH = 255

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.record.json",
    "title": "io.datarooms.record (decrypted content)",
    "description": "One version of a keyed record. Sent as an m.room.encrypted event; this is "
    "the content of the decrypted event. Each event is a new version of its key; the latest "
    "by (origin_server_ts, event_id) is the key's current value.",
    "type": "object",
    "required": ["key", "value", "txn"],
    "properties": {
        "key": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
        "value": {"description": "Any JSON value."},
        "schema": {
            "type": "string",
            "description": "Name of the io.datarooms.schema state event the value was "
            "validated against, if any.",
        },
        "txn": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "Writer-chosen transaction id; readers keep one version per txn.",
        },
    },
}

ROOM_INFO_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.room.json",
    "title": 'io.datarooms.room (state, state_key "")',
    "description": "What a data room is for. Room state is NOT encrypted: nothing sensitive here.",
    "type": "object",
    "required": ["kind", "version"],
    "properties": {
        "kind": {"enum": list(ROOM_KINDS)},
        "purpose": {"type": "string", "maxLength": 1024},
        "did": {"type": "string", "description": "The entity's DID, for entity-bound rooms."},
        "version": {"const": 1},
    },
}

SCHEMA_EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.schema.json",
    "title": "io.datarooms.schema (state, state_key = schema name)",
    "description": "A JSON Schema (draft 2020-12) for record values. Room state is NOT "
    "encrypted: the schema (not the data) is visible to the homeserver.",
    "type": "object",
    "required": ["schema"],
    "properties": {"schema": {"type": "object"}},
}

ALL_SCHEMAS = {
    RECORD: RECORD_SCHEMA,
    ROOM_INFO: ROOM_INFO_SCHEMA,
    SCHEMA: SCHEMA_EVENT_SCHEMA,
}
