"""Anchoring audit trails on a chain through the CometBFT RPC, and checking anchors offline.

The transaction (``MsgAnchorAudit``, JSON in Cosmos-tx shape, as the devchain takes it)
holds only hashes and sequence numbers::

    {"body": {"messages": [{"@type": "/datarooms.audit.v1.MsgAnchorAudit",
                            "room": sha256(room id), "first_seq": 1, "last_seq": 40,
                            "merkle_root": "<hex>", "head": "<hex>"}],
              "memo": "", "timeout_height": "0"},
     "auth_info": {}, "signatures": []}

It is deterministic (no nonce): the same range gives the same bytes, hence the same tx
hash, so a retry after a crash is found on chain instead of anchored twice. On a real
Cosmos chain the same message is a protobuf ``MsgAnchorAudit`` in a signed ``TxRaw``
(docs/evidence.md); the lookup then goes by the event ``audit_anchored.merkle_root``.

:class:`ChainAnchor` implements :class:`datarooms.sdk.audit.AnchorChain`;
:func:`inclusion_proof` / :func:`check_inclusion` give and check the evidence that a tx
is in a committed block (for the devchain: the block's signed header and its tx hashes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from datarooms.chain.errors import ChainError, RpcError
from datarooms.chain.rpc import CometRpc, tx_hash

__all__ = [
    "AUDIT_ANCHORED_EVENT",
    "MSG_ANCHOR_AUDIT",
    "AnchorCheckError",
    "ChainAnchor",
    "anchor_tx",
    "check_inclusion",
    "decode_anchor_tx",
]

MSG_ANCHOR_AUDIT = "/datarooms.audit.v1.MsgAnchorAudit"
AUDIT_ANCHORED_EVENT = "datarooms.audit.v1.AuditAnchored"
_HEX64 = frozenset("0123456789abcdef")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


def anchor_message(
    room: str, first_seq: int, last_seq: int, root: str, head: str
) -> dict[str, Any]:
    msg = {
        "@type": MSG_ANCHOR_AUDIT,
        "room": room,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "merkle_root": root,
        "head": head,
    }
    problem = check_anchor_message(msg)
    if problem:
        raise ValueError(problem)
    return msg


def check_anchor_message(msg: dict[str, Any]) -> str | None:
    """Why ``msg`` is not a valid MsgAnchorAudit, or None."""
    for name in ("room", "merkle_root", "head"):
        if not _is_hex64(msg.get(name)):
            return f"{name} must be 64 lowercase hex digits (a SHA-256)"
    first, last = msg.get("first_seq"), msg.get("last_seq")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (first, last)):
        return "first_seq and last_seq must be integers"
    assert isinstance(first, int) and isinstance(last, int)
    if not 1 <= first <= last:
        return "need 1 <= first_seq <= last_seq"
    extra = set(msg) - {"@type", "room", "first_seq", "last_seq", "merkle_root", "head"}
    if extra:
        return f"unknown fields: {sorted(extra)} (only hashes go on chain)"
    return None


def anchor_tx(room: str, first_seq: int, last_seq: int, root: str, head: str) -> bytes:
    """The deterministic anchor transaction (see the module doc)."""
    return _canonical(
        {
            "body": {
                "messages": [anchor_message(room, first_seq, last_seq, root, head)],
                "memo": "",
                "timeout_height": "0",
            },
            "auth_info": {},
            "signatures": [],
        }
    )


def decode_anchor_tx(tx: bytes) -> dict[str, Any]:
    """The MsgAnchorAudit in ``tx``; raises :class:`AnchorCheckError` if there is none."""
    try:
        body = json.loads(tx)
        msgs = body["body"]["messages"]
        msg = msgs[0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise AnchorCheckError("the anchor transaction cannot be decoded", "bad_tx") from None
    if len(msgs) != 1 or not isinstance(msg, dict) or msg.get("@type") != MSG_ANCHOR_AUDIT:
        raise AnchorCheckError("the transaction is not one MsgAnchorAudit", "bad_tx")
    problem = check_anchor_message(msg)
    if problem:
        raise AnchorCheckError(f"the anchor is malformed: {problem}", "bad_tx")
    return msg


class AnchorCheckError(ChainError):
    """An anchor does not check out; ``reason`` is a short code."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ChainAnchor:
    """Anchors over a CometBFT RPC endpoint (the devchain or a node that knows the msg)."""

    url: str
    commit_timeout_s: float = 30.0

    def anchor_tx(self, room: str, first_seq: int, last_seq: int, root: str, head: str) -> bytes:
        return anchor_tx(room, first_seq, last_seq, root, head)

    async def committed_height(self, tx: bytes) -> int | None:
        async with CometRpc(self.url) as rpc:
            try:
                found = await rpc.tx(tx_hash(tx))
            except RpcError as exc:
                if "not found" in str(exc):
                    return None
                raise
        if found.code != 0:
            return None
        return found.height

    async def broadcast(self, tx: bytes) -> int:
        async with CometRpc(self.url) as rpc:
            try:
                res = await rpc.broadcast_tx_commit(tx)
            except RpcError as exc:
                if "already exists" not in str(exc):
                    raise
                res = None
            if res is not None:
                check = res.get("check_tx") or {}
                if int(check.get("code", 0)) != 0:
                    raise ChainError(f"the chain refused the anchor: {check.get('log')}")
                result = res.get("tx_result") or {}
                if int(result.get("code", 0)) != 0:
                    raise ChainError(f"the anchor failed on chain: {result.get('log')}")
                height = int(res.get("height", 0))
                if height > 0:
                    return height
        # In the mempool already (a retry): wait until it is committed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.commit_timeout_s
        while loop.time() < deadline:
            found = await self.committed_height(tx)
            if found is not None:
                return found
            await asyncio.sleep(0.1)
        raise ChainError("the anchor was broadcast but not committed in time; run anchor again")

    async def inclusion_proof(self, tx: bytes, height: int) -> dict[str, Any]:
        """What shows offline that ``tx`` is in the committed block at ``height``."""
        async with CometRpc(self.url) as rpc:
            commit = await rpc.call("commit", height=height)
            block = await rpc.block(height)
        txs = [base64.b64decode(t) for t in block["block"]["data"]["txs"] or []]
        header = (commit.get("datarooms") or {}).get("header")
        if header is None:
            raise ChainError(
                "this node gives no devchain header; a real chain's proof is the light "
                "client's signed header (docs/evidence.md)"
            )
        return {
            "height": height,
            "tx_hashes": [hashlib.sha256(t).hexdigest().upper() for t in txs],
            "header": header,
            "block_hash": commit["datarooms"]["hash"],
            "signature": commit["datarooms"]["signature"],
        }

    async def identity(self) -> dict[str, str]:
        """The chain id and the validator key that signs the devchain's blocks."""
        async with CometRpc(self.url) as rpc:
            status = await rpc.status()
        return {
            "chain_id": str(status["node_info"]["network"]),
            "validator_pub_key": str(status["validator_info"]["pub_key"]["value"]),
        }


def check_inclusion(
    tx: bytes, proof: dict[str, Any], *, chain_id: str, validator_pub_key: str
) -> None:
    """Check that ``tx`` is in a block signed by the validator; raise AnchorCheckError."""
    try:
        header = proof["header"]
        hashes = [str(h).upper() for h in proof["tx_hashes"]]
        block_hash = str(proof["block_hash"])
        signature = base64.b64decode(proof["signature"])
        height = int(proof["height"])
    except (KeyError, TypeError, ValueError):
        raise AnchorCheckError("the inclusion proof is malformed", "bad_proof") from None
    if tx_hash(tx) not in hashes:
        raise AnchorCheckError("the anchor tx is not among the block's txs", "not_in_block")
    digest = hashlib.sha256()
    for h in hashes:
        digest.update(bytes.fromhex(h))
    if digest.hexdigest().upper() != header.get("data_hash"):
        raise AnchorCheckError("the block's tx hashes do not match its data_hash", "bad_proof")
    if hashlib.sha256(_canonical(header)).hexdigest().upper() != block_hash:
        raise AnchorCheckError("the block header does not hash to the block hash", "bad_proof")
    if header.get("height") != height or header.get("chain_id") != chain_id:
        raise AnchorCheckError(
            f"the block is not height {height} of chain {chain_id}", "wrong_chain"
        )
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(validator_pub_key))
        key.verify(signature, bytes.fromhex(block_hash))
    except (InvalidSignature, ValueError):
        raise AnchorCheckError(
            "the block is not signed by the chain's validator (a forged anchor)",
            "bad_block_signature",
        ) from None


def bundle_anchor_check(
    chain: dict[str, Any], *, validator_pub_key: str | None = None
) -> Callable[[bytes, dict[str, Any]], None]:
    """An anchor check for :func:`datarooms.sdk.audit_bundle.verify_bundle` from the
    bundle's chain identity and each anchor's ``proof`` (the signed block header).

    ``validator_pub_key`` pins the validator key the auditor trusts (from the chain's
    genesis); without it the key the bundle names is used, and the report should say so.
    """
    chain_id = str(chain.get("chain_id", ""))
    key = validator_pub_key or str(chain.get("validator_pub_key", ""))

    def check(tx: bytes, anchor: dict[str, Any]) -> None:
        proof = anchor.get("proof")
        if not isinstance(proof, dict):
            raise AnchorCheckError("the bundle has no inclusion proof for it", "no_proof")
        if "unreachable" in proof:
            raise AnchorCheckError(str(proof["unreachable"]), "unreachable")
        if "missing" in proof:
            raise AnchorCheckError(str(proof["missing"]), "not_on_chain")
        if int(proof.get("height", -1)) != anchor.get("height"):
            raise AnchorCheckError("the proof is for another height", "bad_proof")
        check_inclusion(tx, proof, chain_id=chain_id, validator_pub_key=key)

    return check
