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
:meth:`ChainAnchor.inclusion_proof` / :func:`check_inclusion` give and check the
evidence that a tx is in a committed block: CometBFT's signed header, validator set and
tx Merkle proof, checked as a light client does (:mod:`datarooms.chain.light`) against a
validator set the auditor trusts.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from datarooms.chain.errors import ChainError, RpcError
from datarooms.chain.light import LightCheckError, validators_hash, verify_tx_inclusion
from datarooms.chain.rpc import CometRpc, tx_hash

__all__ = [
    "AUDIT_ANCHORED_EVENT",
    "MSG_ANCHOR_AUDIT",
    "AnchorCheckError",
    "ChainAnchor",
    "anchor_tx",
    "bundle_anchor_check",
    "check_inclusion",
    "decode_anchor_tx",
    "trusted_set_hash",
]

MSG_ANCHOR_AUDIT = "/datarooms.audit.v1.MsgAnchorAudit"
AUDIT_ANCHORED_EVENT = "datarooms.audit.v1.AuditAnchored"
#: The shape of ``inclusion_proof``'s evidence (CometBFT light-client evidence).
PROOF_FORMAT = "cometbft-light/1"
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
        """The light-client evidence that ``tx`` is in the committed block at ``height``:
        CometBFT's signed header, the validator set and the tx's Merkle proof, as the
        chain's RPC gives them (:mod:`datarooms.chain.light` checks them offline)."""
        async with CometRpc(self.url) as rpc:
            commit = await rpc.call("commit", height=height)
            validators = await rpc.call("validators", height=height, per_page=100)
            found = await rpc.call_jsonrpc(
                "tx", {"hash": base64.b64encode(bytes.fromhex(tx_hash(tx))).decode(), "prove": True}
            )
        if int(found.get("height", 0)) != height:
            raise ChainError(f"the anchor tx is at height {found.get('height')}, not {height}")
        return {
            "format": PROOF_FORMAT,
            "height": height,
            "signed_header": commit["signed_header"],
            "validators": validators["validators"],
            "tx_proof": found["proof"],
        }

    async def identity(self) -> dict[str, Any]:
        """The chain id and its genesis validator set (the set an auditor trusts)."""
        async with CometRpc(self.url) as rpc:
            status = await rpc.status()
            genesis = await rpc.call("validators", height=1, per_page=100)
        validators = genesis["validators"]
        return {
            "chain_id": str(status["node_info"]["network"]),
            "validators": validators,
            "validators_hash": validators_hash(validators).hex().upper(),
        }


def check_inclusion(
    tx: bytes, proof: dict[str, Any], *, chain_id: str, trusted_validators_hash: str
) -> None:
    """Check that ``tx`` is in a block the trusted validators committed (a CometBFT
    light-client check, :func:`datarooms.chain.light.verify_tx_inclusion`)."""
    if "signed_header" not in proof and ("block_hash" in proof or "tx_hashes" in proof):
        raise AnchorCheckError(
            "proof format not supported (a devchain proof from before the light-client "
            "check); re-export the bundle with `datarooms audit export`",
            "unsupported_proof",
        )
    try:
        height = int(proof["height"])
    except (KeyError, TypeError, ValueError):
        raise AnchorCheckError("the inclusion proof is malformed", "bad_proof") from None
    try:
        verify_tx_inclusion(
            tx,
            proof,
            chain_id=chain_id,
            height=height,
            trusted_validators_hash=trusted_validators_hash,
        )
    except LightCheckError as exc:
        raise AnchorCheckError(str(exc), exc.reason) from None


def trusted_set_hash(
    chain: dict[str, Any],
    *,
    validators_hash_: str | None = None,
    validator_pub_keys: Sequence[str] = (),
) -> str:
    """The validator-set hash the auditor trusts (docs/evidence.md, "Trust").

    ``validators_hash_`` (hex, from the chain's genesis) wins. Else the bundle's pinned
    genesis set, and with ``validator_pub_keys`` only if every one of its validators
    holds one of those keys. "" (nothing trusted) if the bundle pins no valid set.
    """
    if validators_hash_:
        return validators_hash_.strip().upper()
    pinned = chain.get("validators")
    if not isinstance(pinned, list) or not pinned:
        return ""
    try:
        computed = validators_hash(pinned).hex().upper()
        keys = {str(v["pub_key"]["value"]) for v in pinned}
    except (KeyError, TypeError, ValueError):
        return ""
    if validator_pub_keys and not keys <= set(validator_pub_keys):
        return ""
    return computed


def bundle_anchor_check(
    chain: dict[str, Any],
    *,
    validators_hash_: str | None = None,
    validator_pub_keys: Sequence[str] = (),
) -> Callable[[bytes, dict[str, Any]], None]:
    """An anchor check for :func:`datarooms.sdk.audit_bundle.verify_bundle` from the
    bundle's chain identity and each anchor's ``proof`` (light-client evidence).

    The trusted set is :func:`trusted_set_hash`: without ``validators_hash_`` or
    ``validator_pub_keys`` it is the set the bundle itself pins, and the report
    should say so.
    """
    chain_id = str(chain.get("chain_id", ""))
    trusted = trusted_set_hash(
        chain, validators_hash_=validators_hash_, validator_pub_keys=validator_pub_keys
    )

    def check(tx: bytes, anchor: dict[str, Any]) -> None:
        proof = anchor.get("proof")
        if not isinstance(proof, dict):
            raise AnchorCheckError("the bundle has no inclusion proof for it", "no_proof")
        if "unreachable" in proof:
            raise AnchorCheckError(str(proof["unreachable"]), "unreachable")
        if "missing" in proof:
            raise AnchorCheckError(str(proof["missing"]), "not_on_chain")
        if proof.get("height") != anchor.get("height"):
            raise AnchorCheckError("the proof is for another height", "bad_proof")
        check_inclusion(tx, proof, chain_id=chain_id, trusted_validators_hash=trusted)

    return check
