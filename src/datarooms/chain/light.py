"""A CometBFT light-client check: is a tx in a block that the trusted validators committed?

Evidence (CometBFT 0.38 JSON-RPC shapes, from ``/commit``, ``/validators`` and
``/tx?prove=true``, or carried in an audit bundle so the check runs offline)::

    {"signed_header": {"header": {...}, "commit": {...}},
     "validators": [{"address", "pub_key": {"type", "value"}, "voting_power", ...}],
     "tx_proof": {"root_hash", "data", "proof": {"total", "index", "leaf_hash", "aunts"}}}

:func:`verify_tx_inclusion` checks, in this order, each failure its own reason code:

* the tx proof: RFC-6962 Merkle path from sha256(tx) to ``header.data_hash``
  (``wrong_data_hash`` / ``bad_tx_proof``);
* the header: its CometBFT hash (Merkle root of the proto-encoded fields,
  ``types/block.go`` Header.Hash) equals ``commit.block_id.hash`` (``bad_header_hash``),
  and height and chain id are the ones asked for (``wrong_chain``);
* the validator set: its hash (Merkle root of the proto ``SimpleValidator`` bytes) is
  ``header.validators_hash`` (``bad_validators_hash``) and is the set the auditor
  trusts (``unknown_validator_set``);
* the commit: ed25519 signatures over the canonical vote sign bytes (proto
  ``CanonicalVote``, length-delimited) from more than 2/3 of the voting power
  (``forged_signature`` / ``too_little_power``).

The protobuf encoding is done by the ``protobuf`` library with CometBFT's own message
definitions (cosmpy ships ``tendermint.types``/``tendermint.crypto``/``tendermint.version``;
``CanonicalVote`` is declared below from cometbft ``proto/tendermint/types/canonical.proto``,
which cosmpy does not ship). The test vectors in tests/test_chain_light.py are CometBFT's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from calendar import timegm
from collections.abc import Sequence
from typing import Any

from cosmpy.protos.tendermint.crypto import keys_pb2
from cosmpy.protos.tendermint.types import types_pb2, validator_pb2
from cosmpy.protos.tendermint.version import types_pb2 as version_pb2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf import wrappers_pb2 as wrappers

from datarooms.chain.errors import ChainError

__all__ = [
    "LightCheckError",
    "canonical_vote_sign_bytes",
    "commit_hash",
    "header_hash",
    "merkle_proof",
    "merkle_root",
    "parse_time",
    "tx_data_hash",
    "validators_hash",
    "verify_merkle_proof",
    "verify_tx_inclusion",
]

PRECOMMIT = 2
BLOCK_ID_FLAG_COMMIT = 2
ED25519 = "tendermint/PubKeyEd25519"


class LightCheckError(ChainError):
    """The evidence does not prove the tx; ``reason`` is a short code (module doc)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- CanonicalVote (cometbft proto/tendermint/types/canonical.proto) --------------------


def _canonical_classes() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    pool.Add(ts)
    f = descriptor_pb2.FileDescriptorProto(
        name="datarooms/cometbft_canonical.proto",
        package="tendermint.types",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    F = descriptor_pb2.FieldDescriptorProto
    opt = F.LABEL_OPTIONAL

    def msg(name: str, *fields: tuple[str, int, int, str | None]) -> None:
        m = f.message_type.add(name=name)
        for fname, num, ftype, tname in fields:
            fd = m.field.add(name=fname, number=num, type=ftype, label=opt)
            if tname:
                fd.type_name = tname

    msg(
        "CanonicalPartSetHeader", ("total", 1, F.TYPE_UINT32, None), ("hash", 2, F.TYPE_BYTES, None)
    )
    msg(
        "CanonicalBlockID",
        ("hash", 1, F.TYPE_BYTES, None),
        ("part_set_header", 2, F.TYPE_MESSAGE, ".tendermint.types.CanonicalPartSetHeader"),
    )
    msg(
        "CanonicalVote",
        ("type", 1, F.TYPE_INT32, None),  # SignedMsgType: an enum, varint on the wire
        ("height", 2, F.TYPE_SFIXED64, None),
        ("round", 3, F.TYPE_SFIXED64, None),
        ("block_id", 4, F.TYPE_MESSAGE, ".tendermint.types.CanonicalBlockID"),
        ("timestamp", 5, F.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ("chain_id", 6, F.TYPE_STRING, None),
    )
    pool.Add(f)
    vote = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tendermint.types.CanonicalVote")
    )
    block_id = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tendermint.types.CanonicalBlockID")
    )
    return vote, block_id


_CanonicalVote, _CanonicalBlockID = _canonical_classes()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def canonical_vote_sign_bytes(
    chain_id: str,
    *,
    height: int,
    round_: int,
    block_hash: bytes,
    parts_total: int,
    parts_hash: bytes,
    seconds: int,
    nanos: int,
    vote_type: int = PRECOMMIT,
) -> bytes:
    """CometBFT's ``VoteSignBytes``: the length-delimited proto ``CanonicalVote``.

    As in ``types.CanonicalizeBlockID`` a zero block id (nil vote) is left out; the
    timestamp is always there (gogoproto non-nullable).
    """
    vote = _CanonicalVote(type=vote_type, height=height, round=round_, chain_id=chain_id)
    if block_hash or parts_total or parts_hash:
        vote.block_id.hash = block_hash
        vote.block_id.part_set_header.total = parts_total
        vote.block_id.part_set_header.hash = parts_hash
    vote.timestamp.seconds = seconds
    vote.timestamp.nanos = nanos
    body = bytes(vote.SerializeToString(deterministic=True))
    return _varint(len(body)) + body


# -- Merkle trees (cometbft crypto/merkle, RFC 6962) ------------------------------------


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _inner(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(items: Sequence[bytes]) -> bytes:
    """``merkle.HashFromByteSlices``."""
    if not items:
        return hashlib.sha256(b"").digest()
    if len(items) == 1:
        return _leaf(items[0])
    k = _split(len(items))
    return _inner(merkle_root(items[:k]), merkle_root(items[k:]))


def merkle_proof(items: Sequence[bytes], index: int) -> tuple[bytes, list[bytes]]:
    """The leaf hash and the aunts (bottom up) of ``items[index]``."""
    if len(items) == 1:
        return _leaf(items[0]), []
    k = _split(len(items))
    if index < k:
        leaf, aunts = merkle_proof(items[:k], index)
        return leaf, [*aunts, merkle_root(items[k:])]
    leaf, aunts = merkle_proof(items[k:], index - k)
    return leaf, [*aunts, merkle_root(items[:k])]


def _from_aunts(index: int, total: int, leaf: bytes, aunts: Sequence[bytes]) -> bytes | None:
    if index >= total or index < 0 or total <= 0:
        return None
    if total == 1:
        return leaf if not aunts else None
    if not aunts:
        return None
    k = _split(total)
    if index < k:
        left = _from_aunts(index, k, leaf, aunts[:-1])
        return None if left is None else _inner(left, aunts[-1])
    right = _from_aunts(index - k, total - k, leaf, aunts[:-1])
    return None if right is None else _inner(aunts[-1], right)


def verify_merkle_proof(
    root: bytes, item: bytes, *, index: int, total: int, aunts: Sequence[bytes]
) -> bool:
    """``merkle.Proof.Verify``: does ``item`` sit at ``index`` of the tree with ``root``?"""
    return _from_aunts(index, total, _leaf(item), aunts) == root


def tx_data_hash(txs: Sequence[bytes]) -> bytes:
    """``types.Txs.Hash``: the Merkle root over the txs' SHA-256 hashes."""
    return merkle_root([hashlib.sha256(t).digest() for t in txs])


# -- header, validator set, commit ------------------------------------------------------

_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")


def parse_time(text: str) -> tuple[int, int]:
    """An RFC 3339 UTC time as CometBFT renders it, as (seconds, nanos)."""
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    nanos = int((m.group(7) or "0").ljust(9, "0"))
    return timegm((y, mo, d, h, mi, s, 0, 0, 0)), nanos


def _hex(value: Any) -> bytes:
    return bytes.fromhex(str(value or ""))


def _b64(value: Any) -> bytes:
    return base64.b64decode(str(value or ""), validate=True)


def _block_id_proto(block_id: dict[str, Any]) -> Any:
    parts = block_id.get("parts") or {}
    return types_pb2.BlockID(
        hash=_hex(block_id.get("hash")),
        part_set_header=types_pb2.PartSetHeader(
            total=int(parts.get("total") or 0), hash=_hex(parts.get("hash"))
        ),
    )


def header_hash(header: dict[str, Any]) -> bytes:
    """``types.Header.Hash`` of a header in CometBFT's JSON shape."""
    version = header.get("version") or {}
    seconds, nanos = parse_time(str(header["time"]))
    fields = [
        version_pb2.Consensus(
            block=int(version.get("block") or 0), app=int(version.get("app") or 0)
        ),
        wrappers.StringValue(value=str(header["chain_id"])),
        wrappers.Int64Value(value=int(header["height"])),
        timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        _block_id_proto(header.get("last_block_id") or {}),
        *(
            wrappers.BytesValue(value=_hex(header.get(name)))
            for name in (
                "last_commit_hash",
                "data_hash",
                "validators_hash",
                "next_validators_hash",
                "consensus_hash",
                "app_hash",
                "last_results_hash",
                "evidence_hash",
                "proposer_address",
            )
        ),
    ]
    return merkle_root([bytes(m.SerializeToString(deterministic=True)) for m in fields])


def _validator_key(v: dict[str, Any]) -> bytes:
    pub = v.get("pub_key") or {}
    if pub.get("type") != ED25519:
        raise ValueError(f"unsupported validator key type {pub.get('type')!r}")
    key = _b64(pub.get("value"))
    if len(key) != 32:
        raise ValueError("an ed25519 key has 32 bytes")
    return key


def validators_hash(validators: Sequence[dict[str, Any]]) -> bytes:
    """``types.ValidatorSet.Hash``: Merkle root of the proto ``SimpleValidator``s."""
    return merkle_root(
        [
            validator_pb2.SimpleValidator(
                pub_key=keys_pb2.PublicKey(ed25519=_validator_key(v)),
                voting_power=int(v["voting_power"]),
            ).SerializeToString(deterministic=True)
            for v in validators
        ]
    )


def commit_hash(commit: dict[str, Any]) -> bytes:
    """``types.Commit.Hash``: Merkle root of the proto ``CommitSig``s."""
    items = []
    for s in commit.get("signatures") or []:
        sig = types_pb2.CommitSig(
            block_id_flag=int(s.get("block_id_flag") or 0),
            validator_address=_hex(s.get("validator_address")),
            signature=_b64(s.get("signature")) if s.get("signature") else b"",
        )
        if s.get("timestamp"):
            seconds, nanos = parse_time(str(s["timestamp"]))
            sig.timestamp.seconds, sig.timestamp.nanos = seconds, nanos
        items.append(sig.SerializeToString(deterministic=True))
    return merkle_root(items)


def vote_sign_bytes(chain_id: str, commit: dict[str, Any], sig: dict[str, Any]) -> bytes:
    """The bytes a validator signs for its precommit ``sig`` in ``commit``."""
    block_id = commit.get("block_id") or {}
    parts = block_id.get("parts") or {}
    seconds, nanos = parse_time(str(sig["timestamp"]))
    return canonical_vote_sign_bytes(
        chain_id,
        height=int(commit["height"]),
        round_=int(commit.get("round") or 0),
        block_hash=_hex(block_id.get("hash")),
        parts_total=int(parts.get("total") or 0),
        parts_hash=_hex(parts.get("hash")),
        seconds=seconds,
        nanos=nanos,
    )


def verify_tx_inclusion(
    tx: bytes,
    evidence: dict[str, Any],
    *,
    chain_id: str,
    height: int,
    trusted_validators_hash: str,
) -> None:
    """Raise :class:`LightCheckError` unless ``evidence`` proves ``tx`` is in the block
    at ``height`` of ``chain_id`` committed by the validator set whose hash (hex) the
    auditor trusts (see the module doc for the checks and their reason codes)."""
    try:
        header = evidence["signed_header"]["header"]
        commit = evidence["signed_header"]["commit"]
        validators = list(evidence["validators"])
        proof = evidence["tx_proof"]
        root = _hex(proof["root_hash"])
        inner = proof["proof"]
        aunts = [_b64(a) for a in inner.get("aunts") or []]
        index, total = int(inner["index"]), int(inner["total"])
        proved_tx = _b64(proof["data"])
        data_hash = _hex(header["data_hash"])
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise LightCheckError(
            f"the light-client evidence is malformed ({exc})", "bad_proof"
        ) from None
    # 1. The tx is in the block's data.
    if proved_tx != tx:
        raise LightCheckError("the tx proof is for another transaction", "bad_tx_proof")
    if root != data_hash:
        raise LightCheckError(
            "the tx proof's root is not the header's data_hash", "wrong_data_hash"
        )
    if not verify_merkle_proof(
        data_hash, hashlib.sha256(tx).digest(), index=index, total=total, aunts=aunts
    ):
        raise LightCheckError(
            "the tx's Merkle path does not lead to the header's data_hash", "wrong_data_hash"
        )
    # 2. The header is the block the commit is for.
    try:
        computed = header_hash(header)
        block_hash = _hex((commit.get("block_id") or {}).get("hash"))
        commit_height = int(commit["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LightCheckError(f"the signed header is malformed ({exc})", "bad_proof") from None
    if computed != block_hash:
        raise LightCheckError(
            "the header does not hash to the block id the commit signs", "bad_header_hash"
        )
    if (
        header.get("chain_id") != chain_id
        or int(header["height"]) != height
        or commit_height != height
    ):
        raise LightCheckError(
            f"the block is not height {height} of chain {chain_id}", "wrong_chain"
        )
    # 3. The validator set is the header's and the trusted one.
    try:
        set_hash = validators_hash(validators)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise LightCheckError(f"the validator set is malformed ({exc})", "bad_proof") from None
    if set_hash != _hex(header.get("validators_hash")):
        raise LightCheckError(
            "the validator set does not hash to the header's validators_hash",
            "bad_validators_hash",
        )
    if set_hash.hex().upper() != str(trusted_validators_hash).upper():
        raise LightCheckError(
            f"the block was committed by validator set {set_hash.hex().upper()}, not the "
            f"trusted set {str(trusted_validators_hash).upper() or '(none given)'}",
            "unknown_validator_set",
        )
    # 4. More than 2/3 of the voting power signed the canonical vote for this block id.
    by_address = {str(v["address"]).upper(): v for v in validators}
    total_power = sum(int(v["voting_power"]) for v in validators)
    signed = 0
    seen: set[str] = set()
    for sig in commit.get("signatures") or []:
        if int(sig.get("block_id_flag") or 0) != BLOCK_ID_FLAG_COMMIT:
            continue  # absent, or voted nil: no power for this block
        address = str(sig.get("validator_address", "")).upper()
        v = by_address.get(address)
        if v is None or address in seen:
            raise LightCheckError(
                f"the commit has a signature from {address or '?'}, not a member of the set",
                "forged_signature",
            )
        seen.add(address)
        try:
            key = Ed25519PublicKey.from_public_bytes(_validator_key(v))
            key.verify(_b64(sig.get("signature")), vote_sign_bytes(chain_id, commit, sig))
        except (InvalidSignature, ValueError, KeyError, binascii.Error):
            raise LightCheckError(
                f"validator {address}'s signature of the block is not valid (a forged commit)",
                "forged_signature",
            ) from None
        signed += int(v["voting_power"])
    if signed * 3 <= total_power * 2:
        raise LightCheckError(
            f"only {signed} of {total_power} voting power signed the block (need > 2/3)",
            "too_little_power",
        )
