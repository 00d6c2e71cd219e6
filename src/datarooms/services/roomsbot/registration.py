"""The rooms bot's application-service registration (the file Synapse loads).

Written once with random tokens (mode 0600) and kept: later writes refresh the URL,
server name and namespaces but keep the tokens, so a running homeserver and a
restarted bot still agree. Namespaces, both exclusive:

- users: ``@roomsbot`` and ``@roomsbot-<name>`` (the bot and users it manages), and
  ``@did-...`` (the Matrix users of controller DIDs, by IXO's convention). Exclusive:
  no one can register a ``@did-...`` name with a password or open registration, so the
  entity rooms' admin invites reach only accounts made through this appservice (the
  binding of a controller DID to its account; docs/roomsbot.md, docs/security.md);
- aliases: ``#did-...`` (IXO's entity-room aliases) and ``#<kind>.did-...`` (the
  entity's space and its other data rooms), on this server only.

``rate_limited: false`` exempts the bot from room-creation and message rate limits.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datarooms._fs import atomic_write
from datarooms.errors import ConfigError

DEFAULT_ID = "datarooms-roomsbot"


@dataclass(frozen=True)
class Registration:
    path: Path
    id: str
    url: str
    as_token: str
    hs_token: str
    sender_localpart: str
    server_name: str
    #: The file reserves ``@did-...`` exclusively (older files did not): without it the
    #: bot invites no controllers, since anyone could have registered their names.
    controllers_exclusive: bool = True

    def __repr__(self) -> str:  # the tokens stay out of reprs and logs
        return f"Registration(id={self.id!r}, url={self.url!r}, user_id={self.user_id!r})"

    @property
    def user_id(self) -> str:
        return f"@{self.sender_localpart}:{self.server_name}"

    @property
    def user_regex(self) -> str:
        return (
            f"@{re.escape(self.sender_localpart)}(-[a-z0-9._=/+-]+)?:{re.escape(self.server_name)}$"
        )

    @property
    def controller_regex(self) -> str:
        """Controller DIDs' users, ``@did-<method>-<id>:<server>`` (IXO's convention)."""
        return f"@did-[a-z0-9._=/+-]+:{re.escape(self.server_name)}$"

    def controller_in_namespace(self, user_id: str) -> bool:
        """May ``user_id`` be invited as a controller: is it in the exclusive namespace?"""
        return self.controllers_exclusive and re.match(self.controller_regex, user_id) is not None

    @property
    def alias_regex(self) -> str:
        return f"#([a-z]+\\.)?did-[^:]+:{re.escape(self.server_name)}$"

    def user_in_namespace(self, user_id: str) -> bool:
        return re.match(self.user_regex, user_id) is not None

    def alias_in_namespace(self, alias: str) -> bool:
        return re.match(self.alias_regex, alias) is not None

    @property
    def port(self) -> int:
        tail = self.url.rsplit(":", 1)[-1].split("/", 1)[0]
        return int(tail) if tail.isdigit() else 80

    def to_yaml(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "as_token": self.as_token,
            "hs_token": self.hs_token,
            "sender_localpart": self.sender_localpart,
            "rate_limited": False,
            "receive_ephemeral": False,
            "namespaces": {
                "users": [
                    {"exclusive": True, "regex": self.user_regex},
                    {"exclusive": True, "regex": self.controller_regex},
                ],
                "aliases": [{"exclusive": True, "regex": self.alias_regex}],
                "rooms": [],
            },
        }


def load_registration(path: Path, server_name: str | None = None) -> Registration:
    """Read a registration written by :func:`write_registration`."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"the rooms bot's appservice registration {path} does not exist yet; it is "
            "written when the platform starts (`datarooms up`)"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the appservice registration {path}: {exc}") from None
    try:
        # The users regex is "@<localpart>(-...)?:<escaped server name>$" (no ':' before).
        users = data["namespaces"]["users"]
        regex = users[0]["regex"]
        server = server_name or re.sub(r"\\(.)", r"\1", regex.split(":", 1)[1].rstrip("$"))
        controllers = f"@did-[a-z0-9._=/+-]+:{re.escape(server)}$"
        exclusive = any(
            isinstance(u, dict) and u.get("exclusive") is True and u.get("regex") == controllers
            for u in users
        )
        return Registration(
            path=path,
            id=str(data["id"]),
            url=str(data["url"]),
            as_token=str(data["as_token"]),
            hs_token=str(data["hs_token"]),
            sender_localpart=str(data["sender_localpart"]),
            server_name=server,
            controllers_exclusive=exclusive,
        )
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ConfigError(f"{path} is not a rooms bot registration (fields missing)") from None


def write_registration(
    path: Path,
    *,
    server_name: str,
    url: str,
    sender_localpart: str = "roomsbot",
    id: str = DEFAULT_ID,
) -> Registration:
    """Create the registration, or refresh it keeping its tokens. Mode 0600."""
    as_token = hs_token = ""
    if path.exists():
        try:
            old = load_registration(path, server_name)
            as_token, hs_token = old.as_token, old.hs_token
        except ConfigError:
            pass  # unreadable: start over with new tokens
    reg = Registration(
        path=path.absolute(),
        id=id,
        url=url,
        as_token=as_token or secrets.token_urlsafe(32),
        hs_token=hs_token or secrets.token_urlsafe(32),
        sender_localpart=sender_localpart,
        server_name=server_name,
    )
    text = yaml.safe_dump(reg.to_yaml(), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text, mode=0o600)
    return reg
