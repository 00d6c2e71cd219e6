"""IXO's matrix-crdt wire format, and the checks every incoming Yjs update goes through.

The event shapes are those of ixoworld/ixo-matrix-crdt (``MatrixCRDTEventTranslator.ts``
and ``snapshots/snapshotV2.ts``):

- ``matrix-crdt.doc_update``: ``{"update": base64(Yjs update v1)}``;
- ``matrix-crdt.doc_snapshot``: ``{"update": base64(the whole document), "last_event_id"}``;
- ``matrix-crdt.doc_snapshot_v2``: ``{"v": 2, "mxc_url", "last_event_id",
  "state_vector": base64(Y.encodeStateVectorFromUpdate(doc)), "size", "file"}``, the
  document in an encrypted attachment (the spec's ``EncryptedFile``).

Base64 is standard and padded (Node's ``Buffer.toString("base64")``); readers accept it
unpadded too. datarooms adds one optional field, ``"doc"``: the document's name, for
rooms that hold several documents. The default document carries no ``"doc"`` field, so
it is exactly what an IXO client reads and writes. The name sits inside the event
content, which Megolm encrypts: the homeserver does not learn it.

Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from typing import Any

import pycrdt

from datarooms.errors import ValidationError

log = logging.getLogger(__name__)

UPDATE_EVENT = "matrix-crdt.doc_update"
SNAPSHOT_EVENT = "matrix-crdt.doc_snapshot"
SNAPSHOT_V2_EVENT = "matrix-crdt.doc_snapshot_v2"
EVENT_TYPES = (UPDATE_EVENT, SNAPSHOT_EVENT, SNAPSHOT_V2_EVENT)
SNAPSHOT_V2_VERSION = 2

#: The default document of a room: no ``doc`` field on the wire (IXO's one document).
DEFAULT_NAME = "default"
#: The field naming a document other than the default one (inside the encrypted content).
NAME_FIELD = "doc"

#: IXO's inline ceilings (bytes of the Yjs update): a Matrix event is at most 64 KiB, an
#: inline update is base64 (4/3), and in an encrypted room the Megolm ciphertext is base64
#: again (16/9 in all).
INLINE_MAX_BYTES = 45 * 1024
INLINE_MAX_BYTES_ENCRYPTED = 32 * 1024
#: No update event can carry more than this (the event limit itself); bigger is refused.
MAX_EVENT_UPDATE_BYTES = 48 * 1024
#: A media-backed snapshot larger than this is not downloaded (a sanity bound).
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024

_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_MXC = re.compile(r"^mxc://[^/]+/[^/]+$")
_EMPTY_UPDATE = b"\x00\x00"


class BadUpdateError(ValidationError):
    """An update or snapshot that is not a well-formed Yjs update (or not the one announced)."""

    errcode = "DR_BAD_UPDATE"


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            f"invalid document name {name!r}: 1-128 of letters, digits, '.', '_', '~', '-'"
        )
    return name


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadUpdateError(f"{what} is missing or not a base64 string")
    text = value.strip()
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadUpdateError(f"{what} is not valid base64") from None


# -- Yjs binary helpers -------------------------------------------------------------


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise BadUpdateError("truncated variable-length integer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 70:
            raise BadUpdateError("variable-length integer too long")


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs state vector (``{client: clock}``) from its binary encoding."""
    count, pos = _read_varuint(data, 0)
    out: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        out[client] = clock
    if pos != len(data):
        raise BadUpdateError("trailing bytes after a state vector")
    return out


def check_update(update: bytes) -> bytes:
    """``update`` if it is a well-formed Yjs update (v1), else :class:`BadUpdateError`.

    It is decoded completely (nothing is applied), so a malformed or truncated update
    never reaches a document.
    """
    if not isinstance(update, bytes) or not update:
        raise BadUpdateError("an update must be non-empty bytes")
    try:
        pycrdt.get_state(update)
    except Exception as exc:  # pycrdt raises ValueError (and panics as others)
        raise BadUpdateError(f"not a well-formed Yjs update: {exc}") from None
    return update


def state_vector_of_update(update: bytes) -> bytes:
    """``Y.encodeStateVectorFromUpdate``: what a (complete) update brings, per client."""
    try:
        return bytes(pycrdt.get_state(update))
    except Exception as exc:
        raise BadUpdateError(f"not a well-formed Yjs update: {exc}") from None


def missing_dependencies(doc: pycrdt.Doc[Any], update: bytes) -> bool:
    """Whether part of ``update`` is not integrated in ``doc`` (its dependencies are missing).

    Yrs keeps such structs pending inside the document, but leaves them out of
    ``get_update()``: a snapshot taken then would silently lose them. So the caller
    tracks them: the part of ``update`` that ``doc``'s state vector does not cover must
    be empty (no structs), and every deletion must refer to clocks ``doc`` knows.
    """
    state = bytes(doc.get_state())
    diff = bytes(pycrdt.get_update(update, state))
    if diff == _EMPTY_UPDATE:
        return False
    structs, pos = _read_varuint(diff, 0)
    if structs:
        return True
    known = decode_state_vector(state)
    clients, pos = _read_varuint(diff, pos)
    for _ in range(clients):
        client, pos = _read_varuint(diff, pos)
        ranges, pos = _read_varuint(diff, pos)
        for _ in range(ranges):
            clock, pos = _read_varuint(diff, pos)
            length, pos = _read_varuint(diff, pos)
            if known.get(client, 0) < clock + length:
                return True
    return False


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class DocEvent:
    """A matrix-crdt event of one room, parsed (its payload still to be checked)."""

    event_id: str
    type: str
    sender: str
    name: str
    #: Inline update or snapshot: the decoded Yjs bytes (None for a media snapshot).
    update: bytes | None = None
    last_event_id: str | None = None
    #: Media-backed snapshot: the ``file`` object, ``mxc_url``, announced state vector, size.
    file: dict[str, Any] | None = None
    mxc_url: str | None = None
    state_vector: bytes | None = None
    size: int | None = None

    @property
    def is_snapshot(self) -> bool:
        return self.type in (SNAPSHOT_EVENT, SNAPSHOT_V2_EVENT)


def event_name(content: dict[str, Any]) -> str | None:
    """The document an event's content belongs to (None: the name is malformed)."""
    name = content.get(NAME_FIELD, DEFAULT_NAME)
    if not isinstance(name, str) or not _NAME.match(name):
        return None
    return name


def parse_event(event_id: str, event_type: str, sender: str, content: dict[str, Any]) -> DocEvent:
    """The event as a :class:`DocEvent`; :class:`BadUpdateError` says what is malformed.

    The caller skips a malformed update, and treats a malformed snapshot as an
    unreadable one (it falls back to an older one), never as an empty document.
    """
    if event_type not in EVENT_TYPES:
        raise BadUpdateError(f"{event_type} is not a matrix-crdt event type")
    name = event_name(content)
    if name is None:
        raise BadUpdateError("the document name is malformed")
    if event_type == SNAPSHOT_V2_EVENT:
        return _parse_v2(event_id, sender, name, content)
    update = b64decode(content.get("update"), "update")
    if len(update) > MAX_EVENT_UPDATE_BYTES:
        raise BadUpdateError(
            f"the update is {len(update)} bytes, over the event limit {MAX_EVENT_UPDATE_BYTES}"
        )
    last = None
    if event_type == SNAPSHOT_EVENT:
        last = content.get("last_event_id")
        if not isinstance(last, str) or not last:
            raise BadUpdateError("a snapshot needs last_event_id")
    return DocEvent(event_id, event_type, sender, name, update=update, last_event_id=last)


def _parse_v2(event_id: str, sender: str, name: str, content: dict[str, Any]) -> DocEvent:
    mxc = content.get("mxc_url")
    if not isinstance(mxc, str) or not _MXC.match(mxc):
        raise BadUpdateError("mxc_url is missing or not an mxc:// URL")
    last = content.get("last_event_id")
    if not isinstance(last, str) or not last:
        raise BadUpdateError("a snapshot needs last_event_id")
    version = content.get("v")
    if version is not None and (not isinstance(version, int) or version > SNAPSHOT_V2_VERSION):
        raise BadUpdateError(f"snapshot version {version!r} is newer than this reader")
    sv = None
    if content.get("state_vector") is not None:
        sv = b64decode(content.get("state_vector"), "state_vector")
        decode_state_vector(sv)
    size = content.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise BadUpdateError("size must be a non-negative integer")
    file = content.get("file")
    if not isinstance(file, dict):
        # Our rooms are encrypted: a snapshot must come as an encrypted attachment.
        raise BadUpdateError("a media snapshot in an encrypted room needs its file object")
    return DocEvent(
        event_id,
        SNAPSHOT_V2_EVENT,
        sender,
        name,
        last_event_id=last,
        file=file,
        mxc_url=mxc,
        state_vector=sv,
        size=size,
    )


def update_content(update: bytes, name: str) -> dict[str, Any]:
    content: dict[str, Any] = {"update": b64encode(update)}
    if name != DEFAULT_NAME:
        content[NAME_FIELD] = name
    return content


def snapshot_content(update: bytes, last_event_id: str, name: str) -> dict[str, Any]:
    content = update_content(update, name)
    content["last_event_id"] = last_event_id
    return content


def snapshot_v2_content(
    file: dict[str, Any], last_event_id: str, state_vector: bytes, size: int, name: str
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "v": SNAPSHOT_V2_VERSION,
        "mxc_url": file["url"],
        "last_event_id": last_event_id,
        "state_vector": b64encode(state_vector),
        "size": size,
        "file": file,
    }
    if name != DEFAULT_NAME:
        content[NAME_FIELD] = name
    return content


def check_snapshot_blob(blob: bytes, announced: bytes | None) -> bytes:
    """A downloaded media snapshot, checked: a Yjs update whose state vector is the one
    its event announced (IXO's ``fetchSnapshotV2Update``)."""
    if not blob:
        raise BadUpdateError("the media snapshot is empty")
    actual = decode_state_vector(state_vector_of_update(check_update(blob)))
    if announced is not None and decode_state_vector(announced) != actual:
        raise BadUpdateError(
            "the media snapshot does not match the state vector its event announced"
        )
    return blob
