"""Keys: cross-signing, secret storage, key backup, recovery keys, trust policy."""

from datarooms.keys.manager import (
    TRUST_POLICIES,
    IdentityChangedError,
    KeyManager,
    KeyStatus,
    TrustPolicy,
)
from datarooms.keys.recovery import decode_recovery_key, encode_recovery_key

__all__ = [
    "TRUST_POLICIES",
    "IdentityChangedError",
    "KeyManager",
    "KeyStatus",
    "TrustPolicy",
    "decode_recovery_key",
    "encode_recovery_key",
]
