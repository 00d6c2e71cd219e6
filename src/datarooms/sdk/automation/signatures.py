"""Verifying who sent a webhook: a shared token, GitHub's HMAC, or a signed timestamp.

Every comparison is constant-time (:func:`hmac.compare_digest`). :func:`sign` is the
sender's side of the ``hmac`` method, for clients of the hooks (and the tests).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from datarooms.errors import DataroomsError

#: The header of the ``hmac`` method: ``t=<unix seconds>,v1=<hex>``.
SIGNATURE_HEADER = "X-Datarooms-Signature"
#: The header of the ``token`` method, when ``Authorization: Bearer`` is not used.
TOKEN_HEADER = "X-Datarooms-Token"  # noqa: S105 (a header name)


class SignatureError(DataroomsError):
    """The request is not from the hook's owner: wrong or missing token or signature."""

    errcode = "DR_BAD_SIGNATURE"
    http_status = 401


class StaleTimestampError(DataroomsError):
    """A signed timestamp outside the replay window."""

    errcode = "DR_STALE_TIMESTAMP"
    http_status = 401


def _mac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def verify_token(secret: str, presented: str | None) -> None:
    if not presented:
        raise SignatureError(
            f"this hook wants its secret as 'Authorization: Bearer <secret>' or {TOKEN_HEADER}"
        )
    if not hmac.compare_digest(presented.encode(), secret.encode()):
        raise SignatureError("wrong token for this hook")


def verify_github(secret: str, body: bytes, header: str | None) -> None:
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``."""
    if not header or not header.startswith("sha256="):
        raise SignatureError("this hook wants GitHub's X-Hub-Signature-256: sha256=<hex>")
    if not hmac.compare_digest(header[7:].strip().lower(), _mac(secret, body)):
        raise SignatureError("X-Hub-Signature-256 does not match the body")


def verify_signed(
    secret: str, body: bytes, header: str | None, *, window: float, now: float | None = None
) -> str:
    """``X-Datarooms-Signature: t=<unix seconds>,v1=<hex HMAC of "<t>." + body>``.

    Returns the signature, which the outbox keeps so that a replay inside the window is
    answered without posting twice; outside the window the request is refused.
    """
    if not header:
        raise SignatureError(f"this hook wants {SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex>")
    parts: dict[str, str] = {}
    for item in header.split(","):
        k, sep, v = item.strip().partition("=")
        if sep:
            parts[k] = v
    t, v1 = parts.get("t", ""), parts.get("v1", "").lower()
    if not t.isdigit() or not v1:
        raise SignatureError(f"{SIGNATURE_HEADER} must look like t=<unix seconds>,v1=<hex>")
    expected = _mac(secret, t.encode() + b"." + body)
    if not hmac.compare_digest(v1, expected):
        raise SignatureError(f"{SIGNATURE_HEADER} does not match the body and timestamp")
    skew = abs((time.time() if now is None else now) - int(t))
    if skew > window:
        raise StaleTimestampError(
            f"the signed timestamp is {skew:.0f} s away from now; the replay window is "
            f"{window:.0f} s (check the sender's clock)"
        )
    return v1


def sign(secret: str, body: bytes, *, now: float | None = None) -> str:
    """The ``X-Datarooms-Signature`` value for ``body`` (the sender's side)."""
    t = str(int(time.time() if now is None else now))
    return f"t={t},v1={_mac(secret, t.encode() + b'.' + body)}"


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + _mac(secret, body)
