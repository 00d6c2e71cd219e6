"""Secret storage, ``m.secret_storage.v1.aes-hmac-sha2``.

Secrets (cross-signing private keys, the backup key) are stored encrypted in
the user's account data, unlocked by a 32-byte key shown to the user as a
recovery key (or derived from a passphrase).

For each secret: HKDF-SHA256(key, salt = 32 zero bytes, info = secret name) →
64 bytes: an AES-256 key and an HMAC-SHA256 key; AES-CTR with a random IV
whose bit 63 is cleared; the MAC covers the ciphertext. The key's description
holds an encryption of 32 zero bytes under the name "" so a key can be checked.
"""

from __future__ import annotations

import base64
import hmac
import secrets as pyrandom
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from datarooms.errors import ValidationError

ALGORITHM = "m.secret_storage.v1.aes-hmac-sha2"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _derive(key: bytes, name: str) -> tuple[bytes, bytes]:
    okm = HKDF(hashes.SHA256(), 64, salt=b"\0" * 32, info=name.encode()).derive(key)
    return okm[:32], okm[32:]


def encrypt_secret(key: bytes, name: str, secret: bytes) -> dict[str, str]:
    aes_key, mac_key = _derive(key, name)
    iv = bytearray(pyrandom.token_bytes(16))
    iv[8] &= 0x7F  # clear bit 63 so the 64-bit counter cannot wrap
    enc = Cipher(algorithms.AES(aes_key), modes.CTR(bytes(iv))).encryptor()
    ciphertext = enc.update(secret) + enc.finalize()
    mac = hmac.new(mac_key, ciphertext, sha256).digest()
    return {"iv": _b64(bytes(iv)), "ciphertext": _b64(ciphertext), "mac": _b64(mac)}


def decrypt_secret(key: bytes, name: str, data: dict[str, Any]) -> bytes:
    try:
        iv, ciphertext, mac = _unb64(data["iv"]), _unb64(data["ciphertext"]), _unb64(data["mac"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"the stored secret {name!r} is malformed: {exc}") from None
    aes_key, mac_key = _derive(key, name)
    if not hmac.compare_digest(hmac.new(mac_key, ciphertext, sha256).digest(), mac):
        raise ValidationError(
            f"the recovery key does not unlock {name!r} (wrong key, or the data was changed)"
        )
    dec = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).decryptor()
    return dec.update(ciphertext) + dec.finalize()


@dataclass(frozen=True)
class KeyDescription:
    key_id: str
    content: dict[str, Any]

    def check(self, key: bytes) -> bool:
        """Does ``key`` match this description's check MAC?"""
        if "mac" not in self.content or "iv" not in self.content:
            return True  # old descriptions carry no check
        aes_key, mac_key = _derive(key, "")
        iv = _unb64(self.content["iv"])
        enc = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).encryptor()
        ciphertext = enc.update(b"\0" * 32) + enc.finalize()
        mac = hmac.new(mac_key, ciphertext, sha256).digest()
        return hmac.compare_digest(mac, _unb64(self.content["mac"]))


def new_key_description(key: bytes, *, passphrase: dict[str, Any] | None = None) -> KeyDescription:
    check = encrypt_secret(key, "", b"\0" * 32)
    content: dict[str, Any] = {
        "algorithm": ALGORITHM,
        "name": "datarooms recovery key",
        "iv": check["iv"],
        "mac": check["mac"],
    }
    if passphrase:
        content["passphrase"] = passphrase
    return KeyDescription(pyrandom.token_urlsafe(24), content)
