"""Content ids, ``did:key`` and Data Integrity proofs (``eddsa-jcs-2022``).

The building blocks of verifiable evidence, with no I/O:

- :func:`cid_of`: a CIDv1 (sha2-256 multihash, ``raw`` or ``json`` codec), base32
  (``bafk…`` / ``bagaaiera…``), as any multiformats implementation computes it;
- :func:`did_key` / :func:`public_key_of`: the ``did:key`` of an Ed25519 public key
  (multicodec ``ed25519-pub``, base58btc multibase) and back;
- :func:`sign` / :func:`verify`: a W3C Data Integrity proof with the ``eddsa-jcs-2022``
  cryptosuite (VC Data Integrity EdDSA Cryptosuites v1.0, section 3.3): the document and
  the proof options are canonicalised with RFC 8785 (JCS), each hashed with SHA-256, and
  the concatenation ``sha256(proof config) || sha256(document)`` is signed with Ed25519.

JCS comes from ``rfc8785``, multihash/CID/multicodec from the ``py-cid`` family, base58
from ``base58`` (py-multibase's base58btc drops leading zero bytes); Ed25519 from
``cryptography``.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import base58
import multicodec
import multihash
import rfc8785
from cid import make_cid
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from datarooms.errors import DataroomsError

__all__ = [
    "CRYPTOSUITE",
    "ProofError",
    "canonical",
    "cid_of",
    "did_key",
    "public_key_of",
    "sign",
    "verification_method",
    "verify",
]

CRYPTOSUITE = "eddsa-jcs-2022"
_DID_KEY = "did:key:"


class ProofError(DataroomsError):
    """A proof, a DID or a CID does not check out; ``reason`` is a short machine code."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def multibase_b58(data: bytes) -> str:
    """Multibase base58btc (``z`` + Bitcoin base58): leading zero bytes kept as ``1``s.

    (py-multibase's base58btc drops them: 1 signature in 256 would not round-trip.)"""
    return "z" + base58.b58encode(data).decode()


def from_multibase_b58(text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("z") or len(text) < 2:
        raise ValueError("not multibase base58btc")
    return bytes(base58.b58decode(text[1:]))


def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value."""
    try:
        return bytes(rfc8785.dumps(obj))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ProofError(f"the document is not canonical JSON: {exc}", "not_json") from None


def cid_of(data: bytes, codec: str = "raw") -> str:
    """CIDv1 of ``data``: sha2-256 multihash, ``codec`` (``raw`` or ``json``), base32."""
    if codec not in ("raw", "json"):
        raise ValueError("codec must be raw or json")
    digest = multihash.digest(data, "sha2-256").encode()
    encoded = make_cid(1, codec, digest).encode("base32")
    return encoded.decode() if isinstance(encoded, bytes) else str(encoded)


def did_key(public: bytes) -> str:
    """``did:key:z6Mk…`` of a raw 32-byte Ed25519 public key."""
    if len(public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return _DID_KEY + multibase_b58(bytes(multicodec.add_prefix("ed25519-pub", public)))


def public_key_of(did: str) -> bytes:
    """The raw Ed25519 public key a ``did:key`` (or its key id ``did:key:z…#z…``) names."""
    if not isinstance(did, str) or not did.startswith(_DID_KEY + "z"):
        raise ProofError(f"{did!r} is not a base58btc did:key", "bad_did")
    ident = did[len(_DID_KEY) :].split("#", 1)
    try:
        raw = from_multibase_b58(ident[0])
        codec = multicodec.get_codec(raw)
        public = bytes(multicodec.remove_prefix(raw))
    except Exception:
        raise ProofError(f"{did!r} is not a valid did:key", "bad_did") from None
    if codec != "ed25519-pub" or len(public) != 32:
        raise ProofError(f"{did!r} is not an Ed25519 did:key", "bad_did")
    if len(ident) == 2 and ident[1] != ident[0]:
        raise ProofError(f"{did!r}: the fragment does not name the DID's key", "bad_did")
    return public


def verification_method(did: str) -> str:
    """The key id of a ``did:key``: ``did:key:z…#z…``."""
    return f"{did}#{did[len(_DID_KEY) :]}"


def _hash_data(document: dict[str, Any], config: dict[str, Any]) -> bytes:
    """``sha256(JCS(proof config)) || sha256(JCS(document))`` (section 3.3.4)."""
    return hashlib.sha256(canonical(config)).digest() + hashlib.sha256(canonical(document)).digest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sign(
    document: dict[str, Any],
    key: Ed25519PrivateKey,
    *,
    purpose: str = "assertionMethod",
    created: str | None = None,
) -> dict[str, Any]:
    """A copy of ``document`` with an ``eddsa-jcs-2022`` proof by ``key`` (its did:key)."""
    if "proof" in document:
        raise ValueError("the document already carries a proof")
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    options: dict[str, Any] = {
        "type": "DataIntegrityProof",
        "cryptosuite": CRYPTOSUITE,
        "created": created or _now(),
        "verificationMethod": verification_method(did_key(public)),
        "proofPurpose": purpose,
    }
    # The proof carries the document's @context, and the proof config hashed includes it.
    if "@context" in document:
        options["@context"] = copy.deepcopy(document["@context"])
    signature = key.sign(_hash_data(document, options))
    secured = copy.deepcopy(document)
    secured["proof"] = {**options, "proofValue": multibase_b58(signature)}
    return secured


@dataclass(frozen=True)
class Verified:
    """What :func:`verify` established: who signed, with which key id."""

    signer: str
    verification_method: str
    created: str


def verify(secured: dict[str, Any], *, purpose: str = "assertionMethod") -> Verified:
    """Check an ``eddsa-jcs-2022`` proof signed by a ``did:key``; raise :class:`ProofError`."""
    if not isinstance(secured, dict):
        raise ProofError("the document is not a JSON object", "malformed")
    proof = secured.get("proof")
    if not isinstance(proof, dict):
        raise ProofError("the document carries no proof (or several)", "no_proof")
    if proof.get("type") != "DataIntegrityProof" or proof.get("cryptosuite") != CRYPTOSUITE:
        raise ProofError(
            f"unsupported proof: type {proof.get('type')!r}, cryptosuite "
            f"{proof.get('cryptosuite')!r} (want DataIntegrityProof / {CRYPTOSUITE})",
            "unsupported_proof",
        )
    if proof.get("proofPurpose") != purpose:
        raise ProofError(f"the proof's purpose is not {purpose}", "wrong_purpose")
    method = proof.get("verificationMethod")
    value = proof.get("proofValue")
    if not isinstance(method, str) or not isinstance(value, str) or not value.startswith("z"):
        raise ProofError(
            "the proof lacks a verificationMethod or a base58btc proofValue", "malformed"
        )
    public = public_key_of(method)
    if "#" not in method:
        raise ProofError("the verificationMethod is not a key id (did#key)", "bad_did")
    try:
        signature = from_multibase_b58(value)
    except Exception:
        raise ProofError("the proofValue is not valid base58btc", "malformed") from None
    document = {k: v for k, v in secured.items() if k != "proof"}
    context = proof.get("@context")
    if context is not None:
        # The document's @context must start with the proof's (section 3.3.2, step 4).
        want = context if isinstance(context, list) else [context]
        have = document.get("@context")
        have = have if isinstance(have, list) else [have]
        if have[: len(want)] != want:
            raise ProofError("the document's @context does not start with the proof's", "malformed")
        document["@context"] = context
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, _hash_data(document, options))
    except (InvalidSignature, ValueError):
        raise ProofError(
            f"the signature does not verify with {method.split('#', 1)[0]} "
            "(the document or its proof was changed, or another key signed it)",
            "bad_signature",
        ) from None
    return Verified(method.split("#", 1)[0], method, str(proof.get("created", "")))
