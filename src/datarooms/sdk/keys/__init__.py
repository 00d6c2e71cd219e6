"""Keys: cross-signing, secret storage, key backup, recovery keys, trust policy, verification."""

from datarooms.sdk.keys.manager import (
    TRUST_POLICIES,
    DeviceTrust,
    IdentityChangedError,
    KeyManager,
    KeyStatus,
    TrustPolicy,
)
from datarooms.sdk.keys.recovery import decode_recovery_key, encode_recovery_key
from datarooms.sdk.keys.sas import Emoji
from datarooms.sdk.keys.verification import (
    Verification,
    VerificationCancelled,
    VerificationError,
    VerificationState,
    Verifier,
)

__all__ = [
    "TRUST_POLICIES",
    "DeviceTrust",
    "Emoji",
    "IdentityChangedError",
    "KeyManager",
    "KeyStatus",
    "TrustPolicy",
    "Verification",
    "VerificationCancelled",
    "VerificationError",
    "VerificationState",
    "Verifier",
    "decode_recovery_key",
    "encode_recovery_key",
]
