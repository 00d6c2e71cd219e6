"""``did:key`` principals with Ed25519 keys (the only DID method UCANs here accept).

A ``did:key`` is ``did:key:z`` + base58btc(multicodec ``ed25519-pub`` (0xed 0x01) +
the 32-byte public key); anyone can read the public key off the DID, no resolver.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from multiformats import multibase

from datarooms._fs import PRIVATE_FILE, private_dir
from datarooms.sdk.ucan.errors import UcanError

_ED25519_PUB = b"\xed\x01"
_MAX_DID = 256


def did_of(public_key: bytes) -> str:
    """The ``did:key`` of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return "did:key:" + multibase.encode(_ED25519_PUB + public_key, "base58btc")


def public_key_of(did: object) -> Ed25519PublicKey:
    """The Ed25519 key a ``did:key`` names; :class:`UcanError` for anything else."""
    if not isinstance(did, str) or not did.startswith("did:") or len(did) > _MAX_DID:
        raise UcanError(f"{_short(did)} is not a DID", errcode="DR_UCAN_MALFORMED")
    return _public_key(did)


@functools.lru_cache(maxsize=4096)
def _public_key(did: str) -> Ed25519PublicKey:
    if not did.startswith("did:"):
        raise UcanError(f"{_short(did)} is not a DID", errcode="DR_UCAN_MALFORMED")
    method = did.split(":", 2)[1]
    if method != "key":
        raise UcanError(
            f"the DID method {method!r} is not supported: only did:key (Ed25519) is accepted",
            errcode="DR_UCAN_UNKNOWN_DID_METHOD",
        )
    body = did[len("did:key:") :].split("#", 1)[0]
    try:
        raw = multibase.decode(body) if body.startswith("z") else b""
    except (ValueError, KeyError):
        raw = b""
    if len(raw) != 34 or raw[:2] != _ED25519_PUB:
        raise UcanError(
            f"{_short(did)} is not an Ed25519 did:key (only Ed25519 keys are accepted)",
            errcode="DR_UCAN_UNKNOWN_DID_METHOD",
        )
    return Ed25519PublicKey.from_public_bytes(raw[2:])


def verify_signature(did: str, signature: bytes, message: bytes) -> bool:
    try:
        public_key_of(did).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Principal:
    """An Ed25519 signing key and its ``did:key``."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Principal:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Principal:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed (a secret: never log it)."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def did(self) -> str:
        return did_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def did_document(self) -> dict[str, object]:
        """A DID document for ``/.well-known/did.json`` (Multikey verification method)."""
        did = self.did
        key_id = f"{did}#{did[len('did:key:') :]}"
        return {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": did,
            "verificationMethod": [
                {
                    "id": key_id,
                    "type": "Multikey",
                    "controller": did,
                    "publicKeyMultibase": did[len("did:key:") :],
                }
            ],
            "authentication": [key_id],
            "assertionMethod": [key_id],
            "capabilityDelegation": [key_id],
            "capabilityInvocation": [key_id],
        }


def load_or_create_principal(path: Path) -> Principal:
    """The key kept in ``path`` (a private 32-byte seed file), made on first use.

    The file is written (0600, fsynced) before the key is returned, so a DID handed out is
    never lost to a crash.
    """
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise UcanError(f"{path} is not a 32-byte Ed25519 seed", errcode="DR_UCAN_KEY")
        return Principal.from_seed(seed)
    private_dir(path.parent)
    principal = Principal.generate()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.write(fd, principal.seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return principal
