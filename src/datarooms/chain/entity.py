"""IXO entities as the chain reports them, and the parser that reads them from tx results.

``MsgCreateEntity`` on an IXO chain (Cosmos SDK 0.50 on CometBFT 0.38) emits typed
events, each rendered by the SDK as one ABCI event whose attribute values are JSON:

- ``ixo.entity.v1beta1.EntityCreatedEvent``: ``entity`` (the Entity as JSON: ``id``,
  ``type``, ``status``, ``relayer_node``, ``metadata``, ...), ``signer`` (a JSON string:
  the owner's DID) and ``msg_index``;
- ``ixo.iid.v1beta1.IidDocumentCreatedEvent``: ``iidDocument`` (the entity's DID document,
  whose ``controller`` list names the DIDs that control it) and ``msg_index``;
- ``message``: ``action=/ixo.entity.v1beta1.MsgCreateEntity``, ``sender``, ``module``.

The parser is strict where a mistake would do harm and lenient elsewhere:

- an event whose ``entity`` attribute is missing, not JSON, not an object, or whose ``id``
  is not a DID is *skipped with a reason* (never raised), so one bad event cannot stop
  the watcher or the entities after it;
- fields this code does not know are ignored (IXO adds fields between chain versions)
  and logged once per name;
- a controller that is not a DID is dropped from the controllers (and logged); the
  entity itself is still accepted.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from datarooms.errors import ValidationError
from datarooms.ids import did as check_did

log = logging.getLogger(__name__)

ENTITY_CREATED_EVENT = "ixo.entity.v1beta1.EntityCreatedEvent"
IID_CREATED_EVENT = "ixo.iid.v1beta1.IidDocumentCreatedEvent"
MSG_CREATE_ENTITY = "/ixo.entity.v1beta1.MsgCreateEntity"
#: What the watcher subscribes to and searches for: every tx that created an entity.
ENTITY_CREATED_QUERY = f"tm.event='Tx' AND message.action='{MSG_CREATE_ENTITY}'"

#: Fields of ``ixo.entity.v1beta1.Entity`` (proto names, as the SDK renders them), plus
#: ``controller``/``owner``/``context``/``service`` that some IXO tools put on entities.
KNOWN_ENTITY_FIELDS = frozenset(
    {
        "id",
        "type",
        "start_date",
        "end_date",
        "status",
        "relayer_node",
        "credentials",
        "entity_verified",
        "metadata",
        "accounts",
        "controller",
        "owner",
        "context",
        "service",
        "startDate",
        "endDate",
        "relayerNode",
        "entityVerified",
    }
)
_MAX_TYPE_LENGTH = 255
_MATRIX_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")
_warned_fields: set[str] = set()


@dataclass(frozen=True)
class ChainEntity:
    """An entity registered on the chain, as far as the rooms bot needs it."""

    did: str
    type: str | None
    #: Controller DIDs: the owner (signer) first, then the DID document's controllers;
    #: the entity's own DID is left out.
    controllers: tuple[str, ...]
    height: int
    tx_hash: str
    status: int | None = None
    relayer_node: str | None = None
    chain_id: str | None = None


@dataclass(frozen=True)
class SkippedEvent:
    """An event the parser refused, and why (kept for logs, metrics and ``/health``)."""

    height: int
    tx_hash: str
    reason: str


@dataclass
class ParsedTx:
    entities: list[ChainEntity] = field(default_factory=list)
    skipped: list[SkippedEvent] = field(default_factory=list)


def controller_localpart(did: str) -> str | None:
    """The Matrix localpart of a chain account's DID, by IXO's convention.

    ``did:ixo:ixo1abc`` → ``did-ixo-ixo1abc`` (every ``:`` becomes ``-``). DIDs that
    would not make a valid Matrix localpart (upper case, ``%``) have no user: ``None``.
    """
    local = did.replace(":", "-")
    if len(local) > 200 or not _MATRIX_LOCALPART.match(local):
        return None
    return local


def controller_user_id(did: str, server_name: str) -> str | None:
    """``@did-ixo-<address>:<server>`` for a controller DID, or None if it has no user."""
    local = controller_localpart(did)
    return f"@{local}:{server_name}" if local else None


def parse_tx_events(height: int, tx_hash: str, events: Any) -> ParsedTx:
    """Every entity one tx created, and every entity event in it that had to be skipped."""
    out = ParsedTx()
    if not isinstance(events, list):
        out.skipped.append(SkippedEvent(height, tx_hash, "tx_result.events is not a list"))
        return out
    iid_docs: dict[str, list[dict[str, Any]]] = {}
    created: list[tuple[str, dict[str, str]]] = []
    for raw in events:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            continue
        etype = raw["type"]
        if etype not in (ENTITY_CREATED_EVENT, IID_CREATED_EVENT):
            continue
        attrs = _attributes(raw.get("attributes"))
        if attrs is None:
            out.skipped.append(SkippedEvent(height, tx_hash, f"{etype} has malformed attributes"))
            continue
        msg_index = attrs.get("msg_index", "")
        if etype == IID_CREATED_EVENT:
            doc = _json_object(attrs.get("iidDocument"))
            if doc is not None:
                iid_docs.setdefault(msg_index, []).append(doc)
        else:
            created.append((msg_index, attrs))
    for msg_index, attrs in created:
        result = _entity_from(height, tx_hash, attrs, iid_docs.get(msg_index, []))
        if isinstance(result, SkippedEvent):
            out.skipped.append(result)
        else:
            out.entities.append(result)
    return out


def _entity_from(
    height: int, tx_hash: str, attrs: dict[str, str], docs: list[dict[str, Any]]
) -> ChainEntity | SkippedEvent:
    def skip(reason: str) -> SkippedEvent:
        return SkippedEvent(height, tx_hash, reason)

    raw = attrs.get("entity")
    if raw is None:
        return skip("EntityCreatedEvent has no 'entity' attribute")
    try:
        entity: Any = json.loads(raw)
        if isinstance(entity, str):  # double-encoded: a JSON string holding the JSON
            entity = json.loads(entity)
    except (ValueError, TypeError) as exc:
        return skip(f"the 'entity' attribute is not valid JSON ({exc})")
    if not isinstance(entity, dict):
        return skip(f"the 'entity' attribute is JSON {type(entity).__name__}, not an object")
    unknown = sorted(set(entity) - KNOWN_ENTITY_FIELDS)
    fresh = [f for f in unknown if f not in _warned_fields]
    if fresh:
        _warned_fields.update(fresh)
        log.info(
            "ignoring entity fields this version does not know",
            extra={"fields": ", ".join(fresh[:20])},
        )
    eid = entity.get("id")
    if not isinstance(eid, str) or not eid:
        return skip("the entity has no 'id'")
    try:
        did = str(check_did(eid))
    except ValidationError:
        return skip(f"the entity id {eid[:120]!r} is not a DID")
    etype = entity.get("type")
    if etype is not None and not isinstance(etype, str):
        return skip(f"entity {did}: 'type' must be text, got {type(etype).__name__}")
    if isinstance(etype, str):
        etype = etype.strip()[:_MAX_TYPE_LENGTH] or None
    status = entity.get("status")
    if isinstance(status, str) and status.lstrip("-").isdigit():
        status = int(status)
    if status is not None and (not isinstance(status, int) or isinstance(status, bool)):
        return skip(f"entity {did}: 'status' must be a number, got {type(status).__name__}")
    relayer = entity.get("relayer_node", entity.get("relayerNode"))
    relayer = relayer if isinstance(relayer, str) and relayer else None

    candidates: list[Any] = [_signer(attrs.get("signer"))]
    candidates.extend(_as_list(entity.get("owner")))
    candidates.extend(_as_list(entity.get("controller")))
    for doc in docs:
        if doc.get("id") in (None, did):
            candidates.extend(_as_list(doc.get("controller")))
    controllers = _controllers(did, candidates)
    return ChainEntity(did, etype, controllers, height, tx_hash, status, relayer)


def _controllers(entity_did: str, candidates: Iterable[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for c in candidates:
        if c is None or c == "":
            continue
        if not isinstance(c, str):
            log.warning("ignoring a controller that is not text", extra={"entity": entity_did})
            continue
        try:
            d = str(check_did(c))
        except ValidationError:
            log.warning(
                "ignoring a controller that is not a DID",
                extra={"entity": entity_did, "controller": c[:120]},
            )
            continue
        if d != entity_did and d not in out:
            out.append(d)
    return tuple(out)


def _signer(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return raw  # older SDKs put the plain string
    return value if isinstance(value, str) else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _attributes(raw: Any) -> dict[str, str] | None:
    if not isinstance(raw, list):
        return None
    out: dict[str, str] = {}
    for a in raw:
        if not isinstance(a, dict) or not isinstance(a.get("key"), str):
            return None
        value = a.get("value")
        out[a["key"]] = value if isinstance(value, str) else json.dumps(value)
    return out


def _json_object(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
