"""Recovery keys in the spec's format, and passphrase-derived keys.

A recovery key is ``0x8B 0x01`` + the 32-byte key + a parity byte (XOR of all
previous bytes), base58-encoded (Bitcoin alphabet), shown in groups of four.
"""

from __future__ import annotations

import hashlib
import secrets

from datarooms.errors import ValidationError

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_PREFIX = bytes([0x8B, 0x01])


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _ALPHABET[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        idx = _ALPHABET.find(ch)
        if idx < 0:
            raise ValidationError(f"invalid character {ch!r} in the recovery key")
        n = n * 58 + idx
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def new_key() -> bytes:
    return secrets.token_bytes(32)


def encode_recovery_key(key: bytes) -> str:
    if len(key) != 32:
        raise ValueError("a recovery key encodes exactly 32 bytes")
    data = _PREFIX + key
    parity = 0
    for b in data:
        parity ^= b
    encoded = _b58encode(data + bytes([parity]))
    return " ".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def decode_recovery_key(text: str) -> bytes:
    """The 32-byte key in a recovery key; :class:`ValidationError` if it is mistyped."""
    raw = _b58decode("".join(text.split()))
    if len(raw) != 35 or raw[:2] != _PREFIX:
        raise ValidationError("this is not a recovery key (wrong length or prefix); check it")
    parity = 0
    for b in raw[:-1]:
        parity ^= b
    if parity != raw[-1]:
        raise ValidationError("the recovery key has a typo (its check byte does not match)")
    return raw[2:34]


def passphrase_key(passphrase: str, salt: str, iterations: int, bits: int = 256) -> bytes:
    """``m.pbkdf2``: PBKDF2-HMAC-SHA512 of the passphrase."""
    return hashlib.pbkdf2_hmac("sha512", passphrase.encode(), salt.encode(), iterations, bits // 8)
