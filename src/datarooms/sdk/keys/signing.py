"""Canonical JSON and ed25519 signatures, as the Matrix spec defines them.

Signing JSON: drop ``signatures`` and ``unsigned``, encode canonically (sorted
keys, no insignificant whitespace, UTF-8), sign with ed25519, and add the
unpadded-base64 signature under ``signatures[user_id]["ed25519:<key id>"]``.
Primitives come from ``cryptography``.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def decode_b64(value: str) -> bytes:
    value = value.replace("-", "+").replace("_", "/")
    return base64.b64decode(value + "=" * (-len(value) % 4))


def signable(obj: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


class SigningKey:
    """An ed25519 key pair used for cross-signing (master, self-signing, user-signing)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = unpadded_b64(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign_raw(self, message: bytes) -> str:
        return unpadded_b64(self._private.sign(message))

    def sign_json(
        self, obj: dict[str, Any], user_id: str, key_id: str | None = None
    ) -> dict[str, Any]:
        """A copy of ``obj`` with this key's signature added."""
        signed = copy.deepcopy(obj)
        sig = self.sign_raw(signable(obj))
        signed.setdefault("signatures", {}).setdefault(user_id, {})[
            f"ed25519:{key_id or self.public}"
        ] = sig
        return signed

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public!r})"


def verify_json(obj: dict[str, Any], user_id: str, key_id: str, public_key: str) -> bool:
    """Is ``obj`` validly signed by ``public_key`` (as ``user_id``, ``ed25519:key_id``)?"""
    sig = obj.get("signatures", {}).get(user_id, {}).get(f"ed25519:{key_id}")
    if not isinstance(sig, str):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(decode_b64(public_key)).verify(
            decode_b64(sig), signable(obj)
        )
        return True
    except (InvalidSignature, ValueError):
        return False
