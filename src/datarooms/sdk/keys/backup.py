"""Server-side key backup, ``m.megolm_backup.v1.curve25519-aes-sha2``.

Each Megolm session is encrypted to the backup's Curve25519 public key with
vodozemac's PK encryption (ephemeral X25519, HKDF-SHA256, AES-256-CBC, the
legacy 8-byte MAC of MSC4048). Only the holder of the backup private key (kept
in secret storage, unlocked by the recovery key) can read the backup.
"""

from __future__ import annotations

import json
from typing import Any

import vodozemac

from datarooms.errors import ValidationError
from datarooms.sdk.keys.signing import decode_b64, unpadded_b64

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
MEGOLM = "m.megolm.v1.aes-sha2"


class BackupKey:
    """The backup's key pair (Curve25519)."""

    def __init__(self, secret: vodozemac.Curve25519SecretKey) -> None:
        self._secret = secret
        self._decryption = vodozemac.PkDecryption.from_key(secret)
        self.public_key = self._decryption.public_key.to_base64()

    @classmethod
    def generate(cls) -> BackupKey:
        return cls(vodozemac.Curve25519SecretKey())

    @classmethod
    def from_bytes(cls, raw: bytes) -> BackupKey:
        if len(raw) != 32:
            raise ValidationError("a backup key is 32 bytes")
        return cls(vodozemac.Curve25519SecretKey.from_bytes(raw))

    def to_bytes(self) -> bytes:
        return bytes(self._secret.to_bytes())

    def decrypt(self, session_data: dict[str, Any]) -> dict[str, Any]:
        try:
            message = vodozemac.Message.from_base64(
                session_data["ciphertext"], session_data["mac"], session_data["ephemeral"]
            )
            plaintext = self._decryption.decrypt(message)
            result: dict[str, Any] = json.loads(plaintext)
            return result
        except (KeyError, TypeError, ValueError, vodozemac.PkDecodeException) as exc:
            raise ValidationError(f"a backed-up session does not decrypt: {exc}") from None

    def __repr__(self) -> str:
        return f"BackupKey(public_key={self.public_key!r})"


def encrypt_session(public_key: str, payload: dict[str, Any]) -> dict[str, str]:
    """Encrypt one exported session for the backup whose public key is ``public_key``."""
    enc = vodozemac.PkEncryption.from_key(vodozemac.Curve25519PublicKey.from_base64(public_key))
    ephemeral, mac, ciphertext = enc.encrypt(json.dumps(payload).encode()).to_base64()
    return {"ephemeral": ephemeral, "ciphertext": ciphertext, "mac": mac}


def session_payload(session: Any) -> dict[str, Any]:
    """The backup plaintext of a nio InboundGroupSession (exported at its first known index)."""
    return {
        "algorithm": MEGOLM,
        "sender_key": session.sender_key,
        "session_key": session.export_session(session.first_known_index),
        "sender_claimed_keys": {"ed25519": session.ed25519},
        "forwarding_curve25519_key_chain": list(session.forwarding_chain),
    }


__all__ = [
    "ALGORITHM",
    "BackupKey",
    "decode_b64",
    "encrypt_session",
    "session_payload",
    "unpadded_b64",
]
