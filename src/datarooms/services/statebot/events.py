"""The state events the state bot reads and writes, as IXO defines them.

- ``ixo.room.state``: state_key = the key; content = the key's JSON value (an
  object, since Matrix event content is an object).
- ``ixo.room.state.acl``: state_key = the guarded key; content =
  ``{"read": [mxid, ...], "write": [mxid, ...]}``.

One addition of ours, in our namespace, for values marked secure: the
``ixo.room.state`` content is then only a reference,
``{"io.datarooms.secure": {...}}``, to an end-to-end encrypted
``io.datarooms.record`` in the same room that holds the value (see
docs/statebot.md). A clear value may not use that member name.
"""

from __future__ import annotations

from typing import Any

from datarooms.sdk.state import ACL_EVENT as ACL
from datarooms.sdk.state import (
    EVENT_ENVELOPE_BYTES,
    MAX_ACL_ENTRIES,
    MAX_EVENT_BYTES,
    MAX_KEY_LENGTH,
    SECURE,
    SECURE_RECORD_PREFIX,
    SECURE_VERSION,
)
from datarooms.sdk.state import STATE_EVENT as STATE

__all__ = [
    "ACL",
    "ACL_SCHEMA",
    "ALL_SCHEMAS",
    "EVENT_ENVELOPE_BYTES",
    "MAX_ACL_ENTRIES",
    "MAX_EVENT_BYTES",
    "MAX_KEY_LENGTH",
    "SECURE",
    "SECURE_RECORD_PREFIX",
    "SECURE_VERSION",
    "STATE",
    "STATE_SCHEMA",
]

STATE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/ixo.room.state.json",
    "title": "ixo.room.state (state, state_key = the key)",
    "description": "IXO's keyed room state: the content is the key's JSON value. Room state "
    "is NOT encrypted: a value marked secure is replaced by a reference to an encrypted "
    "io.datarooms.record.",
    "type": "object",
    "properties": {
        SECURE: {
            "type": "object",
            "description": "Present only for a secure value: where its encrypted record is.",
            "required": ["v", "record", "event_id", "algorithm"],
            "properties": {
                "v": {"const": SECURE_VERSION},
                "record": {
                    "type": "string",
                    "description": "Key of the io.datarooms.record holding the value: "
                    "'ixo.room.state/' + the state key.",
                },
                "event_id": {
                    "type": "string",
                    "description": "The exact record event holding the current value.",
                },
                "algorithm": {"const": "m.megolm.v1.aes-sha2"},
            },
        },
    },
}

ACL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/ixo.room.state.acl.json",
    "title": "ixo.room.state.acl (state, state_key = the guarded key)",
    "description": "IXO's access-control list of one ixo.room.state key: who may read it and "
    "who may write it through the state bot.",
    "type": "object",
    "required": ["read", "write"],
    "properties": {
        "read": {"type": "array", "items": {"type": "string", "pattern": "^@.+:.+$"}},
        "write": {"type": "array", "items": {"type": "string", "pattern": "^@.+:.+$"}},
    },
}

ALL_SCHEMAS = {STATE: STATE_SCHEMA, ACL: ACL_SCHEMA}
