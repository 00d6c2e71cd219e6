"""The embedded devchain: a single-node, append-only chain of signed, hash-linked blocks.

It accepts IXO entity registrations (``MsgCreateEntity``) and emits the same events a
real IXO node (Cosmos SDK 0.50 on CometBFT 0.38) emits for them, so the watcher cannot
tell the two apart. :mod:`datarooms.chain.devchain.rpc` serves it over the CometBFT RPC.

Everything lives in one directory::

    genesis.json              chain id, genesis time, the validator's public key
    priv_validator_key.json   the validator's ed25519 key (mode 0600)
    blocks.jsonl              one block a line, appended and fsynced, never rewritten

A block is ``{"header", "txs", "results", "hash", "signature"}``. The header holds the
height, time, the previous block's hash and the hashes of the txs and of their results;
``hash`` is the SHA-256 of the canonical JSON of the header, and ``signature`` is the
validator's ed25519 signature of that hash. :meth:`DevChain.open` checks every block
(links, hashes, signatures) and refuses to start on a chain that was tampered with.

Transactions are JSON (see :func:`create_entity_tx`), not protobuf: only the events
they produce need to match IXO's, and those do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from datarooms._fs import PRIVATE_FILE, atomic_write, ensure_writable_dir
from datarooms.chain.anchor import (
    AUDIT_ANCHORED_EVENT,
    MSG_ANCHOR_AUDIT,
    check_anchor_message,
)
from datarooms.chain.entity import (
    ENTITY_CREATED_EVENT,
    IID_CREATED_EVENT,
    MSG_CREATE_ENTITY,
)
from datarooms.chain.errors import ChainCorruptError, ChainError
from datarooms.chain.query import Query
from datarooms.chain.rpc import tx_hash
from datarooms.errors import ValidationError
from datarooms.ids import did as check_did

log = logging.getLogger(__name__)

DEFAULT_CHAIN_ID = "datarooms-devchain"
COMETBFT_VERSION = "0.38.17"
MSG_EMIT_EVENTS = "/datarooms.devchain.v1.MsgEmitEvents"
MAX_TX_BYTES = 256 * 1024
GENESIS_FILE = "genesis.json"
KEY_FILE = "priv_validator_key.json"
BLOCKS_FILE = "blocks.jsonl"

# Cosmos SDK error codes (codespace "sdk") that CheckTx answers with.
CODE_TX_DECODE = 2
CODE_INVALID_REQUEST = 18
CODE_UNKNOWN_REQUEST = 6


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _compact(value: Any) -> str:
    """JSON as Go's jsonpb renders typed-event attributes: compact, keys in field order."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def rfc3339(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


def data_hash(txs: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for tx in txs:
        h.update(hashlib.sha256(tx).digest())
    return h.hexdigest().upper()


def results_hash(results: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical_json(list(results))).hexdigest().upper()


def header_hash(header: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(header)).hexdigest().upper()


def _attr(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": value, "index": True}


# -- transactions -------------------------------------------------------------------


def create_entity_tx(
    *,
    entity_type: str,
    controllers: Iterable[str] = (),
    owner_did: str | None = None,
    relayer_node: str | None = None,
    status: int = 0,
    services: Sequence[dict[str, Any]] = (),
    memo: str | None = None,
) -> bytes:
    """A ``MsgCreateEntity`` transaction for the devchain (JSON, Cosmos-tx shaped).

    ``owner_did`` defaults to the first controller. A random memo keeps two identical
    registrations distinct, as a real tx's sequence number would.
    """
    ctrl = [str(c) for c in controllers]
    owner = owner_did or (ctrl[0] if ctrl else None)
    msg: dict[str, Any] = {
        "@type": MSG_CREATE_ENTITY,
        "entity_type": entity_type,
        "entity_status": status,
        "controller": ctrl,
        "context": [],
        "verification": [],
        "service": list(services),
        "accorded_right": [],
        "linked_resource": [],
        "linked_entity": [],
        "linked_claim": [],
        "start_date": None,
        "end_date": None,
        "relayer_node": relayer_node or owner or "",
        "credentials": [],
        "owner_did": owner or "",
        "owner_address": _address_of(owner) if owner else "",
        "data": None,
        "also_known_as": "",
    }
    return canonical_json(
        {
            "body": {
                "messages": [msg],
                "memo": memo or f"datarooms {secrets.token_hex(8)}",
                "timeout_height": "0",
            },
            "auth_info": {},
            "signatures": [],
        }
    )


def emit_events_tx(events: list[dict[str, Any]]) -> bytes:
    """A devchain-only tx that emits ``events`` verbatim under the entity-creation action.

    For fault-injection tests and demos (malformed events as a broken node might send);
    accepted only by a devchain opened with ``allow_raw_events=True``.
    """
    return canonical_json(
        {
            "body": {
                "messages": [{"@type": MSG_EMIT_EVENTS, "events": events}],
                "memo": secrets.token_hex(8),
            },
            "auth_info": {},
            "signatures": [],
        }
    )


def _address_of(did: str) -> str:
    last = did.rsplit(":", 1)[-1]
    if last.startswith("ixo1") and last.isalnum() and last.islower():
        return last
    return "ixo1" + hashlib.sha256(did.encode()).hexdigest()[:38]


class _Reject(Exception):
    def __init__(self, code: int, log_: str, codespace: str = "sdk") -> None:
        super().__init__(log_)
        self.code = code
        self.log = log_
        self.codespace = codespace


def _decode_tx(tx: bytes, allow_raw_events: bool) -> list[dict[str, Any]]:
    if len(tx) > MAX_TX_BYTES:
        raise _Reject(CODE_TX_DECODE, f"tx too large: {len(tx)} bytes (max {MAX_TX_BYTES})")
    try:
        body = json.loads(tx)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Reject(CODE_TX_DECODE, f"tx parse error: {exc}") from None
    msgs = body.get("body", {}).get("messages") if isinstance(body, dict) else None
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise _Reject(CODE_TX_DECODE, "tx parse error: body.messages must be a non-empty list")
    for m in msgs:
        kind = m.get("@type")
        if kind == MSG_CREATE_ENTITY:
            _check_create_entity(m)
        elif kind == MSG_ANCHOR_AUDIT:
            problem = check_anchor_message(m)
            if problem:
                raise _Reject(CODE_INVALID_REQUEST, f"invalid audit anchor: {problem}")
        elif kind == MSG_EMIT_EVENTS and allow_raw_events:
            if not isinstance(m.get("events"), list):
                raise _Reject(CODE_INVALID_REQUEST, "events must be a list")
        else:
            raise _Reject(CODE_UNKNOWN_REQUEST, f"unrecognized message type: {kind!r}")
    return msgs


def _anchor_events(msg: dict[str, Any], msg_index: int) -> list[dict[str, Any]]:
    """The events of an audit anchor: only the hashes and the range it was given."""
    idx = str(msg_index)
    return [
        {
            "type": "message",
            "attributes": [
                _attr("action", MSG_ANCHOR_AUDIT),
                _attr("module", "audit"),
                _attr("msg_index", idx),
            ],
        },
        {
            "type": AUDIT_ANCHORED_EVENT,
            "attributes": [
                _attr("room", _compact(msg["room"])),
                _attr("first_seq", _compact(str(msg["first_seq"]))),
                _attr("last_seq", _compact(str(msg["last_seq"]))),
                _attr("merkle_root", _compact(msg["merkle_root"])),
                _attr("head", _compact(msg["head"])),
                _attr("msg_index", idx),
            ],
        },
    ]


def _check_create_entity(m: dict[str, Any]) -> None:
    etype = m.get("entity_type")
    if not isinstance(etype, str) or not etype.strip() or len(etype) > 255:
        raise _Reject(CODE_INVALID_REQUEST, "entity_type must be 1 to 255 characters")
    status = m.get("entity_status", 0)
    if not isinstance(status, int) or isinstance(status, bool):
        raise _Reject(CODE_INVALID_REQUEST, "entity_status must be an integer")
    ctrl = m.get("controller", [])
    if not isinstance(ctrl, list) or len(ctrl) > 32:
        raise _Reject(CODE_INVALID_REQUEST, "controller must be a list of at most 32 DIDs")
    for value in [*ctrl, m.get("owner_did") or "did:ixo:none"]:
        try:
            check_did(value)
        except ValidationError:
            raise _Reject(CODE_INVALID_REQUEST, f"invalid did: {str(value)[:100]!r}") from None


# -- blocks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    header: dict[str, Any]
    txs: tuple[bytes, ...]
    results: tuple[dict[str, Any], ...]
    hash: str
    signature: bytes

    @property
    def height(self) -> int:
        return int(self.header["height"])

    def to_json(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "txs": [base64.b64encode(t).decode() for t in self.txs],
            "results": list(self.results),
            "hash": self.hash,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Block:
        if not isinstance(data, dict):
            raise ValueError("a block must be a JSON object")
        return cls(
            header=dict(data["header"]),
            txs=tuple(base64.b64decode(t, validate=True) for t in data["txs"]),
            results=tuple(data["results"]),
            hash=str(data["hash"]),
            signature=base64.b64decode(data["signature"], validate=True),
        )


@dataclass(frozen=True)
class IndexedTx:
    height: int
    index: int
    hash: str
    tx: bytes
    result: dict[str, Any]
    events: dict[str, list[str]]

    def result_tx(self) -> dict[str, Any]:
        """The ``ResultTx`` JSON of ``tx_search`` and ``tx``."""
        return {
            "hash": self.hash,
            "height": str(self.height),
            "index": self.index,
            "tx_result": self.result,
            "tx": base64.b64encode(self.tx).decode(),
        }

    def event_data(self) -> dict[str, Any]:
        """The websocket ``tendermint/event/Tx`` data of this tx."""
        return {
            "type": "tendermint/event/Tx",
            "value": {
                "TxResult": {
                    "height": str(self.height),
                    "index": self.index,
                    "tx": base64.b64encode(self.tx).decode(),
                    "result": self.result,
                }
            },
        }


def _events_map(height: int, hash_: str, result: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"tm.event": ["Tx"], "tx.hash": [hash_], "tx.height": [str(height)]}
    for ev in result.get("events") or []:
        etype = ev.get("type") if isinstance(ev, dict) else None
        if not isinstance(etype, str):
            continue
        attrs = ev.get("attributes")
        for a in attrs if isinstance(attrs, list) else []:
            if isinstance(a, dict) and isinstance(a.get("key"), str):
                out.setdefault(f"{etype}.{a['key']}", []).append(str(a.get("value", "")))
    return out


@dataclass(eq=False)
class Subscriber:
    """One websocket subscription: matching txs queue up here for the connection to send."""

    query: Query
    queue: asyncio.Queue[IndexedTx]
    cancelled: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Pending:
    tx: bytes
    hash: str
    msgs: list[dict[str, Any]]
    done: asyncio.Future[IndexedTx]


class DevChain:
    """The chain in a directory: open it, start block production, submit txs, query."""

    def __init__(
        self,
        directory: Path | str,
        *,
        chain_id: str = DEFAULT_CHAIN_ID,
        block_interval: float = 0.2,
        max_block_txs: int = 1000,
        allow_raw_events: bool = False,
        subscription_buffer: int = 2000,
    ) -> None:
        self.directory = Path(directory)
        self.chain_id = chain_id
        self.block_interval = block_interval
        self.max_block_txs = max_block_txs
        self.allow_raw_events = allow_raw_events
        self.subscription_buffer = subscription_buffer
        self.genesis: dict[str, Any] = {}
        self.blocks: list[Block] = []
        self.txs: list[IndexedTx] = []
        self._tx_heights: list[int] = []
        self._by_hash: dict[str, IndexedTx] = {}
        self._key: Ed25519PrivateKey | None = None
        self._pub: Ed25519PublicKey | None = None
        self._entity_seq = 0
        self._mempool: list[_Pending] = []
        self._mempool_hashes: set[str] = set()
        self._has_txs = asyncio.Event()
        self._producer: asyncio.Task[None] | None = None
        self._file: Any = None
        self._io = threading.Lock()  # the appending thread vs. closing the file
        self.subscribers: set[Subscriber] = set()
        self._opened = False

    # -- paths -------------------------------------------------------------------

    @property
    def blocks_path(self) -> Path:
        return self.directory / BLOCKS_FILE

    @property
    def height(self) -> int:
        return self.blocks[-1].height if self.blocks else 0

    @property
    def validator_address(self) -> str:
        return str(self.genesis["validators"][0]["address"])

    @property
    def validator_pub_key(self) -> str:
        return str(self.genesis["validators"][0]["pub_key"]["value"])

    # -- opening and verification ------------------------------------------------

    def open(self) -> None:
        """Create the chain on first use; otherwise load and verify every block.

        Raises :class:`ChainCorruptError` naming the first block that fails.
        """
        if self._opened:
            return
        ensure_writable_dir(self.directory)
        self._load_or_create_identity()
        for block in self._read_verified_blocks():
            self._apply(block)
        fd = os.open(self.blocks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        self._file = os.fdopen(fd, "ab")
        self._opened = True
        log.info("devchain opened", extra={"chain_id": self.chain_id, "height": self.height})

    def _load_or_create_identity(self) -> None:
        gpath = self.directory / GENESIS_FILE
        kpath = self.directory / KEY_FILE
        if not gpath.exists():
            if self.blocks_path.exists() and self.blocks_path.stat().st_size:
                raise ChainCorruptError(
                    f"{gpath} is missing but {self.blocks_path} has blocks: the chain "
                    "cannot be verified without its genesis. Restore genesis.json."
                )
            key = Ed25519PrivateKey.generate()
            seed = key.private_bytes_raw()
            pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            address = hashlib.sha256(pub).hexdigest()[:40].upper()
            pub_json = {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()}
            atomic_write(
                kpath,
                json.dumps(
                    {
                        "address": address,
                        "pub_key": pub_json,
                        "priv_key": {
                            "type": "tendermint/PrivKeyEd25519",
                            "value": base64.b64encode(seed + pub).decode(),
                        },
                    },
                    indent=2,
                ),
                mode=0o600,
            )
            atomic_write(
                gpath,
                json.dumps(
                    {
                        "genesis_time": rfc3339(time.time()),
                        "chain_id": self.chain_id,
                        "initial_height": "1",
                        "validators": [
                            {
                                "address": address,
                                "pub_key": pub_json,
                                "power": "10",
                                "name": "devchain",
                            }
                        ],
                        "app_hash": "",
                    },
                    indent=2,
                ),
            )
        try:
            self.genesis = json.loads(gpath.read_text())
            self.chain_id = str(self.genesis["chain_id"])
            pub_b64 = self.genesis["validators"][0]["pub_key"]["value"]
            self._pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(pub_b64))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ChainCorruptError(f"{gpath} is not a valid devchain genesis: {exc}") from None
        try:
            key_json = json.loads(kpath.read_text())
            raw = base64.b64decode(key_json["priv_key"]["value"])
            self._key = Ed25519PrivateKey.from_private_bytes(raw[:32])
        except FileNotFoundError:
            self._key = None  # a read-only copy (verify only): cannot produce blocks
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChainCorruptError(f"{kpath} is not a valid validator key: {exc}") from None
        if self._key is not None:
            mine = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            if base64.b64encode(mine).decode() != pub_b64:
                raise ChainCorruptError(
                    f"{kpath} does not hold the validator key named in {gpath}: "
                    "the key or the genesis was replaced"
                )

    def _read_verified_blocks(self, *, repair: bool = True) -> Iterable[Block]:
        path = self.blocks_path
        if not path.exists():
            return
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, as it should
        if torn:
            # A crash while appending the last block, which was therefore never
            # acknowledged nor published: drop it.
            log.warning(
                "devchain: the last block is half-written (a crash while writing it)"
                + ("; discarding it" if repair else ""),
                extra={"file": str(path)},
            )
            if repair:
                with path.open("r+b") as fh:
                    fh.truncate(len(data) - len(torn))
                    fh.flush()
                    os.fsync(fh.fileno())
        prev_hash = ""
        for n, line in enumerate(lines, start=1):
            try:
                block = Block.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise self._corrupt(n, f"it is not a readable block ({exc})") from None
            problem = self._check_block(block, n, prev_hash)
            if problem:
                raise self._corrupt(n, problem)
            prev_hash = block.hash
            yield block

    def _check_block(self, block: Block, height: int, prev_hash: str) -> str | None:
        h = block.header
        if h.get("height") != height:
            return f"its height is {h.get('height')!r}, expected {height} (a block is missing)"
        if h.get("chain_id") != self.chain_id:
            return f"its chain id is {h.get('chain_id')!r}, not {self.chain_id!r}"
        if h.get("last_block_hash") != prev_hash:
            return "it does not link to the block before it (last_block_hash differs)"
        if len(block.results) != len(block.txs):
            return "it has a different number of txs and results"
        if h.get("data_hash") != data_hash(block.txs):
            return "its transactions do not match its data_hash"
        if h.get("results_hash") != results_hash(block.results):
            return "its results (events) do not match its results_hash"
        if block.hash != header_hash(h):
            return "its header does not match its hash"
        assert self._pub is not None
        try:
            self._pub.verify(block.signature, bytes.fromhex(block.hash))
        except (InvalidSignature, ValueError):
            return "its signature is not the validator's"
        return None

    def _corrupt(self, height: int, problem: str) -> ChainCorruptError:
        return ChainCorruptError(
            f"the devchain in {self.directory} is corrupt: block {height} fails verification: "
            f"{problem}. {self.blocks_path.name} was changed after the devchain wrote it; "
            "restore it from a backup, or start a new chain in another directory."
        )

    @classmethod
    def verify(cls, directory: Path | str) -> int:
        """Verify a chain directory without changing it; return its height.

        Raises :class:`ChainCorruptError` naming the first block that fails.
        """
        chain = cls(directory)
        if not (chain.directory / GENESIS_FILE).exists():
            raise ChainError(f"there is no devchain in {chain.directory} (no {GENESIS_FILE})")
        chain._load_or_create_identity()
        height = 0
        for block in chain._read_verified_blocks(repair=False):
            height = block.height
        return height

    # -- state ---------------------------------------------------------------------

    def _apply(self, block: Block) -> None:
        self.blocks.append(block)
        for i, (tx, result) in enumerate(zip(block.txs, block.results, strict=True)):
            h = tx_hash(tx)
            itx = IndexedTx(block.height, i, h, tx, result, _events_map(block.height, h, result))
            self.txs.append(itx)
            self._tx_heights.append(block.height)
            self._by_hash[h] = itx
            if result.get("code", 0) == 0:
                for ev in result.get("events") or []:
                    if isinstance(ev, dict) and ev.get("type") == ENTITY_CREATED_EVENT:
                        self._entity_seq += 1

    # -- block production ----------------------------------------------------------

    async def start(self) -> None:
        self.open()
        if self._key is None:
            raise ChainError(f"{self.directory / KEY_FILE} is missing: cannot produce blocks")
        if self._producer is None or self._producer.done():
            self._producer = asyncio.create_task(self._produce(), name="devchain-producer")

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        for p in self._mempool:
            if not p.done.done():
                p.done.set_exception(ChainError("the devchain stopped before the tx was included"))
        self._mempool.clear()
        self._mempool_hashes.clear()
        with self._io:
            if self._file is not None:
                self._file.close()
                self._file = None
        self._opened = False

    def check_tx(self, tx: bytes) -> tuple[dict[str, Any], asyncio.Future[IndexedTx] | None]:
        """CheckTx: validate ``tx`` and add it to the mempool.

        Returns the CheckTx result (code 0 = accepted) and, when accepted, a future that
        resolves to the executed tx once its block is committed. A tx already known
        raises :class:`ChainError` ("tx already exists in cache"), as CometBFT does.
        """
        h = tx_hash(tx)
        if h in self._by_hash or h in self._mempool_hashes:
            raise ChainError("tx already exists in cache")
        if not self._opened or self._producer is None:
            raise ChainError("the devchain is not running")
        try:
            msgs = _decode_tx(tx, self.allow_raw_events)
        except _Reject as rej:
            return _check_result(rej.code, rej.log, rej.codespace), None
        fut: asyncio.Future[IndexedTx] = asyncio.get_running_loop().create_future()
        self._mempool.append(_Pending(tx, h, msgs, fut))
        self._mempool_hashes.add(h)
        self._has_txs.set()
        return _check_result(0, "[]"), fut

    async def _produce(self) -> None:
        while True:
            await self._has_txs.wait()
            await asyncio.sleep(self.block_interval)
            take = self._mempool[: self.max_block_txs]
            del self._mempool[: len(take)]
            if not self._mempool:
                self._has_txs.clear()
            if not take:
                continue
            try:
                block = self._make_block(take)
                await asyncio.to_thread(self._append, block)
            except Exception as exc:
                log.exception("devchain: producing a block failed")
                for p in take:
                    self._mempool_hashes.discard(p.hash)
                    if not p.done.done():
                        p.done.set_exception(ChainError(f"the block failed: {exc}"))
                continue
            self._apply(block)
            for p in take:
                self._mempool_hashes.discard(p.hash)
            first = len(self.txs) - len(take)
            for i, p in enumerate(take):
                if not p.done.done():
                    p.done.set_result(self.txs[first + i])
            self._publish(self.txs[first:])

    def _make_block(self, take: list[_Pending]) -> Block:
        assert self._key is not None
        height = self.height + 1
        now = time.time()
        results = []
        seq = self._entity_seq
        for p in take:
            result, created = self._deliver(p, height, now, seq)
            seq += created
            results.append(result)
        txs = tuple(p.tx for p in take)
        header = {
            "chain_id": self.chain_id,
            "height": height,
            "time": rfc3339(now),
            "last_block_hash": self.blocks[-1].hash if self.blocks else "",
            "data_hash": data_hash(txs),
            "results_hash": results_hash(results),
            "proposer_address": self.validator_address,
        }
        bhash = header_hash(header)
        return Block(header, txs, tuple(results), bhash, self._key.sign(bytes.fromhex(bhash)))

    def _append(self, block: Block) -> None:
        with self._io:
            if self._file is None:
                raise ChainError("the devchain stopped")
            self._file.write(canonical_json(block.to_json()) + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def _deliver(
        self, p: _Pending, height: int, now: float, seq: int
    ) -> tuple[dict[str, Any], int]:
        events: list[dict[str, Any]] = []
        responses: list[dict[str, Any]] = []
        created = 0
        for i, msg in enumerate(p.msgs):
            if msg.get("@type") == MSG_EMIT_EVENTS:
                events.append(
                    {
                        "type": "message",
                        "attributes": [
                            _attr("action", MSG_CREATE_ENTITY),
                            _attr("msg_index", str(i)),
                        ],
                    }
                )
                for ev in msg.get("events") or []:
                    events.append(_raw_event(ev))
                continue
            if msg.get("@type") == MSG_ANCHOR_AUDIT:
                events.extend(_anchor_events(msg, i))
                responses.append({"@type": MSG_ANCHOR_AUDIT + "Response"})
                continue
            evs, resp = self._create_entity(msg, i, p.hash, now, seq + created)
            events.extend(evs)
            responses.append(resp)
            created += 1
        owner = next((m.get("owner_address") for m in p.msgs if m.get("owner_address")), "")
        tx_events = [
            {"type": "tx", "attributes": [_attr("fee", ""), _attr("fee_payer", str(owner))]},
            {"type": "tx", "attributes": [_attr("acc_seq", f"{owner}/{seq}")]},
        ]
        data = base64.b64encode(canonical_json({"msg_responses": responses})).decode()
        return {
            "code": 0,
            "data": data,
            "log": "",
            "info": "",
            "gas_wanted": "200000",
            "gas_used": str(60000 + 1000 * len(p.msgs)),
            "events": tx_events + events,
            "codespace": "",
        }, created

    def _create_entity(
        self, msg: dict[str, Any], msg_index: int, txh: str, now: float, seq: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """What IXO's ``CreateEntity`` does, as far as events go (see x/entity msg_server)."""
        entity_id = (
            "did:ixo:entity:"
            + hashlib.md5(  # noqa: S324 - IXO's id scheme
                f"{self.chain_id}/{seq}".encode()
            ).hexdigest()
        )
        owner_did = str(msg.get("owner_did") or "")
        owner_address = str(msg.get("owner_address") or "") or (
            _address_of(owner_did) if owner_did else ""
        )
        stamp = rfc3339(now)
        controllers: list[str] = []
        for c in [*msg.get("controller", []), entity_id, owner_did]:
            if c and c not in controllers:
                controllers.append(c)
        iid_doc = {
            "context": [{"key": "class", "val": "https://w3id.org/ixo/ns/protocol/"}],
            "id": entity_id,
            "controller": controllers,
            "verificationMethod": [],
            "service": msg.get("service", []),
            "authentication": [],
            "assertionMethod": [],
            "keyAgreement": [],
            "capabilityInvocation": [],
            "capabilityDelegation": [],
            "linkedResource": msg.get("linked_resource", []),
            "linkedClaim": msg.get("linked_claim", []),
            "accordedRight": msg.get("accorded_right", []),
            "linkedEntity": msg.get("linked_entity", []),
            "alsoKnownAs": msg.get("also_known_as", ""),
            "metadata": {
                "versionId": txh.lower(),
                "created": stamp,
                "updated": stamp,
                "deactivated": False,
            },
        }
        entity = {
            "id": entity_id,
            "type": msg["entity_type"],
            "start_date": msg.get("start_date"),
            "end_date": msg.get("end_date"),
            "status": int(msg.get("entity_status", 0)),
            "relayer_node": msg.get("relayer_node") or owner_did,
            "credentials": msg.get("credentials", []),
            "entity_verified": False,
            "metadata": {"version_id": txh.lower(), "created": stamp, "updated": stamp},
            "accounts": [{"name": "admin", "address": _address_of(entity_id + "/admin")}],
        }
        idx = str(msg_index)
        events = [
            {
                "type": "message",
                "attributes": [
                    _attr("action", MSG_CREATE_ENTITY),
                    _attr("sender", owner_address),
                    _attr("module", "entity"),
                    _attr("msg_index", idx),
                ],
            },
            {
                "type": IID_CREATED_EVENT,
                "attributes": [_attr("iidDocument", _compact(iid_doc)), _attr("msg_index", idx)],
            },
            {
                "type": ENTITY_CREATED_EVENT,
                "attributes": [
                    _attr("entity", _compact(entity)),
                    _attr("signer", _compact(owner_did)),
                    _attr("msg_index", idx),
                ],
            },
        ]
        response = {
            "@type": "/ixo.entity.v1beta1.MsgCreateEntityResponse",
            "entity_id": entity_id,
            "entity_type": entity["type"],
            "entity_status": entity["status"],
        }
        return events, response

    # -- queries -------------------------------------------------------------------

    def block(self, height: int) -> Block:
        if height < 1 or height > self.height:
            raise ChainError(
                f"height {height} must be less than or equal to the current blockchain height "
                f"{self.height}"
            )
        return self.blocks[height - 1]

    def sign(self, data: bytes) -> bytes:
        """The validator's ed25519 signature of ``data`` (its precommit votes)."""
        if self._key is None:
            raise ChainError("this devchain copy has no validator key: it cannot sign")
        return self._key.sign(data)

    def tx(self, hash_hex: str) -> IndexedTx:
        itx = self._by_hash.get(hash_hex.upper())
        if itx is None:
            raise ChainError(f"tx ({hash_hex.upper()}) not found")
        return itx

    def search(self, query: Query) -> list[IndexedTx]:
        """Every tx matching ``query``, in (height, index) order."""
        lo, hi = query.height_bounds()
        start = bisect_left(self._tx_heights, lo) if lo is not None else 0
        end = bisect_right(self._tx_heights, hi) if hi is not None else len(self.txs)
        return [t for t in self.txs[start:end] if query.matches(t.events)]

    @property
    def entity_count(self) -> int:
        return self._entity_seq

    # -- subscriptions -------------------------------------------------------------

    def subscribe(self, query: Query) -> Subscriber:
        sub = Subscriber(query, asyncio.Queue(maxsize=self.subscription_buffer))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _publish(self, txs: Sequence[IndexedTx]) -> None:
        for sub in list(self.subscribers):
            for itx in txs:
                if sub.cancelled or not sub.query.matches(itx.events):
                    continue
                try:
                    sub.queue.put_nowait(itx)
                except asyncio.QueueFull:
                    sub.cancelled = "client is not pulling messages fast enough"
                    self.subscribers.discard(sub)
                    log.warning("devchain: cancelled a subscription of a slow client")
            sub.wake.set()


def _check_result(code: int, log_: str, codespace: str = "") -> dict[str, Any]:
    return {
        "code": code,
        "data": "",
        "log": log_,
        "info": "",
        "gas_wanted": "200000",
        "gas_used": "0",
        "events": [],
        "codespace": codespace if code else "",
    }


def _raw_event(ev: Any) -> dict[str, Any]:
    """A caller-given event, kept as close to verbatim as JSON allows (it may be broken on
    purpose: that is what it is for)."""
    if not isinstance(ev, dict):
        return {"type": "datarooms.devchain.invalid", "attributes": [_attr("raw", _compact(ev))]}
    attrs = ev.get("attributes")
    if isinstance(attrs, list):
        attrs = [
            _attr(
                str(a.get("key", "")),
                a["value"] if isinstance(a.get("value"), str) else _compact(a.get("value", "")),
            )
            if isinstance(a, dict)
            else a
            for a in attrs
        ]
    return {"type": str(ev.get("type", "")), "attributes": attrs}
