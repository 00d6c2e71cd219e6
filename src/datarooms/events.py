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

#: A batch of telemetry samples (timeline event, always end-to-end encrypted);
#: the payload encoding is in docs/telemetry.md.
TELEMETRY_BATCH = "io.datarooms.telemetry.batch"

TELEMETRY_BATCH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.telemetry.batch.json",
    "title": "io.datarooms.telemetry.batch (decrypted content)",
    "description": "A batch of time-series samples from one writer. Sent as an m.room.encrypted event; this is the content of the decrypted event. The samples are in the payload, encoded as described in docs/telemetry.md, either inline (data) or in an encrypted media upload (file). Readers keep one copy per (sender, stream, seq).",
    "type": "object",
    "required": ["v", "stream", "seq", "n", "t0", "t1", "enc"],
    "properties": {
        "v": {"const": 1},
        "stream": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "description": "The writer's outbox stream id: random, fixed for the life of the writer's outbox.",
        },
        "seq": {
            "type": "integer",
            "minimum": 1,
            "description": "Batch number in the stream, from 1. A resent batch keeps its seq.",
        },
        "n": {"type": "integer", "minimum": 1, "maximum": 1000000},
        "t0": {
            "type": "integer",
            "minimum": 0,
            "maximum": 9007199254740991,
            "description": "The earliest sample time in the batch (ms since the epoch).",
        },
        "t1": {
            "type": "integer",
            "minimum": 0,
            "maximum": 9007199254740991,
            "description": "The latest sample time in the batch (ms since the epoch).",
        },
        "enc": {
            "const": "dr-tlm1+zlib",
            "description": "The payload encoding (docs/telemetry.md).",
        },
        "data": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "The payload, inline: unpadded standard base64.",
        },
        "file": {
            "type": "object",
            "description": "The payload as an encrypted attachment: the Matrix EncryptedFile object (v2, AES-256-CTR, SHA-256 of the ciphertext).",
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


#: The entity a room or space belongs to (state event, state_key ""), set by the rooms bot.
ENTITY = "io.datarooms.entity"

ENTITY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.entity.json",
    "title": 'io.datarooms.entity (state, state_key "")',
    "description": "The entity a room or space belongs to. Room state is NOT encrypted; "
    "everything here is public on the chain anyway.",
    "type": "object",
    "required": ["did", "controllers", "source", "version"],
    "properties": {
        "did": {"type": "string"},
        "type": {"type": ["string", "null"], "description": "IXO entity type, if known"},
        "controllers": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Controller DIDs (owner first)",
        },
        "source": {
            "enum": ["chain", "request"],
            "description": "chain: from the entity's registration; request: created "
            "on demand before the bot saw the chain",
        },
        "chain_id": {"type": "string"},
        "height": {"type": "integer"},
        "tx_hash": {"type": "string"},
        "version": {"const": 1},
    },
}

#: Per-minute rollups of telemetry whose raw batches a retention cleanup removed
#: (timeline event, always end-to-end encrypted): a device that comes later still
#: gets the minutes' count, min, max, sum and last value.
TELEMETRY_ROLLUP = "io.datarooms.telemetry.rollup"

TELEMETRY_ROLLUP_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.telemetry.rollup.json",
    "title": "io.datarooms.telemetry.rollup (decrypted content)",
    "description": "Per-minute rollups of raw telemetry that a retention cleanup redacted. "
    "Each minute's figures replace what a reader's index holds for that minute (the same, "
    "where it saw the raw samples).",
    "type": "object",
    "required": ["v", "series"],
    "properties": {
        "v": {"const": 1},
        "until": {"type": "integer", "description": "The cleanup's cutoff, ms"},
        "series": {
            "type": "array",
            "maxItems": 1000,
            "items": {
                "type": "object",
                "required": ["metric", "minutes"],
                "properties": {
                    "metric": {"type": "string", "minLength": 1, "maxLength": 255},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "minutes": {
                        "type": "array",
                        "maxItems": 10000,
                        "items": {
                            "type": "array",
                            "description": "[minute since the epoch, n, min, max, sum, "
                            "last_ts, last_value]",
                            "prefixItems": [
                                {"type": "integer"},
                                {"type": "integer", "minimum": 1},
                                {"type": "number"},
                                {"type": "number"},
                                {"type": "number"},
                                {"type": "integer"},
                                {"type": "number"},
                            ],
                            "minItems": 7,
                            "maxItems": 7,
                        },
                    },
                },
            },
        },
    },
}

#: A room's access-review schedule (state event, state_key "").
REVIEW = "io.datarooms.review"
#: The key, in an m.notice's content, of a posted access review report.
REVIEW_REPORT = "io.datarooms.review.report"

REVIEW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.review.json",
    "title": 'io.datarooms.review (state, state_key "")',
    "description": "How often the room's access is reviewed; whoever runs the reviews (the "
    "state bot) posts the report into the room, encrypted, mentioning its admins. Empty "
    "content: no scheduled reviews. Room state is NOT encrypted: nothing sensitive here.",
    "type": "object",
    "properties": {
        "interval_days": {"type": "integer", "minimum": 1, "maximum": 3650},
        "stale_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 3650,
            "description": "A member not active for this long is a finding (default 90).",
        },
        "grant_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 3650,
            "description": "Write or admin access held for longer is a finding (default: never).",
        },
    },
}

#: A room's retention policy (state event, state_key "").
RETENTION = "io.datarooms.retention"

RETENTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.retention.json",
    "title": 'io.datarooms.retention (state, state_key "")',
    "description": "How long old data stays in the room; a cleanup (datarooms cleanup) redacts "
    "what is older. Empty content: keep everything. Room state is NOT encrypted: nothing "
    "sensitive here.",
    "type": "object",
    "properties": {
        "record_versions_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 36500,
            "description": "Record versions older than this go, except each key's latest.",
        },
        "files_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 36500,
            "description": "Files older than this go (their events and, on our homeserver, "
            "their media).",
        },
        "telemetry_raw_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 36500,
            "description": "Raw telemetry older than this goes; its per-minute rollups stay "
            "(posted as io.datarooms.telemetry.rollup before the raw batches are redacted).",
        },
        "legal_hold": {
            "type": "boolean",
            "description": "True: no cleanup of this room, whatever else the policy says.",
        },
    },
}


#: A signed claim (W3C Verifiable Credential 2.0 with an eddsa-jcs-2022 proof) saved into
#: a collection of a verification room (timeline event, always end-to-end encrypted).
CLAIM = "io.datarooms.claim"
MAX_COLLECTION_LENGTH = 128

CLAIM_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.claim.json",
    "title": "io.datarooms.claim (decrypted content)",
    "description": "A claim saved into a collection. Sent as an m.room.encrypted event; this "
    "is the content of the decrypted event. cid is the CIDv1 (json codec, sha2-256, base32) "
    "of the RFC 8785 canonical bytes of the credential, proof included; each evidence entry "
    "of the credential names the CID of its plaintext bytes and the room event that carries "
    "the encrypted file or record.",
    "type": "object",
    "required": ["collection", "cid", "credential", "v"],
    "properties": {
        "v": {"const": 1},
        "collection": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._:-]{1,128}$",
            "description": "The collection (IXO: the claim collection id) the claim is saved into.",
        },
        "cid": {"type": "string", "pattern": "^b[a-z2-7]+$"},
        "saved_by": {
            "type": "string",
            "description": "The user a service (the claims service) saved the claim for, "
            "after verifying who they are; the event's sender is then the service's bot.",
        },
        "credential": {
            "type": "object",
            "required": ["@context", "type", "issuer", "credentialSubject", "proof"],
            "description": "The Verifiable Credential, with its DataIntegrityProof.",
        },
    },
}


#: A room that forwards outside Matrix says so (state event, state_key ""; docs/automation.md).
FORWARDING = "io.datarooms.forwarding"
FORWARDING_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.forwarding.json",
    "title": "io.datarooms.forwarding (state event, not encrypted)",
    "description": "Declared by a room admin: the room's alert summaries are forwarded outside "
    "Matrix, leaving end-to-end encryption. Only each destination's host is here (a webhook "
    "URL is a secret); the automation service holds the URLs. It counts only when its sender "
    "is an admin and the room requires admin power for this event type.",
    "type": "object",
    "required": ["forwards"],
    "properties": {
        "forwards": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["kind", "destination"],
                "properties": {
                    "kind": {"enum": ["json", "slack", "ntfy"]},
                    "destination": {"type": "string", "minLength": 1, "maxLength": 255},
                    "summary_only": {"type": "boolean"},
                },
            },
        }
    },
}

#: A room's moderation: the Matrix policy lists it follows and its flood control (state
#: event, state_key ""; docs/automation.md, "Moderation").
MODERATION = "io.datarooms.moderation"
MODERATION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datarooms.io/schemas/io.datarooms.moderation.json",
    "title": "io.datarooms.moderation (state event, not encrypted)",
    "description": "Set by a room admin: the automation service applies the m.ban rules of "
    "these policy list rooms (m.policy.rule.user / .server / .room) to the room, bans and "
    "server ACL denials, redacting a banned user's recent events when redact is true; and "
    "flood control: more than max_messages events of one sender within per_seconds mutes "
    "the sender (power levels) and/or redacts the flood. It counts only when its sender is "
    "an admin and the room requires admin power for this event type.",
    "type": "object",
    "properties": {
        "policy_lists": {
            "type": "array",
            "items": {"type": "string", "pattern": "^!"},
            "maxItems": 50,
        },
        "redact": {"type": "boolean"},
        "flood": {
            "type": "object",
            "required": ["max_messages", "per_seconds"],
            "properties": {
                "max_messages": {"type": "integer", "minimum": 1, "maximum": 10000},
                # Whole seconds: Matrix events carry no floats (canonical JSON).
                "per_seconds": {"type": "integer", "minimum": 1, "maximum": 86400},
                "action": {"enum": ["mute", "redact", "mute_and_redact"]},
            },
        },
    },
}

ALL_SCHEMAS = {
    FORWARDING: FORWARDING_SCHEMA,
    MODERATION: MODERATION_SCHEMA,
    RECORD: RECORD_SCHEMA,
    ROOM_INFO: ROOM_INFO_SCHEMA,
    SCHEMA: SCHEMA_EVENT_SCHEMA,
    TELEMETRY_BATCH: TELEMETRY_BATCH_SCHEMA,
    ENTITY: ENTITY_SCHEMA,
    REVIEW: REVIEW_SCHEMA,
    RETENTION: RETENTION_SCHEMA,
    TELEMETRY_ROLLUP: TELEMETRY_ROLLUP_SCHEMA,
    CLAIM: CLAIM_SCHEMA,
}
