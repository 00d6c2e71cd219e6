"""The devchain's blocks as CometBFT 0.38 sees them: headers, block ids, commits, proofs.

The devchain stores its own blocks (node.py); this view derives from each one the
CometBFT header (``Header.Hash`` over the proto-encoded fields, so ``block_id.hash`` is
what a light client computes), a one-part part set, and a commit whose single validator
signs the canonical vote sign bytes (proto ``CanonicalVote``, PRECOMMIT, round 0) with
the genesis ed25519 key. Ed25519 signatures are deterministic, so a commit is the same
every time it is derived. Nothing here is devchain-specific on the wire: ``/commit``,
``/validators`` and ``/tx?prove=true`` have CometBFT's shapes and the check
(:mod:`datarooms.chain.light`) only uses those.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from typing import Any

from datarooms.chain import light
from datarooms.chain.devchain.node import Block, DevChain, canonical_json

_EMPTY = hashlib.sha256(b"").hexdigest().upper()
NO_BLOCK_ID: dict[str, Any] = {"hash": "", "parts": {"total": 0, "hash": ""}}


@dataclass(frozen=True)
class CometBlock:
    header: dict[str, Any]
    block_id: dict[str, Any]
    commit: dict[str, Any]


class CometView:
    """CometBFT's headers and commits of a :class:`DevChain`, derived once and cached."""

    def __init__(self, chain: DevChain) -> None:
        self.chain = chain
        self._blocks: list[CometBlock] = []
        self._lock = threading.Lock()

    def validators(self) -> list[dict[str, Any]]:
        """The validator set (the genesis one: the devchain's never changes)."""
        return [
            {
                "address": str(v["address"]),
                "pub_key": dict(v["pub_key"]),
                "voting_power": str(v["power"]),
                "proposer_priority": "0",
            }
            for v in self.chain.genesis["validators"]
        ]

    def get(self, height: int) -> CometBlock:
        block = self.chain.block(height)  # raises ChainError past the tip
        with self._lock:
            while len(self._blocks) < height:
                self._blocks.append(self._derive(self.chain.block(len(self._blocks) + 1)))
            got = self._blocks[height - 1]
        assert int(got.header["height"]) == block.height
        return got

    def _derive(self, block: Block) -> CometBlock:
        c = self.chain
        height = block.height
        prev = self._blocks[height - 2] if height > 1 else None
        prev_block = c.block(height - 1) if height > 1 else None
        vhash = light.validators_hash(self.validators()).hex().upper()
        header = {
            "version": {"block": "11", "app": "0"},
            "chain_id": c.chain_id,
            "height": str(height),
            "time": block.header["time"],
            "last_block_id": prev.block_id if prev else NO_BLOCK_ID,
            "last_commit_hash": light.commit_hash(prev.commit).hex().upper() if prev else _EMPTY,
            "data_hash": light.tx_data_hash(block.txs).hex().upper(),
            "validators_hash": vhash,
            "next_validators_hash": vhash,
            "consensus_hash": _EMPTY,
            "app_hash": "",
            "last_results_hash": prev_block.header["results_hash"] if prev_block else _EMPTY,
            "evidence_hash": _EMPTY,
            "proposer_address": block.header["proposer_address"],
        }
        block_id = {
            "hash": light.header_hash(header).hex().upper(),
            # One part: the block as the devchain stores it.
            "parts": {
                "total": 1,
                "hash": light.merkle_root([canonical_json(block.to_json())]).hex().upper(),
            },
        }
        commit = {"height": str(height), "round": 0, "block_id": block_id, "signatures": []}
        stamp = block.header["time"]
        commit["signatures"] = [
            {
                "block_id_flag": light.BLOCK_ID_FLAG_COMMIT,
                "validator_address": c.validator_address,
                "timestamp": stamp,
                "signature": base64.b64encode(
                    c.sign(light.vote_sign_bytes(c.chain_id, commit, {"timestamp": stamp}))
                ).decode(),
            }
        ]
        return CometBlock(header, block_id, commit)

    def tx_proof(self, height: int, index: int) -> dict[str, Any]:
        """``/tx?prove=true``'s ``proof``: the tx's Merkle path to the header's data_hash."""
        block = self.chain.block(height)
        hashes = [hashlib.sha256(t).digest() for t in block.txs]
        leaf, aunts = light.merkle_proof(hashes, index)
        return {
            "root_hash": light.merkle_root(hashes).hex().upper(),
            "data": base64.b64encode(block.txs[index]).decode(),
            "proof": {
                "total": str(len(hashes)),
                "index": str(index),
                "leaf_hash": base64.b64encode(leaf).decode(),
                "aunts": [base64.b64encode(a).decode() for a in aunts],
            },
        }
