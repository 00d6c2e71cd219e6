"""The CometBFT light-client check of anchors (datarooms.chain.light).

Interop: the encodings are checked against CometBFT's own test vectors (cometbft/cometbft
at 5bba72c1, main):
  * types/vote_test.go   TestVoteSignBytesTestVectors (canonical vote sign bytes)
  * types/block_test.go  TestHeaderHash (Header.Hash)
  * crypto/merkle/tree_test.go TestHashFromByteSlices, rfc6962_test.go TestRFC6962Hasher
Then the devchain's real /commit, /validators and /tx?prove=true evidence is checked,
and each way of forging it fails with its own reason.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.signing import VerifyKey

from datarooms.chain import light
from datarooms.chain.anchor import ChainAnchor, anchor_tx, bundle_anchor_check
from tests._roomsbot import running_devchain

GO_ZERO_TIME = -62135596800  # time.Time{} as a protobuf Timestamp's seconds


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- CometBFT's vectors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("chain_id", "height", "round_", "vote_type", "want"),
    [
        # 0: Vote{} (height and round zero are left out)
        ("", 0, 0, 0, "0d2a0b088092b8c398feffffff01"),
        # 1: Height 1, Round 1, PrecommitType
        ("", 1, 1, 2, "2108021101000000000000001901000000000000002a0b088092b8c398feffffff01"),
        # 2: Height 1, Round 1, PrevoteType
        ("", 1, 1, 1, "2108011101000000000000001901000000000000002a0b088092b8c398feffffff01"),
        # 3: Height 1, Round 1, no type
        ("", 1, 1, 0, "1f1101000000000000001901000000000000002a0b088092b8c398feffffff01"),
        # 4: with chain id "test_chain_id"
        (
            "test_chain_id",
            1,
            1,
            0,
            "2e110100000000000000190100000000000000"
            "2a0b088092b8c398feffffff01320d746573745f636861696e5f6964",
        ),
    ],
)
def test_vote_sign_bytes_match_cometbft_vectors(
    chain_id: str, height: int, round_: int, vote_type: int, want: str
) -> None:
    got = light.canonical_vote_sign_bytes(
        chain_id,
        height=height,
        round_=round_,
        block_hash=b"",
        parts_total=0,
        parts_hash=b"",
        seconds=GO_ZERO_TIME,
        nanos=0,
        vote_type=vote_type,
    )
    assert got.hex() == want


def test_header_hash_matches_cometbft_vector() -> None:
    names = [
        "last_commit_hash", "data_hash", "validators_hash", "next_validators_hash",
        "consensus_hash", "app_hash", "last_results_hash", "evidence_hash",
    ]  # fmt: skip
    header = {
        "version": {"block": "1", "app": "2"},
        "chain_id": "chainId",
        "height": "3",
        "time": "2019-10-13T16:14:44Z",
        "last_block_id": {"hash": "00" * 32, "parts": {"total": 6, "hash": "00" * 32}},
        **{n: _sha(n.encode()).upper() for n in names},
        "proposer_address": _sha(b"proposer_address")[:40],  # crypto.AddressHash
    }
    want = "F740121F553B5418C3EFBD343C2DBFE9E007BB67B0D020A0741374BAB65242A4"
    assert light.header_hash(header).hex().upper() == want
    header["height"] = "4"
    assert light.header_hash(header).hex().upper() != want


def test_merkle_matches_cometbft_vectors() -> None:
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert light.merkle_root([]).hex() == empty
    assert light.merkle_root([b""]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert light.merkle_root([b"L123456"]).hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert light.merkle_root([bytes([1, 2, 3])]).hex() == (
        "054edec1d0211f624fed0cbca9d4f9400b0e491c43742af2c5b0abebf0c990d8"
    )
    assert light.merkle_root([bytes([1, 2, 3]), bytes([4, 5, 6])]).hex() == (
        "82e6cfce00453804379b53962939eaa7906b39904be0813fcadd31b100773c4b"
    )
    many = [bytes([1, 2]), bytes([3, 4]), bytes([5, 6]), bytes([7, 8]), bytes([9, 10])]
    assert light.merkle_root(many).hex() == (
        "f326493eceab4f2d9ffbc78c59432a0a005d6ea98392045c74df5d14a113be18"
    )
    # Every proof of every tree up to 9 leaves checks, and fails for another leaf/index.
    for n in range(1, 10):
        items = [bytes([i]) * 3 for i in range(n)]
        root = light.merkle_root(items)
        for i in range(n):
            leaf, aunts = light.merkle_proof(items, i)
            assert leaf == hashlib.sha256(b"\x00" + items[i]).digest()
            assert light.verify_merkle_proof(root, items[i], index=i, total=n, aunts=aunts)
            assert not light.verify_merkle_proof(root, b"x", index=i, total=n, aunts=aunts)
            if n > 1:
                other = (i + 1) % n
                assert not light.verify_merkle_proof(
                    root, items[i], index=other, total=n, aunts=aunts
                )


# -- a synthetic chain of 4 validators: the voting power rule ----------------------------


def _validator(key: Ed25519PrivateKey, power: int) -> dict[str, Any]:
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "address": _sha(pub)[:40].upper(),
        "pub_key": {"type": light.ED25519, "value": base64.b64encode(pub).decode()},
        "voting_power": str(power),
        "proposer_priority": "0",
    }


def _evidence(
    keys: list[Ed25519PrivateKey], powers: list[int], signers: list[int], tx: bytes
) -> dict[str, Any]:
    vals = [_validator(k, p) for k, p in zip(keys, powers, strict=True)]
    txs = [b"other tx 1", tx, b"other tx 2"]
    vhash = light.validators_hash(vals).hex().upper()
    header = {
        "version": {"block": "11", "app": "0"},
        "chain_id": "synthetic",
        "height": "7",
        "time": "2026-01-02T03:04:05.123456789Z",
        "last_block_id": {"hash": "AB" * 32, "parts": {"total": 1, "hash": "CD" * 32}},
        "last_commit_hash": "",
        "data_hash": light.tx_data_hash(txs).hex().upper(),
        "validators_hash": vhash,
        "next_validators_hash": vhash,
        "consensus_hash": "",
        "app_hash": "",
        "last_results_hash": "",
        "evidence_hash": "",
        "proposer_address": vals[0]["address"],
    }
    block_id = {
        "hash": light.header_hash(header).hex().upper(),
        "parts": {"total": 1, "hash": "EF" * 32},
    }
    commit: dict[str, Any] = {"height": "7", "round": 0, "block_id": block_id}
    sigs = []
    for i, v in enumerate(vals):
        stamp = f"2026-01-02T03:04:0{6 + i}.5Z"
        if i in signers:
            data = light.vote_sign_bytes("synthetic", commit, {"timestamp": stamp})
            sig = base64.b64encode(keys[i].sign(data)).decode()
            sigs.append({"block_id_flag": 2, "validator_address": v["address"],
                         "timestamp": stamp, "signature": sig})  # fmt: skip
        else:
            sigs.append({"block_id_flag": 1, "validator_address": "",
                         "timestamp": "0001-01-01T00:00:00Z", "signature": None})  # fmt: skip
    commit["signatures"] = sigs
    hashes = [hashlib.sha256(t).digest() for t in txs]
    leaf, aunts = light.merkle_proof(hashes, 1)
    return {
        "signed_header": {"header": header, "commit": commit},
        "validators": vals,
        "tx_proof": {
            "root_hash": header["data_hash"],
            "data": base64.b64encode(tx).decode(),
            "proof": {
                "total": "3",
                "index": "1",
                "leaf_hash": base64.b64encode(leaf).decode(),
                "aunts": [base64.b64encode(a).decode() for a in aunts],
            },
        },
    }


def _reason(tx: bytes, ev: dict[str, Any], trusted: str, chain_id: str = "synthetic") -> str:
    try:
        light.verify_tx_inclusion(
            tx, ev, chain_id=chain_id, height=7, trusted_validators_hash=trusted
        )
    except light.LightCheckError as exc:
        return exc.reason
    return "ok"


def test_voting_power_and_each_forgery_of_synthetic_evidence() -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(4)]
    tx = b"the anchor"
    ok = _evidence(keys, [10, 10, 10, 10], [0, 1, 2], tx)
    trusted = ok["signed_header"]["header"]["validators_hash"]
    assert _reason(tx, ok, trusted) == "ok"
    # 2 of 4 equal validators is not more than 2/3; 1 validator with 70 of 100 is.
    assert _reason(tx, _evidence(keys, [10, 10, 10, 10], [0, 1], tx), trusted) != "ok"
    half = _evidence(keys, [10, 10, 10, 10], [0, 1], tx)
    assert _reason(tx, half, half["signed_header"]["header"]["validators_hash"]) == (
        "too_little_power"
    )
    big = _evidence(keys, [70, 10, 10, 10], [0], tx)
    assert _reason(tx, big, big["signed_header"]["header"]["validators_hash"]) == "ok"
    exact = _evidence(keys, [20, 10, 0, 0], [0], tx)  # exactly 2/3: not enough
    assert _reason(tx, exact, exact["signed_header"]["header"]["validators_hash"]) == (
        "too_little_power"
    )

    def forged(mutate: Any) -> str:
        ev = copy.deepcopy(ok)
        mutate(ev)
        return _reason(tx, ev, trusted)

    sig0 = ok["signed_header"]["commit"]["signatures"][0]
    other = base64.b64encode(keys[3].sign(b"something else")).decode()
    assert forged(lambda e: e["signed_header"]["commit"]["signatures"][0].update(
        signature=other)) == "forged_signature"  # fmt: skip
    # A signature copied to another validator's slot, or a stranger's.
    assert forged(lambda e: e["signed_header"]["commit"]["signatures"][1].update(
        signature=sig0["signature"])) == "forged_signature"  # fmt: skip
    assert forged(lambda e: e["signed_header"]["commit"]["signatures"][0].update(
        validator_address="AA" * 20)) == "forged_signature"  # fmt: skip
    # Signed for another time than the one given (the sign bytes include it).
    assert forged(lambda e: e["signed_header"]["commit"]["signatures"][0].update(
        timestamp="2026-01-02T03:04:06.6Z")) == "forged_signature"  # fmt: skip
    # The same signatures claimed for another chain.
    assert _reason(tx, copy.deepcopy(ok), trusted, chain_id="other") == "wrong_chain"
    # A different header (the block id no longer matches).
    assert forged(lambda e: e["signed_header"]["header"].update(app_hash="11" * 32)) == (
        "bad_header_hash"
    )
    # Another data hash in the proof, or a tx the block does not hold.
    assert forged(lambda e: e["tx_proof"].update(root_hash="22" * 32)) == "wrong_data_hash"
    assert forged(lambda e: e["tx_proof"]["proof"].update(index="0")) == "wrong_data_hash"
    assert _reason(b"another tx", copy.deepcopy(ok), trusted) == "bad_tx_proof"
    # A validator set that is not the header's, and a header's set not the trusted one.
    assert forged(lambda e: e["validators"][0].update(voting_power="1000")) == (
        "bad_validators_hash"
    )
    assert _reason(tx, copy.deepcopy(ok), "00" * 32) == "unknown_validator_set"
    assert _reason(tx, copy.deepcopy(ok), "") == "unknown_validator_set"
    assert forged(lambda e: e.pop("validators")) == "bad_proof"


# -- the devchain's real RPC evidence ------------------------------------------------


async def test_devchain_evidence_checks_as_a_light_client(tmp_path: Path) -> None:
    txs = [anchor_tx(_sha(b"room"), i, i, _sha(b"r%d" % i), _sha(b"h%d" % i)) for i in (1, 2, 3)]
    async with running_devchain(tmp_path / "chain") as srv:
        chain = ChainAnchor(srv.url)
        # Concurrently, so one block holds several txs (a proof with aunts).
        heights = await asyncio.gather(*(chain.broadcast(t) for t in txs))
        await chain.broadcast(anchor_tx(_sha(b"room"), 4, 4, _sha(b"r4"), _sha(b"h4")))
        identity = await chain.identity()
        proofs = [await chain.inclusion_proof(t, h) for t, h in zip(txs, heights, strict=True)]
    assert set(identity) == {"chain_id", "validators", "validators_hash"}
    assert all(p["signed_header"]["commit"]["signatures"][0]["block_id_flag"] == 2 for p in proofs)
    assert "datarooms" not in proofs[0]["signed_header"]
    assert any(p["tx_proof"]["proof"]["aunts"] for p in proofs), "one block holds several txs"
    # The devchain's precommit verifies with libsodium (PyNaCl), over the sign bytes.
    commit = proofs[0]["signed_header"]["commit"]
    sig = commit["signatures"][0]
    VerifyKey(base64.b64decode(identity["validators"][0]["pub_key"]["value"])).verify(
        light.vote_sign_bytes(identity["chain_id"], commit, sig),
        base64.b64decode(sig["signature"]),
    )
    check = bundle_anchor_check(identity)
    anchors = [{"height": h, "proof": p} for h, p in zip(heights, proofs, strict=True)]
    for t, a in zip(txs, anchors, strict=True):
        check(t, a)  # verified
    key = identity["validators"][0]["pub_key"]["value"]
    bundle_anchor_check(identity, validator_pub_keys=[key])(txs[0], anchors[0])
    bundle_anchor_check(identity, validators_hash_=identity["validators_hash"])(txs[0], anchors[0])

    def reason(check_: Any, tx: bytes, anchor: dict[str, Any]) -> str:
        try:
            check_(tx, anchor)
        except Exception as exc:
            return str(getattr(exc, "reason", exc))
        return "ok"

    stranger = base64.b64encode(bytes(32)).decode()
    assert reason(bundle_anchor_check(identity, validator_pub_keys=[stranger]),
                  txs[0], anchors[0]) == "unknown_validator_set"  # fmt: skip
    assert reason(bundle_anchor_check(identity, validators_hash_="AB" * 32),
                  txs[0], anchors[0]) == "unknown_validator_set"  # fmt: skip
    # Another anchor's tx against this anchor's proof.
    assert reason(check, txs[1], anchors[0]) == "bad_tx_proof"

    def forged(mutate: Any) -> str:
        a = copy.deepcopy(anchors[0])
        mutate(a["proof"])
        return reason(check, txs[0], a)

    sig = {"signature": base64.b64encode(bytes(64)).decode()}
    assert forged(lambda p: p["signed_header"]["commit"]["signatures"][0].update(sig)) == (
        "forged_signature"
    )
    assert forged(lambda p: p["signed_header"]["header"].update(data_hash="33" * 32)) == (
        "wrong_data_hash"
    )
    assert forged(lambda p: p["signed_header"]["header"].update(height="999")) == (
        "bad_header_hash"
    )
    assert forged(lambda p: p["signed_header"]["commit"].update(signatures=[])) == (
        "too_little_power"
    )
    # Another key's set given as the block's: not the set the header names.
    other = _validator(Ed25519PrivateKey.generate(), 10)
    assert forged(lambda p: p.update(validators=[other])) == "bad_validators_hash"
    # An old devchain proof (before the light-client check): re-export.
    old = {"height": heights[0], "tx_hashes": [], "header": {}, "block_hash": "", "signature": ""}
    assert reason(check, txs[0], {"height": heights[0], "proof": old}) == "unsupported_proof"
