"""UCAN 1.0 tokens: Delegation and Invocation envelopes, and the container that carries them.

Envelope (UCAN spec, "Envelope")::

    [ signature bytes, { "h": varsig header, "ucan/dlg@1.0.0-rc.1": payload } ]

in DAG-CBOR; the signature is Ed25519 over the DAG-CBOR of the second element. The varsig
header is ``34 01 ed01 ed01 13 71`` (varsig v1, EdDSA on edwards25519 with SHA-512,
payload in DAG-CBOR). A token's CID is CIDv1 / DAG-CBOR / SHA-256 of the envelope bytes.

A request carries an invocation and the delegations its ``prf`` names (root first) in one
container: ``"C"`` + unpadded base64url of DAG-CBOR ``{"ctn-v1": [token bytes, ...]}``
(the UCAN container format, base64url without compression).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dag_cbor
from multiformats import CID, multihash

from datarooms.sdk.ucan.did import Principal, public_key_of, verify_signature
from datarooms.sdk.ucan.errors import UcanError
from datarooms.sdk.ucan.policy import Policy
from datarooms.sdk.ucan.policy import check as check_policy

VERSION = "1.0.0-rc.1"
DELEGATION_TAG = f"ucan/dlg@{VERSION}"
INVOCATION_TAG = f"ucan/inv@{VERSION}"
#: varsig v1: EdDSA (0xed), edwards25519 (0xed), SHA2-512 (0x13), DAG-CBOR (0x71).
VARSIG_ED25519 = bytes([0x34, 0x01, 0xED, 0x01, 0xED, 0x01, 0x13, 0x71])
#: A bearer container is at most this many characters (8 KiB: a chain of ~12 hops).
MAX_CONTAINER_CHARS = 8192
#: Tokens in one container: the invocation and at most 7 delegations.
MAX_TOKENS = 8
CONTAINER_HEADER = "C"


def _malformed(message: str) -> UcanError:
    return UcanError(message, errcode="DR_UCAN_MALFORMED")


def cid_of(envelope: bytes) -> CID:
    return CID("base58btc", 1, "dag-cbor", multihash.digest(envelope, "sha2-256"))


#: CIDv1 (0x01), DAG-CBOR (0x71), SHA2-256 (0x12), 32 bytes (0x20): the binary CID prefix.
_CID_PREFIX = bytes([0x01, 0x71, 0x12, 0x20])


def cid_key(envelope: bytes) -> bytes:
    """The binary CID of a token, computed directly (cheap: no multiformats objects)."""
    return _CID_PREFIX + hashlib.sha256(envelope).digest()


def _check_command(cmd: object) -> str:
    if (
        not isinstance(cmd, str)
        or not cmd.startswith("/")
        or (cmd != "/" and cmd.endswith("/"))
        or cmd != cmd.lower()
        or "//" in cmd
        or len(cmd) > 256
    ):
        raise _malformed(f"{cmd!r} is not a UCAN command (lowercase, '/'-separated)")
    return cmd


def covers(granted: str, wanted: str) -> bool:
    """Whether the command ``granted`` includes ``wanted`` (itself or a subcommand)."""
    return granted == "/" or wanted == granted or wanted.startswith(granted + "/")


def _int_or_none(value: object, name: str, *, required: bool) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    raise _malformed(f"{name} must be an integer timestamp in seconds")


@dataclass(frozen=True)
class Delegation:
    """A signed UCAN 1.0 delegation (``ucan/dlg``)."""

    iss: str
    aud: str
    sub: str | None
    cmd: str
    pol: Policy
    nonce: bytes
    exp: int | None
    nbf: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    envelope: bytes = b""
    signature: bytes = b""

    @functools.cached_property
    def cid(self) -> CID:
        return cid_of(self.envelope)

    @functools.cached_property
    def key(self) -> bytes:
        """The binary CID."""
        return cid_key(self.envelope)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "iss": self.iss,
            "aud": self.aud,
            "sub": self.sub,
            "cmd": self.cmd,
            "pol": self.pol,
            "nonce": self.nonce,
            "exp": self.exp,
        }
        if self.nbf is not None:
            body["nbf"] = self.nbf
        if self.meta:
            body["meta"] = dict(self.meta)
        return body

    def encode(self) -> str:
        """This delegation alone, as a container string (to hand to its audience)."""
        return encode_container([self.envelope])


@dataclass(frozen=True)
class Invocation:
    """A signed UCAN 1.0 invocation (``ucan/inv``)."""

    iss: str
    sub: str
    aud: str | None
    cmd: str
    args: Mapping[str, Any]
    prf: tuple[CID, ...]
    nonce: bytes
    exp: int | None
    iat: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    envelope: bytes = b""
    signature: bytes = b""

    @functools.cached_property
    def cid(self) -> CID:
        return cid_of(self.envelope)

    @functools.cached_property
    def key(self) -> bytes:
        """The binary CID."""
        return cid_key(self.envelope)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "iss": self.iss,
            "sub": self.sub,
            "cmd": self.cmd,
            "args": dict(self.args),
            "prf": list(self.prf),
            "nonce": self.nonce,
            "exp": self.exp,
        }
        if self.aud is not None:
            body["aud"] = self.aud
        if self.iat is not None:
            body["iat"] = self.iat
        if self.meta:
            body["meta"] = dict(self.meta)
        return body


def _seal(tag: str, payload: dict[str, Any], signer: Principal) -> tuple[bytes, bytes]:
    signed = dag_cbor.encode({"h": VARSIG_ED25519, tag: payload})
    signature = signer.sign(signed)
    return dag_cbor.encode([signature, {"h": VARSIG_ED25519, tag: payload}]), signature


def delegate(
    issuer: Principal,
    audience: str,
    cmd: str,
    *,
    subject: str | None,
    policy: Policy | None = None,
    expires: int | None,
    not_before: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Delegation:
    """Sign a delegation of ``cmd`` on ``subject`` from ``issuer`` to ``audience``.

    A root delegation has ``subject == issuer.did``; a further hop names the same subject
    as the delegation it extends. ``expires`` is a Unix time in seconds.
    """
    public_key_of(audience)
    if subject is not None:
        public_key_of(subject)
    d = Delegation(
        iss=issuer.did,
        aud=audience,
        sub=subject,
        cmd=_check_command(cmd),
        pol=check_policy(list(policy or [])),
        nonce=os.urandom(12),
        exp=_int_or_none(expires, "exp", required=False),
        nbf=_int_or_none(not_before, "nbf", required=False),
        meta=dict(meta or {}),
    )
    envelope, signature = _seal(DELEGATION_TAG, d.payload(), issuer)
    return replace(d, envelope=envelope, signature=signature)


def invoke(
    issuer: Principal,
    cmd: str,
    args: Mapping[str, Any],
    proofs: Sequence[Delegation],
    *,
    subject: str | None = None,
    audience: str | None = None,
    lifetime: int = 60,
    now: int | None = None,
) -> Invocation:
    """Sign an invocation of ``cmd`` with ``args``, proven by ``proofs`` (root first)."""
    when = int(time.time()) if now is None else now
    sub = subject or (proofs[0].sub if proofs and proofs[0].sub else issuer.did)
    inv = Invocation(
        iss=issuer.did,
        sub=sub,
        aud=audience,
        cmd=_check_command(cmd),
        args=dict(args),
        prf=tuple(p.cid for p in proofs),
        nonce=os.urandom(12),
        exp=when + lifetime,
        iat=when,
    )
    envelope, signature = _seal(INVOCATION_TAG, inv.payload(), issuer)
    return replace(inv, envelope=envelope, signature=signature)


def encode_container(envelopes: Sequence[bytes]) -> str:
    raw = dag_cbor.encode({"ctn-v1": list(envelopes)})
    return CONTAINER_HEADER + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def bearer(invocation: Invocation, proofs: Sequence[Delegation]) -> str:
    """The ``Authorization: Bearer`` value for an invocation and its proofs."""
    return encode_container([invocation.envelope, *(p.envelope for p in proofs)])


def looks_like_container(token: str) -> bool:
    """Whether a bearer token is a UCAN container (OpenID tokens are short and plain)."""
    return len(token) > 64 and token[0] in "BC" and token[1:9] == "oWZjdG4t"


def decode_container(token: str) -> list[bytes]:
    """The token envelopes of a container string, size-checked before any decoding."""
    if len(token) > MAX_CONTAINER_CHARS:
        raise UcanError(
            f"the UCAN is {len(token)} characters, over the limit of {MAX_CONTAINER_CHARS}",
            errcode="DR_UCAN_TOO_LARGE",
        )
    if not token or token[0] not in "BC":
        raise _malformed("not a UCAN container (expected a base64url 'C' header)")
    body = token[1:]
    try:
        if token[0] == "C":
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        else:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        decoded: Any = dag_cbor.decode(raw)
    except (binascii.Error, ValueError, dag_cbor.decoding.DAGCBORDecodingError) as exc:
        raise _malformed(f"the UCAN container is not base64 DAG-CBOR: {exc}") from None
    tokens = decoded.get("ctn-v1") if isinstance(decoded, dict) else None
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, bytes) for t in tokens):
        raise _malformed("the UCAN container has no 'ctn-v1' list of tokens")
    if len(tokens) > MAX_TOKENS:
        raise UcanError(
            f"the UCAN container holds {len(tokens)} tokens, over the limit of {MAX_TOKENS}",
            errcode="DR_UCAN_TOO_LARGE",
        )
    return tokens


def decode(envelope: bytes) -> Delegation | Invocation:
    """Decode one envelope and check its signature; :class:`UcanError` names what is wrong."""
    try:
        outer: Any = dag_cbor.decode(envelope)
    except (ValueError, dag_cbor.decoding.DAGCBORDecodingError) as exc:
        raise _malformed(f"a UCAN envelope is not DAG-CBOR: {exc}") from None
    if (
        not isinstance(outer, list)
        or len(outer) != 2
        or not isinstance(outer[0], bytes)
        or not isinstance(outer[1], dict)
        or len(outer[1]) != 2
        or "h" not in outer[1]
    ):
        raise _malformed("a UCAN envelope is [signature, {h, payload}]")
    signature, sig_payload = outer
    header = sig_payload["h"]
    tag = next(k for k in sig_payload if k != "h")
    if header != VARSIG_ED25519:
        raise UcanError(
            "the UCAN's varsig header is not Ed25519 over DAG-CBOR, the only one accepted",
            errcode="DR_UCAN_BAD_SIGNATURE",
        )
    body = sig_payload[tag]
    if not isinstance(body, dict):
        raise _malformed("a UCAN payload is a map")
    token: Delegation | Invocation
    if tag == DELEGATION_TAG:
        token = _delegation(body, envelope, signature)
    elif tag == INVOCATION_TAG:
        token = _invocation(body, envelope, signature)
    else:
        raise _malformed(
            f"unknown UCAN type {tag!r} (expected {DELEGATION_TAG} or {INVOCATION_TAG})"
        )
    if len(signature) != 64 or not verify_signature(
        token.iss, signature, dag_cbor.encode(sig_payload)
    ):
        raise UcanError(
            f"the signature of a UCAN ({token.cid}) does not verify with its issuer's key",
            errcode="DR_UCAN_BAD_SIGNATURE",
        )
    return token


def _did(body: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    public_key_of(value)
    return value


def _meta(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("meta", {})
    if not isinstance(meta, dict):
        raise _malformed("meta must be a map")
    return meta


def _nonce(body: Mapping[str, Any]) -> bytes:
    nonce = body.get("nonce")
    if not isinstance(nonce, bytes) or len(nonce) > 64:
        raise _malformed("nonce must be bytes (at most 64)")
    return nonce


def _delegation(body: Mapping[str, Any], envelope: bytes, signature: bytes) -> Delegation:
    if "exp" not in body:
        raise _malformed("a delegation must have exp (an integer, or null)")
    return Delegation(
        iss=_did(body, "iss"),
        aud=_did(body, "aud"),
        sub=_did(body, "sub", optional=True),
        cmd=_check_command(body.get("cmd")),
        pol=check_policy(body.get("pol")),
        nonce=_nonce(body),
        exp=_int_or_none(body.get("exp"), "exp", required=False),
        nbf=_int_or_none(body.get("nbf"), "nbf", required=False),
        meta=_meta(body),
        envelope=envelope,
        signature=signature,
    )


def _invocation(body: Mapping[str, Any], envelope: bytes, signature: bytes) -> Invocation:
    args = body.get("args")
    prf = body.get("prf")
    if not isinstance(args, dict):
        raise _malformed("an invocation's args must be a map")
    if not isinstance(prf, list) or not all(isinstance(p, CID) for p in prf):
        raise _malformed("an invocation's prf must be a list of CIDs")
    if "exp" not in body:
        raise _malformed("an invocation must have exp (an integer, or null)")
    return Invocation(
        iss=_did(body, "iss"),
        sub=_did(body, "sub"),
        aud=_did(body, "aud", optional=True),
        cmd=_check_command(body.get("cmd")),
        args=args,
        prf=tuple(prf),
        nonce=_nonce(body),
        exp=_int_or_none(body.get("exp"), "exp", required=False),
        iat=_int_or_none(body.get("iat"), "iat", required=False),
        meta=_meta(body),
        envelope=envelope,
        signature=signature,
    )
