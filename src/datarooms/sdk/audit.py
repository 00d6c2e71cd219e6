"""The tamper-evident audit trail of a room: a hash chain of its events, anchored on a chain.

Every event of the room's timeline, in the order the homeserver's ``/messages`` pager
gives (the room's DAG order), is an **entry**: every data-changing act (record put, file,
claim, grant, revoke, schema change, redaction, keyed state) is an event, so each is an
entry. An entry commits to the previous entry's hash and to the Matrix event it describes:

    entry = {"v": 1, "room": room_id, "seq": n, "prev": hash(n-1) | "00"*32,
             "event_id", "type", "sender", "ts", "state_key"?, "redacts"?,
             "content": sha256(JCS(the event's content as served, i.e. the ciphertext))}
    hash(n) = sha256(JCS(entry))

Nothing in an entry depends on who reads the room or on decryption, so any member whose
history visibility covers the room reproduces the same chain from the room itself
(:meth:`Audit.update` pages it into the local index; :func:`check_trail` recomputes it).

An **anchor** commits a range of new entries on a chain: the Merkle root (RFC 6962 tree
hashing) of their hashes, the head hash and the sequence range, nothing else (the room is
named by its SHA-256). :meth:`Audit.anchor` is idempotent and crash-safe: the anchor's
transaction is deterministic, remembered before it is broadcast and its height persisted
after it is committed; a crash between the two is found on the next run by looking the
transaction up on the chain (never a second anchor, never a lost one). The chain is
whatever implements :class:`AnchorChain` (``datarooms.chain.anchor.ChainAnchor`` for the
CometBFT RPC).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from datarooms import events as ev
from datarooms._locks import KeyedLocks
from datarooms.errors import DataroomsError
from datarooms.sdk.proofs import canonical

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

__all__ = [
    "GENESIS",
    "Anchor",
    "AnchorChain",
    "Audit",
    "AuditEntry",
    "act_of",
    "entry_for",
    "event_digest",
    "merkle_root",
    "room_hash",
]

GENESIS = "00" * 32
BUNDLE_FORMAT = "datarooms.audit.bundle.v1"
_PAGE = 500
_FILE_TYPES = ("m.file", "m.image", "m.video", "m.audio")
#: Where automation puts an alert in its message (``sdk.automation.formats.ALERT_KEY``).
_ALERT_KEY = "io.datarooms.alert"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def room_hash(room_id: str) -> str:
    """How an anchor names a room on chain: SHA-256 of its id (no id on chain)."""
    return _sha256(room_id.encode())


def event_digest(raw: dict[str, Any]) -> str:
    """SHA-256 of the canonical content of an event as the homeserver serves it."""
    content = raw.get("content")
    return _sha256(canonical(content if isinstance(content, dict) else {}))


def entry_for(room_id: str, seq: int, prev: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The audit entry of one timeline event (see the module doc)."""
    entry: dict[str, Any] = {
        "v": 1,
        "room": room_id,
        "seq": seq,
        "prev": prev,
        "event_id": str(raw.get("event_id", "")),
        "type": str(raw.get("type", "")),
        "sender": str(raw.get("sender", "")),
        "ts": int(raw.get("origin_server_ts", 0)),
        "content": event_digest(raw),
    }
    if isinstance(raw.get("state_key"), str):
        entry["state_key"] = raw["state_key"]
    redacts = raw.get("redacts") or (raw.get("content") or {}).get("redacts")
    if isinstance(redacts, str):
        entry["redacts"] = redacts
    return entry


def entry_hash(entry: dict[str, Any]) -> str:
    return _sha256(canonical(entry))


def merkle_root(hashes: Sequence[str]) -> str:
    """RFC 6962 Merkle tree hash over hex leaf hashes (leaf 0x00, node 0x01 prefixes)."""
    if not hashes:
        return _sha256(b"")
    level = [hashlib.sha256(b"\0" + bytes.fromhex(h)).digest() for h in hashes]
    # Iterative form of RFC 6962's split at the largest power of two below n: pairing
    # left to right and carrying an odd last node up unchanged gives the same root.
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def act_of(event_type: str, content: dict[str, Any], sender: str, state_key: str | None) -> str:
    """What an event does, for people reading a trail (decrypted type and content)."""
    if event_type == ev.RECORD:
        return "record.put"
    if event_type == ev.CLAIM:
        return "claim"
    if event_type == ev.TELEMETRY_BATCH:
        return "telemetry"
    if event_type == "m.room.message":
        alert = content.get(_ALERT_KEY)
        if isinstance(alert, dict) and isinstance(alert.get("status"), str):
            # An alert posted by automation (fired, re-notified, resolved, acknowledged).
            return "alert.repeat" if alert.get("repeat") else f"alert.{alert['status']}"
        return "file" if content.get("msgtype") in _FILE_TYPES else "message"
    if event_type == "m.room.redaction":
        return "redaction"
    if event_type == ev.SCHEMA:
        return "schema"
    if event_type == "m.room.power_levels":
        return "access"
    if event_type == "m.room.member":
        membership = content.get("membership")
        if membership == "invite":
            return "grant"
        if membership in ("leave", "ban") and state_key and state_key != sender:
            return "revoke"
        return f"member.{membership}"
    if event_type.startswith("ixo.room.state"):
        return "state"
    if event_type == "m.room.encrypted":
        return "encrypted"
    return event_type


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    hash: str
    entry: dict[str, Any]


@dataclass(frozen=True)
class Anchor:
    """One anchor of a room's trail: entries ``first_seq..last_seq`` at ``height``."""

    first_seq: int
    last_seq: int
    root: str
    tx_hash: str
    tx: bytes
    height: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "root": self.root,
            "tx_hash": self.tx_hash,
            "height": self.height,
        }


class AnchorChain(Protocol):
    """What anchoring needs of a chain (``datarooms.chain.anchor.ChainAnchor``)."""

    def anchor_tx(self, room: str, first_seq: int, last_seq: int, root: str, head: str) -> bytes:
        """The deterministic transaction that anchors the range (only hashes in it)."""
        ...

    async def committed_height(self, tx: bytes) -> int | None:
        """The height of the block holding ``tx``, or None if it is not on chain."""
        ...

    async def broadcast(self, tx: bytes) -> int:
        """Broadcast ``tx`` and wait for its commit; its height (idempotent)."""
        ...


class Audit:
    """``client.audit``: build the room's trail from the room, read it, anchor it."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client
        # One update and one anchoring of a room at a time (each numbers entries).
        self._updating: KeyedLocks[str] = KeyedLocks()
        self._anchoring: KeyedLocks[str] = KeyedLocks()

    async def update(self, room_id: str) -> int:
        """Page the room's new events into its trail; return how many entries were added."""
        async with self._updating.hold(room_id):
            return await self._update(room_id)

    async def _update(self, room_id: str) -> int:
        await self._c.ensure_room(room_id)
        index = self._c.index
        cursor = index.get_meta(f"audit_cursor:{room_id}")
        head = index.audit_head(room_id)
        seq, prev = (head[0], head[2]) if head else (0, GENESIS)
        added = 0
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
        async with self._c.http() as http:
            while True:
                params = {"dir": "f", "limit": str(_PAGE)}
                if cursor:
                    params["from"] = cursor
                body = await http.request("GET", path, params=params)
                chunk = [e for e in body.get("chunk", []) if isinstance(e, dict)]
                rows: list[tuple[int, str, str, str]] = []
                known = {r[1] for r in index.audit_entries(room_id, after=max(0, seq - _PAGE))}
                for raw in chunk:
                    if "event_id" not in raw or raw["event_id"] in known:
                        continue
                    seq += 1
                    entry = entry_for(room_id, seq, prev, raw)
                    prev = entry_hash(entry)
                    rows.append((seq, entry["event_id"], prev, json.dumps(entry)))
                    known.add(entry["event_id"])
                end = body.get("end")
                index.audit_append(room_id, rows, end if isinstance(end, str) else None)
                added += len(rows)
                if not chunk or not isinstance(end, str):
                    break
                cursor = end
        return added

    def entries(
        self, room_id: str, *, after: int = 0, until: int | None = None
    ) -> list[AuditEntry]:
        """The room's trail from the local index (call :meth:`update` first)."""
        return [
            AuditEntry(seq, h, json.loads(text))
            for seq, _e, h, text in self._c.index.audit_entries(room_id, after=after, until=until)
        ]

    def head(self, room_id: str) -> AuditEntry | None:
        head = self._c.index.audit_head(room_id)
        if head is None:
            return None
        found = self.entries(room_id, after=head[0] - 1, until=head[0])
        return found[0] if found else None

    def anchors(self, room_id: str) -> list[Anchor]:
        return [
            Anchor(
                a["first_seq"],
                a["last_seq"],
                a["root"],
                a["tx_hash"],
                a["tx"].encode(),
                a["height"],
            )
            for a in self._c.index.audit_anchors(room_id)
        ]

    async def anchor(self, room_id: str, chain: AnchorChain) -> Anchor | None:
        """Anchor the entries not anchored yet; return the new anchor (None if none was due).

        First finishes any anchor a crash left between broadcast and persist: if its
        transaction is on chain, only its height is recorded; otherwise it is broadcast
        again (the same bytes, so the chain cannot hold it twice).
        """
        async with self._anchoring.hold(room_id):
            return await self._anchor(room_id, chain)

    async def _anchor(self, room_id: str, chain: AnchorChain) -> Anchor | None:
        await self.update(room_id)
        await self._finish_pending(room_id, chain)
        done = self._c.index.audit_anchors(room_id)
        last = done[-1]["last_seq"] if done else 0
        head = self._c.index.audit_head(room_id)
        if head is None or head[0] <= last:
            return None
        hashes = [h for _s, _e, h, _t in self._c.index.audit_entries(room_id, after=last)]
        root = merkle_root(hashes)
        tx = chain.anchor_tx(room_hash(room_id), last + 1, head[0], root, head[2])
        tx_hash = _sha256(tx).upper()
        self._c.index.audit_add_anchor(room_id, last + 1, head[0], root, tx_hash, tx.decode())
        height = await chain.broadcast(tx)
        self._c.index.audit_set_anchor_height(room_id, head[0], height)
        log.info(
            "audit trail anchored",
            extra={"room": room_id, "first": last + 1, "last": head[0], "height": height},
        )
        return Anchor(last + 1, head[0], root, tx_hash, tx, height)

    async def _finish_pending(self, room_id: str, chain: AnchorChain) -> None:
        for a in self._c.index.audit_anchors(room_id):
            if a["height"] is not None:
                continue
            tx = a["tx"].encode()
            height = await chain.committed_height(tx)
            if height is None:
                height = await chain.broadcast(tx)
            self._c.index.audit_set_anchor_height(room_id, a["last_seq"], height)

    async def _page_all(self, room_id: str) -> list[dict[str, Any]]:
        """Every timeline event of the room, raw as served, in ``/messages`` order."""
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        async with self._c.http() as http:
            while True:
                params = {"dir": "f", "limit": str(_PAGE)}
                if cursor:
                    params["from"] = cursor
                body = await http.request("GET", path, params=params)
                chunk = [e for e in body.get("chunk", []) if isinstance(e, dict)]
                out.extend(chunk)
                end = body.get("end")
                if not chunk or not isinstance(end, str):
                    return out
                cursor = end

    async def export(
        self,
        room_id: str,
        *,
        anchor_proof: Callable[[bytes, int], Awaitable[dict[str, Any]]] | None = None,
        chain: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """An auditor's bundle of the room's trail (see :mod:`datarooms.sdk.audit_bundle`).

        It holds the entries, the events they commit to (ciphertext, as served), the Megolm
        session keys that decrypt and authenticate them, the plaintext of the files that
        claims cite, and each anchor with ``anchor_proof(tx, height)`` (its inclusion in a
        committed block) and the chain's identity. **It discloses the room's content** to
        whoever holds it: hand it to the auditor only.
        """
        await self.update(room_id)
        entries = self.entries(room_id)
        raw_by_id = {str(e.get("event_id")): e for e in await self._page_all(room_id)}
        events: list[dict[str, Any]] = []
        keys: dict[str, dict[str, str]] = {}
        files: dict[str, str] = {}
        olm = self._c.nio.olm
        for e in entries:
            raw = raw_by_id.get(e.entry["event_id"], {"event_id": e.entry["event_id"]})
            raw = {k: v for k, v in raw.items() if k != "unsigned"} | (
                {"unsigned": {"redacted_because": raw["unsigned"]["redacted_because"]}}
                if isinstance(raw.get("unsigned"), dict) and "redacted_because" in raw["unsigned"]
                else {}
            )
            events.append(raw)
            content = raw.get("content") or {}
            sid, skey = content.get("session_id"), content.get("sender_key")
            if raw.get("type") == "m.room.encrypted" and olm and sid and sid not in keys:
                session = olm.inbound_group_store.get(room_id, skey, sid)
                if session is not None:
                    keys[sid] = {
                        "sender_key": str(skey),
                        "signing_key": str(session.ed25519),
                        "session_key": session.export_session(session.first_known_index),
                    }
        for saved in await self._c.claims.list(room_id, limit=100_000):
            for cited in saved.credential.get("evidence", []) or []:
                if isinstance(cited, dict) and not cited.get("record") and cited.get("event"):
                    try:
                        data = await self._c.files.read(room_id, str(cited["event"]))
                    except DataroomsError:
                        continue
                    files[str(cited.get("cid"))] = base64.b64encode(data).decode()
        senders = sorted(
            {str(r.get("sender")) for r in events if r.get("type") == "m.room.encrypted"}
        )
        queried = await self._c.keys.query_keys(senders) if senders else {}
        identities = {
            user: {
                "master_key": (queried.get("master_keys") or {}).get(user),
                "self_signing_key": (queried.get("self_signing_keys") or {}).get(user),
                "device_keys": (queried.get("device_keys") or {}).get(user) or {},
            }
            for user in senders
        }
        anchors = []
        for a in self.anchors(room_id):
            item: dict[str, Any] = {
                **a.to_json(),
                "tx": base64.b64encode(a.tx).decode(),
            }
            if anchor_proof is not None and a.height is not None:
                item["proof"] = await anchor_proof(a.tx, a.height)
            anchors.append(item)
        return {
            "format": BUNDLE_FORMAT,
            "room": room_id,
            "room_hash": room_hash(room_id),
            "exported_by": self._c.user_id,
            "exported_at": int(time.time() * 1000),
            "entries": [{**e.entry, "hash": e.hash} for e in entries],
            "events": events,
            "megolm_sessions": keys,
            "identities": identities,
            "files": files,
            "anchors": anchors,
            "chain": chain or {},
        }
