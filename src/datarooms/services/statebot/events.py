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

from datarooms import events as ev

#: IXO's keyed state (state event, state_key = the key).
STATE = "ixo.room.state"
#: IXO's access-control list of one key (state event, state_key = the guarded key).
ACL = "ixo.room.state.acl"
#: The member of an ``ixo.room.state`` content that marks a secure value's reference.
SECURE = "io.datarooms.secure"
#: Records holding secure values are keyed ``ixo.room.state/<key>``.
SECURE_RECORD_PREFIX = STATE + "/"
#: Version of the secure reference format.
SECURE_VERSION = 1

#: The longest key: the record of a secure value, ``ixo.room.state/<key>``, must stay
#: within the records' key limit.
MAX_KEY_LENGTH = ev.MAX_KEY_LENGTH - len(SECURE_RECORD_PREFIX)
#: Matrix caps a whole event (PDU) at 65,536 bytes of canonical JSON.
MAX_EVENT_BYTES = 65_536
#: What the envelope of a state event takes at most, besides its content, state_key,
#: sender and room id: event type, hashes, signatures, auth and prev events, depth.
EVENT_ENVELOPE_BYTES = 1_024
#: The most user ids in one ACL list.
MAX_ACL_ENTRIES = 1_000

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
