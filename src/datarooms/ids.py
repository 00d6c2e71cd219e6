"""Typed identifiers: Matrix ids and DIDs, and the IXO entity-alias scheme."""

from __future__ import annotations

import re
from typing import NewType

from datarooms.errors import ValidationError

RoomID = NewType("RoomID", str)
UserID = NewType("UserID", str)
EventID = NewType("EventID", str)
DID = NewType("DID", str)

_USER_ID = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+$")
_ROOM_ID = re.compile(r"^![^:\s]+:[A-Za-z0-9.:\[\]-]+$|^![A-Za-z0-9_-]+$")
_ROOM_ALIAS = re.compile(r"^#[^:\s]+:[A-Za-z0-9.:\[\]-]+$")
# W3C DID syntax: did:<method>:<method-specific-id>
_DID = re.compile(r"^did:[a-z0-9]+:[A-Za-z0-9._%-]+(?::[A-Za-z0-9._%-]+)*$")


def user_id(value: str) -> UserID:
    if not isinstance(value, str) or not _USER_ID.match(value):
        raise ValidationError(f"{value!r} is not a Matrix user id (expected @name:server)")
    return UserID(value)


def room_id(value: str) -> RoomID:
    if not isinstance(value, str) or not _ROOM_ID.match(value):
        raise ValidationError(f"{value!r} is not a Matrix room id (expected !opaque:server)")
    return RoomID(value)


def is_room_alias(value: str) -> bool:
    return bool(_ROOM_ALIAS.match(value))


def did(value: str) -> DID:
    if not isinstance(value, str) or len(value) > 512 or not _DID.match(value):
        raise ValidationError(
            f"{value!r} is not a DID (expected did:<method>:<id>, e.g. did:ixo:entity:1a2b)"
        )
    return DID(value)


def entity_alias_localpart(value: str) -> str:
    """IXO's scheme: the DID with every ``:`` replaced by ``-``."""
    return did(value).replace(":", "-")


def entity_alias(value: str, server_name: str) -> str:
    """``#`` + DID with ``:`` → ``-`` + ``:`` + server, e.g. ``#did-ixo-entity-ab:localhost``."""
    return f"#{entity_alias_localpart(value)}:{server_name}"


def server_of(mxid: str) -> str:
    return mxid.split(":", 1)[1]


#: A Matrix server name: a DNS name, an IPv4 or [IPv6] literal, an optional port.
SERVER_NAME = re.compile(
    r"^[A-Za-z0-9.\-]{1,255}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


def server_host(server_name: str) -> str:
    """The host of a server name, without its port (``[::1]:8448`` -> ``::1``)."""
    if server_name.startswith("["):
        return server_name[1 : server_name.index("]")]
    return server_name.rsplit(":", 1)[0] if ":" in server_name else server_name


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address rather than a DNS name."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
