"""Collaborative documents: end-to-end encrypted CRDTs (Yjs through pycrdt) in data rooms.

``client.docs.open(room_id, name=...)`` gives a :class:`Document` (maps, arrays, text),
kept in step with the room in IXO's matrix-crdt format (:mod:`datarooms.sdk.docs.wire`).
See docs/documents.md.
"""

from datarooms.sdk.docs.api import BATCH_MS, SNAPSHOT_EVERY, Docs
from datarooms.sdk.docs.document import DocChange, Document, Skipped
from datarooms.sdk.docs.wire import (
    DEFAULT_NAME,
    SNAPSHOT_EVENT,
    SNAPSHOT_V2_EVENT,
    UPDATE_EVENT,
    BadUpdateError,
)

__all__ = [
    "BATCH_MS",
    "DEFAULT_NAME",
    "SNAPSHOT_EVENT",
    "SNAPSHOT_EVERY",
    "SNAPSHOT_V2_EVENT",
    "UPDATE_EVENT",
    "BadUpdateError",
    "DocChange",
    "Docs",
    "Document",
    "Skipped",
]
