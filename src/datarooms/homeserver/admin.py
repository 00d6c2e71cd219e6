"""Synapse admin calls: register users by shared secret, lift rate limits.

These use Synapse's admin API, so they work with the embedded homeserver and
with any Synapse whose ``registration_shared_secret`` you hold.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from datarooms._transport.http import MatrixHttp
from datarooms.errors import HomeserverError, ValidationError

_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    access_token: str
    device_id: str
    password: str

    def __repr__(self) -> str:  # never show secrets in reprs or logs
        return f"RegisteredUser(user_id={self.user_id!r}, device_id={self.device_id!r})"


def validate_localpart(name: str) -> str:
    """Check a Matrix user localpart; accept ``@name:server`` by taking the localpart."""
    localpart = name[1:].split(":", 1)[0] if name.startswith("@") else name
    if not localpart or not _LOCALPART.match(localpart) or len(localpart) > 200:
        raise ValidationError(
            f"invalid user name {name!r}: use lower-case letters, digits and . _ = - / + only"
        )
    return localpart


async def register_user(
    base_url: str,
    shared_secret: str,
    username: str,
    password: str | None = None,
    *,
    admin: bool = False,
    displayname: str | None = None,
) -> RegisteredUser:
    """Register a user with ``/_synapse/admin/v1/register`` (nonce + HMAC-SHA1).

    Raises :class:`HomeserverError` with errcode ``M_USER_IN_USE`` if the user exists.
    """
    localpart = validate_localpart(username)
    password = password or secrets.token_urlsafe(18)
    async with MatrixHttp(base_url) as http:
        nonce = (await http.request("GET", "/_synapse/admin/v1/register", auth=False))["nonce"]
        mac = hmac.new(
            shared_secret.encode(),
            b"\x00".join(
                p.encode() for p in (nonce, localpart, password, "admin" if admin else "notadmin")
            ),
            hashlib.sha1,
        )
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname:
            body["displayname"] = displayname
        try:
            result = await http.request(
                "POST", "/_synapse/admin/v1/register", json=body, auth=False
            )
        except HomeserverError as exc:
            if exc.errcode == "M_USER_IN_USE":
                raise HomeserverError(
                    f"user {localpart!r} already exists", errcode="M_USER_IN_USE", status=400
                ) from None
            if exc.status in (401, 403):
                raise HomeserverError(
                    "the homeserver refused the registration secret "
                    "(homeserver.registration_shared_secret is wrong)",
                    errcode=exc.errcode,
                    status=exc.status,
                ) from None
            raise
    return RegisteredUser(
        user_id=result["user_id"],
        access_token=result["access_token"],
        device_id=result["device_id"],
        password=password,
    )


async def override_ratelimit(base_url: str, admin_token: str, user_id: str) -> None:
    """Exempt ``user_id`` from message rate limits (for bots and service accounts)."""
    async with MatrixHttp(base_url, admin_token) as http:
        await http.request(
            "POST",
            f"/_synapse/admin/v1/users/{quote(user_id)}/override_ratelimit",
            json={"messages_per_second": 0, "burst_count": 0},
        )
